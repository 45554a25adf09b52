//! Runtime handlers: what a pod's `runtimeClassName` (through its RuntimeClass's
//! `handler`) selects, as containerd's CRI plugin configures
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.<name>]`: a containerd
//! runtime type and the runc shim's options (`containerd.runc.v1.Options`).
//!
//! The empty handler (no `runtimeClassName`) is the default, runc through
//! `io.containerd.runc.v2`. Two handlers ship: `runc` (the same) and `crun` (the runc
//! shim driving `/usr/bin/crun`, Debian's package). More come from
//! `--runtime-handlers`, one handler per flag, written
//! `name=runtime_type[,Option=value...]` with containerd's option names
//! (`crun=io.containerd.runc.v2,BinaryName=/usr/bin/crun`).

use std::collections::BTreeMap;

use thiserror::Error;

/// containerd's runc shim: the runtime type of every shipped handler.
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// The type URL of the runc shim's options in a container record.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// A bad `--runtime-handlers` value.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum HandlerError {
    /// No `=` between the handler's name and its runtime type.
    #[error("runtime handler {0:?}: want name=runtime_type[,Option=value...]")]
    Syntax(String),
    /// The name is not a DNS-1123 subdomain (what a RuntimeClass `handler` must be).
    #[error("runtime handler name {0:?}: must be lower-case letters, digits, '-' and '.'")]
    Name(String),
    /// The empty runtime type.
    #[error("runtime handler {0:?}: empty runtime type")]
    RuntimeType(String),
    /// An option containerd's runc shim doesn't have, or one without `=`.
    #[error(
        "runtime handler {handler:?}: unknown option {option:?} (known: BinaryName, Root, \
         NoPivotRoot, NoNewKeyring, ShimCgroup, IoUid, IoGid)"
    )]
    Option {
        /// The handler.
        handler: String,
        /// The option as written.
        option: String,
    },
    /// An option's value doesn't parse (a bool or a number).
    #[error("runtime handler {handler:?}: option {option}: bad value {value:?}")]
    Value {
        /// The handler.
        handler: String,
        /// The option's name.
        option: String,
        /// The value as written.
        value: String,
    },
    /// Options for a runtime type other than the runc shim.
    #[error("runtime handler {handler:?}: options need runtime type {RUNC_V2}, not {runtime_type}")]
    OptionsNeedRunc {
        /// The handler.
        handler: String,
        /// Its runtime type.
        runtime_type: String,
    },
}

/// The runc shim's options, containerd's `containerd.runc.v1.Options`
/// (api/types/runc/options/oci.proto; field numbers as in containerd 1.6).
/// containerd-client doesn't generate this type, so it is declared here with prost.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RuncOptions {
    /// `NoPivotRoot`: disable pivot root when creating a container.
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    /// `NoNewKeyring`: don't create a new keyring for the container.
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    /// `ShimCgroup`: place the shim in a cgroup.
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    /// `IoUid`: the uid of the I/O pipes.
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    /// `IoGid`: the gid of the I/O pipes.
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    /// `BinaryName`: the OCI runtime binary the shim runs (`runc` when empty).
    #[prost(string, tag = "6")]
    pub binary_name: String,
    /// `Root`: the runtime's state root (`/run/containerd/runc` when empty).
    #[prost(string, tag = "7")]
    pub root: String,
    /// `SystemdCgroup`: the runtime manages cgroups through systemd. Set from the
    /// spec's cgroups path (the agent's cgroup driver), not from the flag.
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

impl RuncOptions {
    /// The options as a container record's `runtime.options`.
    pub fn to_any(&self) -> prost_types::Any {
        use prost::Message as _;
        prost_types::Any {
            type_url: RUNC_OPTIONS_TYPE_URL.to_owned(),
            value: self.encode_to_vec(),
        }
    }
}

/// One runtime handler: the containerd runtime type and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHandler {
    /// containerd's runtime type (`io.containerd.runc.v2`).
    pub runtime_type: String,
    /// The runc shim's options (all defaults for plain runc).
    pub options: RuncOptions,
}

impl RuntimeHandler {
    /// runc through containerd's runc shim: the default handler.
    pub fn runc() -> Self {
        Self {
            runtime_type: RUNC_V2.to_owned(),
            options: RuncOptions::default(),
        }
    }

    /// The runc shim driving another OCI runtime binary.
    pub fn runc_shim_with(binary: &str) -> Self {
        Self {
            runtime_type: RUNC_V2.to_owned(),
            options: RuncOptions {
                binary_name: binary.to_owned(),
                ..RuncOptions::default()
            },
        }
    }

    /// The options for a container record: `None` when nothing is set (containerd
    /// then uses the shim's defaults), with `systemd_cgroup` for the systemd driver.
    pub fn record_options(&self, systemd_cgroup: bool) -> Option<prost_types::Any> {
        let options = RuncOptions {
            systemd_cgroup,
            ..self.options.clone()
        };
        (options != RuncOptions::default()).then(|| options.to_any())
    }
}

/// The handlers a node offers, by name; the empty name is the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHandlers {
    handlers: BTreeMap<String, RuntimeHandler>,
}

impl Default for RuntimeHandlers {
    /// The default (runc), `runc` and `crun`.
    fn default() -> Self {
        let handlers = BTreeMap::from([
            (String::new(), RuntimeHandler::runc()),
            ("runc".to_owned(), RuntimeHandler::runc()),
            (
                "crun".to_owned(),
                RuntimeHandler::runc_shim_with("/usr/bin/crun"),
            ),
        ]);
        Self { handlers }
    }
}

impl RuntimeHandlers {
    /// The shipped handlers plus those configured, which replace shipped ones of the
    /// same name. Each entry is one `--runtime-handlers` value:
    /// `name=runtime_type[,Option=value...]`.
    ///
    /// # Errors
    /// [`HandlerError`] naming the first bad entry.
    pub fn with_configured<S: AsRef<str>>(entries: &[S]) -> Result<Self, HandlerError> {
        let mut handlers = Self::default();
        for entry in entries {
            let (name, handler) = parse_handler(entry.as_ref())?;
            handlers.handlers.insert(name, handler);
        }
        Ok(handlers)
    }

    /// The handler of that name (`""` is the default).
    pub fn get(&self, name: &str) -> Option<&RuntimeHandler> {
        self.handlers.get(name)
    }

    /// The named handlers (not the default), for logs.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.handlers
            .keys()
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// Parses one `name=runtime_type[,Option=value...]`.
///
/// # Errors
/// [`HandlerError`] for a missing `=`, a bad name, an empty runtime type, an option
/// the runc shim doesn't have, or a value that doesn't parse.
pub fn parse_handler(entry: &str) -> Result<(String, RuntimeHandler), HandlerError> {
    let entry = entry.trim();
    let mut parts = entry.split(',');
    let head = parts.next().unwrap_or_default();
    let Some((name, runtime_type)) = head.split_once('=') else {
        return Err(HandlerError::Syntax(entry.to_owned()));
    };
    let (name, runtime_type) = (name.trim(), runtime_type.trim());
    if !is_dns_subdomain(name) {
        return Err(HandlerError::Name(name.to_owned()));
    }
    if runtime_type.is_empty() {
        return Err(HandlerError::RuntimeType(name.to_owned()));
    }
    let mut options = RuncOptions::default();
    let mut any_option = false;
    for option in parts {
        any_option = true;
        let bad_option = || HandlerError::Option {
            handler: name.to_owned(),
            option: option.to_owned(),
        };
        let (key, value) = option.split_once('=').ok_or_else(bad_option)?;
        let (key, value) = (key.trim(), value.trim());
        let bad_value = || HandlerError::Value {
            handler: name.to_owned(),
            option: key.to_owned(),
            value: value.to_owned(),
        };
        let flag = || value.parse::<bool>().map_err(|_| bad_value());
        let id = || value.parse::<u32>().map_err(|_| bad_value());
        match key {
            "BinaryName" if !value.is_empty() => options.binary_name = value.to_owned(),
            "Root" if !value.is_empty() => options.root = value.to_owned(),
            "ShimCgroup" => options.shim_cgroup = value.to_owned(),
            "BinaryName" | "Root" => return Err(bad_value()),
            "NoPivotRoot" => options.no_pivot_root = flag()?,
            "NoNewKeyring" => options.no_new_keyring = flag()?,
            "IoUid" => options.io_uid = id()?,
            "IoGid" => options.io_gid = id()?,
            _ => return Err(bad_option()),
        }
    }
    if any_option && runtime_type != RUNC_V2 {
        return Err(HandlerError::OptionsNeedRunc {
            handler: name.to_owned(),
            runtime_type: runtime_type.to_owned(),
        });
    }
    Ok((
        name.to_owned(),
        RuntimeHandler {
            runtime_type: runtime_type.to_owned(),
            options,
        },
    ))
}

/// A DNS-1123 subdomain, what the apiserver accepts as a RuntimeClass `handler`.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // What `ctr run --runc-systemd-cgroup` stores: field 9 (varint) = 1.
    #[test]
    fn systemd_only_encodes_field_9() {
        let any = RuntimeHandler::runc()
            .record_options(true)
            .expect("present");
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        assert_eq!(any.value, vec![0x48, 0x01]);
    }

    #[test]
    fn plain_runc_has_no_options() {
        assert_eq!(RuntimeHandler::runc().record_options(false), None);
    }

    // Field 6 (length-delimited, key 0x32), then field 9 (varint, key 0x48): what
    // containerd's CRI plugin stores for `BinaryName = "/usr/bin/crun"` with
    // `SystemdCgroup = true`.
    #[test]
    fn crun_encodes_binary_name_as_field_6() {
        let crun = RuntimeHandlers::default()
            .get("crun")
            .cloned()
            .expect("present");
        let any = crun.record_options(false).expect("present");
        let mut want = vec![0x32, 13];
        want.extend_from_slice(b"/usr/bin/crun");
        assert_eq!(any.value, want);
        let any = crun.record_options(true).expect("present");
        want.extend_from_slice(&[0x48, 0x01]);
        assert_eq!(any.value, want);
    }

    #[test]
    fn every_option_has_containerds_field_number() {
        let (_, h) = parse_handler(
            "x=io.containerd.runc.v2,NoPivotRoot=true,NoNewKeyring=true,ShimCgroup=/s,\
             IoUid=1,IoGid=2,BinaryName=/b,Root=/r",
        )
        .expect("present");
        let any = h.record_options(false).expect("present");
        assert_eq!(
            any.value,
            vec![
                0x08, 1, // 1 no_pivot_root
                0x10, 1, // 2 no_new_keyring
                0x1a, 2, b'/', b's', // 3 shim_cgroup
                0x20, 1, // 4 io_uid
                0x28, 2, // 5 io_gid
                0x32, 2, b'/', b'b', // 6 binary_name
                0x3a, 2, b'/', b'r', // 7 root
            ]
        );
    }

    #[test]
    fn shipped_handlers() {
        let h = RuntimeHandlers::default();
        assert_eq!(h.get(""), Some(&RuntimeHandler::runc()));
        assert_eq!(h.get("runc"), Some(&RuntimeHandler::runc()));
        assert_eq!(
            h.get("crun").expect("present").options.binary_name,
            "/usr/bin/crun"
        );
        assert_eq!(h.get("kata"), None);
        assert_eq!(h.names().collect::<Vec<_>>(), ["crun", "runc"]);
    }

    #[test]
    fn configured_handlers_add_and_replace() {
        let h = RuntimeHandlers::with_configured(&[
            "fast=io.containerd.runc.v2,BinaryName=/opt/crun",
            "crun=io.containerd.runc.v2,BinaryName=/usr/local/bin/crun,Root=/run/crun-k8s",
            "kata=io.containerd.kata.v2",
        ])
        .expect("present");
        assert_eq!(
            h.get("fast").expect("present").options.binary_name,
            "/opt/crun"
        );
        assert_eq!(
            h.get("crun").expect("present").options.root,
            "/run/crun-k8s"
        );
        assert_eq!(
            h.get("kata").expect("present").runtime_type,
            "io.containerd.kata.v2"
        );
        assert_eq!(h.get(""), Some(&RuntimeHandler::runc()));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let err = |s: &str| parse_handler(s).expect_err("refused");
        assert_eq!(err("crun"), HandlerError::Syntax("crun".into()));
        assert_eq!(
            err("crun").to_string(),
            "runtime handler \"crun\": want name=runtime_type[,Option=value...]"
        );
        assert_eq!(err("Fast=x"), HandlerError::Name("Fast".into()));
        assert_eq!(err("=x"), HandlerError::Name(String::new()));
        assert_eq!(err("a..b=x"), HandlerError::Name("a..b".into()));
        assert_eq!(err("fast="), HandlerError::RuntimeType("fast".into()));
        assert_eq!(
            err("fast=io.containerd.runc.v2,Binary=/x"),
            HandlerError::Option {
                handler: "fast".into(),
                option: "Binary=/x".into()
            }
        );
        assert!(
            err("fast=io.containerd.runc.v2,Binary=/x")
                .to_string()
                .contains("known: BinaryName")
        );
        assert_eq!(
            err("fast=io.containerd.runc.v2,BinaryName"),
            HandlerError::Option {
                handler: "fast".into(),
                option: "BinaryName".into()
            }
        );
        assert_eq!(
            err("fast=io.containerd.runc.v2,NoPivotRoot=yes"),
            HandlerError::Value {
                handler: "fast".into(),
                option: "NoPivotRoot".into(),
                value: "yes".into()
            }
        );
        assert_eq!(
            err("fast=io.containerd.runc.v2,IoUid=-1"),
            HandlerError::Value {
                handler: "fast".into(),
                option: "IoUid".into(),
                value: "-1".into()
            }
        );
        assert!(matches!(
            err("fast=io.containerd.runc.v2,BinaryName="),
            HandlerError::Value { .. }
        ));
        assert_eq!(
            err("kata=io.containerd.kata.v2,BinaryName=/x"),
            HandlerError::OptionsNeedRunc {
                handler: "kata".into(),
                runtime_type: "io.containerd.kata.v2".into()
            }
        );
        assert!(RuntimeHandlers::with_configured(&["ok=io.containerd.runc.v2", "bad"]).is_err());
    }
}
