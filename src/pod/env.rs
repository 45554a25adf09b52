//! A container's environment as upstream's `makeEnvironmentVariables`
//! (`pkg/kubelet/kubelet_pods.go`): `envFrom` ConfigMaps and Secrets (with `prefix`)
//! first, then `env` in order (literal values expanded, `valueFrom` sources resolved,
//! a later one replacing an earlier one), then the service environment variables not
//! already set (`pkg/kubelet/envvars`: `<SVC>_SERVICE_HOST`, `_SERVICE_PORT`, the
//! docker-link `_PORT_<port>_<PROTO>` family) for the pod's namespace's Services when
//! `enableServiceLinks`, and the master `kubernetes` Service of `default` always.
//!
//! The objects come first ([`EnvObjects::fetch`], async, through the
//! [`ObjectSource`]); making the environment from them ([`make_env`]) is pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};

use super::podspec::{ConfigError, FieldValues, env_value};
use crate::volume::{ObjectSource, Services};

/// The Services whose variables every pod gets, from `default` (upstream's
/// `masterServices`).
const MASTER_SERVICES: &[&str] = &["kubernetes"];

/// What a container's environment is made from: the ConfigMaps and Secrets it names
/// (`None`: not found) and the service variables of its pod.
#[derive(Debug, Clone, Default)]
pub struct EnvObjects {
    /// ConfigMaps of the pod's namespace by name.
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    /// Secrets of the pod's namespace by name.
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// The service environment variables.
    pub services: BTreeMap<String, String>,
}

impl EnvObjects {
    /// Reads what `c`'s `envFrom` and `valueFrom` name, each object once, and the
    /// service variables of the pod's namespace.
    ///
    /// # Errors
    /// [`ConfigError::ServicesNotSynced`] for a pod from the apiserver before the
    /// Services were listed once (upstream's wait, so `KUBERNETES_SERVICE_HOST` is
    /// never missed); [`ConfigError::Object`] when the source fails.
    pub async fn fetch(
        pod: &Pod,
        c: &Container,
        objects: &dyn ObjectSource,
    ) -> Result<Self, ConfigError> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let services = objects.services();
        if !services.synced && !nodelet_manifests::is_static_pod(pod) {
            return Err(ConfigError::ServicesNotSynced);
        }
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let mut out = Self {
            services: service_env(&services, namespace, links),
            ..Self::default()
        };
        let from = c.env_from.iter().flatten();
        let cm_names = from
            .clone()
            .filter_map(|f| f.config_map_ref.as_ref().map(|r| r.name.clone()))
            .chain(c.env.iter().flatten().filter_map(|e| {
                let r = e.value_from.as_ref()?.config_map_key_ref.as_ref()?;
                Some(r.name.clone())
            }));
        for name in cm_names {
            if let std::collections::btree_map::Entry::Vacant(slot) = out.config_maps.entry(name) {
                let got = objects
                    .config_map(namespace, slot.key())
                    .await
                    .map_err(|e| ConfigError::Object(e.to_string()))?;
                slot.insert(got);
            }
        }
        let secret_names = from
            .filter_map(|f| f.secret_ref.as_ref().map(|r| r.name.clone()))
            .chain(c.env.iter().flatten().filter_map(|e| {
                let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                Some(r.name.clone())
            }));
        for name in secret_names {
            if let std::collections::btree_map::Entry::Vacant(slot) = out.secrets.entry(name) {
                let got = objects
                    .secret(namespace, slot.key())
                    .await
                    .map_err(|e| ConfigError::Object(e.to_string()))?;
                slot.insert(got);
            }
        }
        Ok(out)
    }
}

/// Upstream's `makeEnvVariableName`: upper case, `-` to `_`.
pub fn env_var_name(name: &str) -> String {
    name.replace('-', "_").to_uppercase()
}

fn service_ip_set(s: &Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != "None")
}

/// Upstream's `getServiceEnvVarMap`: the master Services of `default` always, the
/// other Services of `namespace` when `enable_links`; headless and ExternalName
/// Services (no cluster IP) never.
pub fn service_env(
    services: &Services,
    namespace: &str,
    enable_links: bool,
) -> BTreeMap<String, String> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services.items.iter().map(AsRef::as_ref) {
        if !service_ip_set(s) {
            continue;
        }
        let name = s.metadata.name.clone().unwrap_or_default();
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        if ns == "default" && MASTER_SERVICES.contains(&name.as_str()) {
            chosen.entry(name).or_insert(s);
        } else if ns == namespace && enable_links {
            chosen.insert(name, s);
        }
    }
    chosen.values().flat_map(|s| from_service(s)).collect()
}

