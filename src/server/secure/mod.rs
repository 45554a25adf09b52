//! The kubelet API's secure port (`--port`, 10250): HTTPS with the serving
//! certificate of [`tls`], every request authenticated ([`authn`]) and authorized
//! ([`authz`]) before it reaches a handler, as upstream's `InstallAuthFilter`.
//! The kubelet's own endpoints are in [`routes`]; other modules' endpoints (container
//! logs, exec/attach/port-forward) are plain axum [`Router`]s with their state applied,
//! merged through the `extra` argument of [`router`] so the auth layer covers them too.
//! A handler finds the authenticated [`authn::UserInfo`] in the request's extensions.

pub mod authn;
pub mod authz;
pub mod configz;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::{Args, ValueEnum};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use authn::{Authenticator, PeerCertUser};
pub use authz::Authorizer;

use crate::cli::parse_duration;

/// `--authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorizationMode {
    /// Allow every authenticated request.
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
    /// Ask the apiserver (`SubjectAccessReview`).
    #[value(name = "Webhook")]
    Webhook,
}

/// The secure port's flags (upstream's names).
#[derive(Debug, Clone, Args)]
pub struct SecureArgs {
    /// The kubelet API's HTTPS port (upstream's `--port`); 0 disables it (a nodelet
    /// addition; upstream always serves it).
    #[arg(long = "port", default_value_t = 10250)]
    pub port: u16,
    /// The serving certificate (with intermediates); absent: a self-signed pair in
    /// `--cert-dir` (`kubelet.crt`, `kubelet.key`).
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The serving certificate's key.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Request the serving certificate from the apiserver (a `kubernetes.io/kubelet-serving`
    /// CSR, approved by an operator) and rotate it as it nears expiry (upstream's
    /// flag for the config file's `serverTLSBootstrap`); no self-signed pair is made.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub rotate_server_certificates: bool,
    /// How long an exec/attach/port-forward connection may go without a frame either
    /// way before it is closed; 0 means never.
    #[arg(long, default_value = "4h", value_parser = parse_duration)]
    pub streaming_connection_idle_timeout: Duration,
    /// CA bundle client certificates are verified against (user = CN, groups = O).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Allow requests no authenticator claims, as `system:anonymous` (upstream's flag
    /// defaults to true; nodelet's, like the config file's, to false).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub anonymous_auth: bool,
    /// Authenticate bearer tokens with `TokenReview`s to the apiserver.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub authentication_token_webhook: bool,
    /// How long token review answers are cached.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// `AlwaysAllow` or `Webhook` (`SubjectAccessReview`s to the apiserver).
    #[arg(long, value_enum, default_value = "AlwaysAllow")]
    pub authorization_mode: AuthorizationMode,
    /// How long an "allowed" access review is cached.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long a "denied" access review is cached.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
}

/// Why the secure port could not start.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    /// TLS files.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The serving certificate store could not be opened.
    #[error("serving certificate: {0}")]
    ServingCertificate(String),
    /// A webhook mode without an apiserver.
    #[error("{0} needs --kubeconfig (the apiserver answers the reviews)")]
    NeedsCluster(&'static str),
    /// The port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Authentication and authorization of every request.
pub struct Auth {
    /// Who is asking.
    pub authn: Authenticator,
    /// Whether they may.
    pub authz: Authorizer,
}

impl Auth {
    /// From the flags; `client` is the apiserver's (needed by the webhook modes).
    ///
    /// # Errors
    /// A webhook mode without a client.
    pub fn from_args(
        args: &SecureArgs,
        client: Option<&kube::Client>,
        node_name: &str,
    ) -> Result<Self, SecureError> {
        let token = match (args.authentication_token_webhook, client) {
            (false, _) => None,
            (true, Some(c)) => Some(authn::TokenWebhook::new(
                c.clone(),
                args.authentication_token_webhook_cache_ttl,
            )),
            (true, None) => {
                return Err(SecureError::NeedsCluster("--authentication-token-webhook"));
            }
        };
        let authz = match (args.authorization_mode, client) {
            (AuthorizationMode::AlwaysAllow, _) => Authorizer::AlwaysAllow,
            (AuthorizationMode::Webhook, Some(c)) => {
                Authorizer::Webhook(Box::new(authz::SarWebhook::new(
                    c.clone(),
                    node_name,
                    args.authorization_webhook_cache_authorized_ttl,
                    args.authorization_webhook_cache_unauthorized_ttl,
                )))
            }
            (AuthorizationMode::Webhook, None) => {
                return Err(SecureError::NeedsCluster("--authorization-mode=Webhook"));
            }
        };
        Ok(Self {
            authn: Authenticator {
                token,
                anonymous: args.anonymous_auth,
            },
            authz,
        })
    }
}

/// The secure port's router: the kubelet's own endpoints, `extra` (other modules'
/// routers, state applied), a 404 for the rest, all behind `auth`.
pub fn router(own: Router, extra: Router, auth: Arc<Auth>) -> Router {
    own.merge(extra)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(auth, auth_filter))
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Upstream's auth filter: 401 `Unauthorized`, 403 with the attributes, 500 when a
/// review fails; the user goes into the request's extensions.
async fn auth_filter(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<PeerCertUser>().cloned();
    let user = match auth.authn.authenticate(peer.as_ref(), req.headers()).await {
        Ok(user) => user,
        Err(e) => {
            tracing::debug!(path = %req.uri().path(), error = %e, "unauthorized kubelet API request");
            return text(StatusCode::UNAUTHORIZED, "Unauthorized".to_owned());
        }
    };
    let attrs = authz::attributes(req.method(), req.uri().path());
    match auth.authz.authorize(&user, &attrs).await {
        Ok(true) => {}
        Ok(false) => {
            let msg = authz::forbidden_message(&user, &attrs);
            tracing::debug!(path = %req.uri().path(), "{}", msg.trim_end());
            return text(StatusCode::FORBIDDEN, msg);
        }
        Err(e) => {
            tracing::warn!(path = %req.uri().path(), error = %e, "authorization error");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "Authorization error (user={}, verb={}, resource=nodes, subresource(s)=[{}])",
                    user.name,
                    attrs.verb,
                    attrs.subresources.join(" ")
                ),
            );
        }
    }
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// What Go's server answers plain HTTP sent to its TLS port.
const PLAIN_HTTP_ANSWER: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Binds the secure port and returns its address and the server future (each
/// connection: TLS handshake within 10 s, then HTTP/1.1 with upgrades; on `cancel`
/// the connections finish their requests and close).
///
/// # Errors
/// The port cannot be bound.
pub async fn bind(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), SecureError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SecureError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| SecureError::Bind { addr, source })?;
    let acceptor = TlsAcceptor::from(tls);
    let serve = async move {
        loop {
            let (tcp, remote) = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "secure port accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, app, cancel) = (acceptor.clone(), app.clone(), cancel.clone());
            tokio::spawn(async move {
                serve_connection(tcp, remote, acceptor, app, cancel).await;
            });
        }
    };
    Ok((local, serve))
}