/// Upstream's `envvars.FromServices` for one Service with a cluster IP.
pub fn from_service(s: &Service) -> Vec<(String, String)> {
    let prefix = env_var_name(s.metadata.name.as_deref().unwrap_or_default());
    let spec = s.spec.clone().unwrap_or_default();
    let ip = spec.cluster_ip.unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let mut out = vec![(format!("{prefix}_SERVICE_HOST"), ip.clone())];
    let Some(first) = ports.first() else {
        return out;
    };
    let port_var = format!("{prefix}_SERVICE_PORT");
    out.push((port_var.clone(), first.port.to_string()));
    for p in &ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{port_var}_{}", env_var_name(name)),
                p.port.to_string(),
            ));
        }
    }
    // Docker-compatible link variables; the first port also gives `<SVC>_PORT`.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    for (i, p) in ports.iter().enumerate() {
        let protocol = p
            .protocol
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("TCP");
        let url = format!("{}://{host}:{}", protocol.to_lowercase(), p.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, protocol.to_uppercase());
        out.push((port_prefix.clone(), url));
        out.push((format!("{port_prefix}_PROTO"), protocol.to_lowercase()));
        out.push((format!("{port_prefix}_PORT"), p.port.to_string()));
        out.push((format!("{port_prefix}_ADDR"), ip.clone()));
    }
    out
}

/// An ordered map: a key set again keeps its first place (one variable each).
#[derive(Default)]
struct Ordered(Vec<(String, String)>);

impl Ordered {
    fn set(&mut self, k: String, v: String) {
        match self.0.iter_mut().find(|(n, _)| *n == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }

    fn get(&self, k: &str) -> Option<&String> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }
}

fn not_found(kind: &'static str, name: &str) -> ConfigError {
    ConfigError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

/// Upstream's `makeEnvironmentVariables` from the objects `fetch` read: `envFrom`,
/// then `env` (literal values expanded with `$(VAR)` against the variables so far
/// and the service variables), then the service variables not already set.
///
/// # Errors
/// A non-optional ConfigMap or Secret missing (`configmap "x" not found`), a
/// non-optional key missing (`couldn't find key k in ConfigMap ns/x`), a field or
/// resource reference that can't be resolved.
pub fn make_env(
    pod: &Pod,
    c: &Container,
    fields: &FieldValues,
) -> Result<Vec<(String, String)>, ConfigError> {
    let objects = &fields.env_objects;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Ordered::default();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match objects.config_maps.get(&r.name).and_then(Option::as_ref) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        env.set(format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(not_found("configmap", &r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            match objects.secrets.get(&r.name).and_then(Option::as_ref) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        env.set(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(not_found("secret", &r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) if !v.is_empty() => crate::pod::expand::expand(v, |name| {
                env.get(name)
                    .or_else(|| objects.services.get(name))
                    .cloned()
            }),
            (_, Some(from)) if from.config_map_key_ref.is_some() => {
                let Some(r) = &from.config_map_key_ref else {
                    continue;
                };
                let optional = r.optional == Some(true);
                let Some(cm) = objects.config_maps.get(&r.name).and_then(Option::as_ref) else {
                    if optional {
                        continue;
                    }
                    return Err(not_found("configmap", &r.name));
                };
                match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => v.clone(),
                    None if optional => continue,
                    None => {
                        return Err(ConfigError::MissingKey {
                            key: r.key.clone(),
                            kind: "ConfigMap",
                            namespace: namespace.to_owned(),
                            name: r.name.clone(),
                        });
                    }
                }
            }
            (_, Some(from)) if from.secret_key_ref.is_some() => {
                let Some(r) = &from.secret_key_ref else {
                    continue;
                };
                let optional = r.optional == Some(true);
                let Some(s) = objects.secrets.get(&r.name).and_then(Option::as_ref) else {
                    if optional {
                        continue;
                    }
                    return Err(not_found("secret", &r.name));
                };
                match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if optional => continue,
                    None => {
                        return Err(ConfigError::MissingKey {
                            key: r.key.clone(),
                            kind: "Secret",
                            namespace: namespace.to_owned(),
                            name: r.name.clone(),
                        });
                    }
                }
            }
            _ => env_value(pod, e, fields)?,
        };
        env.set(e.name.clone(), value);
    }
    let mut out = env.0;
    for (k, v) in &objects.services {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