async fn serve_connection(
    mut tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    cancel: CancellationToken,
) {
    let handshake = async {
        // A TLS client speaks first with a handshake record (0x16).
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await.ok()? == 1 && first[0] != 0x16 {
            let _ = tcp.write_all(PLAIN_HTTP_ANSWER).await;
            return None;
        }
        acceptor.accept(tcp).await.ok()
    };
    let Ok(Some(stream)) = tokio::time::timeout(Duration::from_secs(10), handshake).await else {
        tracing::debug!(%remote, "secure port: no TLS handshake");
        return;
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::cert_user)
        .map(PeerCertUser);
    let svc = app.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        req
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%remote, error = %e, "secure port connection");
            }
        }
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Builds the secure port from the agent's flags (TLS files or the self-signed pair,
/// the authenticators and authorizer) and binds it; `extra` holds other modules'
/// routes.
///
/// # Errors
/// Bad TLS files, a webhook mode without `--kubeconfig`, the port taken.
pub async fn start(
    args: &crate::cli::AgentArgs,
    node_name: &str,
    node_ip: std::net::IpAddr,
    client: Option<&kube::Client>,
    own: routes::OwnState,
    extra: Router,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()> + use<>), SecureError> {
    let s = &args.secure;
    let config = if s.rotate_server_certificates {
        // Upstream makes no self-signed pair under serverTLSBootstrap; the flags'
        // pair, when given, serves until the first issued certificate.
        let settings = crate::cluster::certificate::serving::ServingSettings {
            cert_dir: args.cert_dir(),
            node_name: node_name.to_owned(),
            addresses: vec![
                ("InternalIP".to_owned(), node_ip.to_string()),
                ("Hostname".to_owned(), hostname_address(args, node_name)),
            ],
            fallback: s.tls_cert_file.clone().zip(s.tls_private_key_file.clone()),
        };
        let resolver = crate::cluster::certificate::serving::start(settings, client.cloned())
            .map_err(|e| SecureError::ServingCertificate(e.to_string()))?;
        tls::config_with(Arc::new(resolver), s.client_ca_file.as_deref())?
    } else {
        let (crt, key) = tls::serving_files(
            s.tls_cert_file.as_deref(),
            s.tls_private_key_file.as_deref(),
            &args.cert_dir(),
            node_name,
            &[node_ip],
        )?;
        tls::server_config(&crt, &key, s.client_ca_file.as_deref())?
    };
    let auth = Arc::new(Auth::from_args(s, client, node_name)?);
    let app = router(routes::own_router(own), extra, auth);
    bind(
        SocketAddr::new(args.address, s.port),
        Arc::new(config),
        app,
        cancel,
    )
    .await
}

/// The node's `Hostname` address as its status reports it: the overridden name when
/// `--hostname-override` is given, else the machine's hostname.
fn hostname_address(args: &crate::cli::AgentArgs, node_name: &str) -> String {
    match &args.hostname_override {
        Some(_) => node_name.to_owned(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| node_name.to_owned()),
    }
}
