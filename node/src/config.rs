//! The node's configuration: one TOML file, every key overridable by environment.
//!
//! Environment variables are `X402_` followed by the key path joined with `__`
//! (`X402_RAFT__HEARTBEAT_MS=100`). Secrets come from the environment (`X402_CLUSTER_SECRET`,
//! `X402_ADMIN_TOKEN`) or from files named in the config (`cluster_secret_file`,
//! `admin_token_file`), never from the TOML itself, and are held as [`Secret`]s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub mod access;
pub mod facilitator;
pub mod tls;
pub use access::{
    ApiKeySettings, AuthSettings, BreakerSettings, IdempotencySettings, LimitScope,
    RateLimitSettings, RateRule,
};
pub use facilitator::{AssetSettings, FacilitatorSettings, NetworkSettings};
pub use tls::TlsSettings;

/// Shortest secret accepted: anything shorter is guessable.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id; unique in the cluster, never reused after removal.
    pub node_id: u64,
    /// Take `node_id` from the host name's trailing ordinal instead, plus one (`x402-0` is node
    /// 1, `x402-2` node 3): a Kubernetes StatefulSet gives every pod such a name, and one
    /// configuration then serves every replica, with no shell in the image to compute the id.
    pub node_id_from_hostname: bool,
    /// Socket address to listen on, e.g. `0.0.0.0:7001`.
    pub listen: String,
    /// URL other nodes and clients use to reach this node, e.g. `http://10.0.0.1:7001`.
    pub advertise_url: String,
    /// Socket address of the peer API (Raft RPCs, forwarded writes, reads of the leader) when it
    /// has a port of its own, e.g. `0.0.0.0:7002`: peers then never compete with clients for
    /// connections, and the port can be firewalled apart from the public API. Unset: peers use
    /// `listen`.
    pub peer_listen: Option<String>,
    /// URL other nodes reach the peer API at; the membership records this one. Default: the
    /// host of `advertise_url` with the port of `peer_listen` (or `advertise_url` itself when
    /// there is no `peer_listen`). `[bootstrap]` lists these URLs.
    pub advertise_peer_url: Option<String>,
    /// Directory of the sled store and snapshots.
    pub data_dir: PathBuf,
    /// How log lines are written to stderr: `text` (for people) or `json` (one object per
    /// line, for a log pipeline).
    pub log_format: LogFormat,
    pub cluster_secret_file: Option<PathBuf>,
    pub admin_token_file: Option<PathBuf>,
    /// Members to form the cluster with on first start. The member with the lowest id
    /// initializes the cluster when it starts with an empty store; others wait to be contacted.
    /// In TOML: `[bootstrap]` with lines `1 = "http://10.0.0.1:7001"`.
    #[serde(with = "id_keys")]
    pub bootstrap: BTreeMap<u64, String>,
    pub raft: RaftSettings,
    pub limits: Limits,
    pub storage: StorageSettings,
    pub facilitator: FacilitatorSettings,
    pub auth: AuthSettings,
    pub rate_limits: Vec<RateRule>,
    pub rate_limit: RateLimitSettings,
    pub idempotency: IdempotencySettings,
    pub breaker: BreakerSettings,
    pub tls: TlsSettings,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Most entries one append RPC carries; also bounds one fsync batch. At most
    /// [`MAX_PAYLOAD_ENTRIES_ACCEPTED`], what every node accepts from a peer.
    pub max_payload_entries: u64,
    /// Take a snapshot after this many entries since the last one.
    pub snapshot_after_logs: u64,
    /// Entries kept behind a snapshot so slightly lagging followers need no snapshot install.
    pub logs_to_keep: u64,
    /// Purge the log only when at least this many entries can go at once (fewer, larger deletes).
    pub purge_batch_size: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest body accepted on the public and admin API.
    pub max_body_bytes: usize,
    /// Largest body accepted from a peer (append batches, snapshot chunks).
    pub max_peer_body_bytes: usize,
    /// Largest snapshot chunk sent to a peer.
    pub snapshot_chunk_bytes: u64,
    /// How long a write may take end to end (including forwarding) before the caller is told the
    /// outcome is unknown.
    pub propose_timeout_ms: u64,
    /// Open client connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Open connections from one client address at once; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Open connections on the peer listener (`peer_listen`) at once.
    pub max_peer_connections: usize,
    /// An HTTP/1 request's headers must arrive within this; it also closes a keep-alive
    /// connection that sends no next request.
    pub header_read_timeout_ms: u64,
    /// A request's whole body must arrive within this.
    pub body_read_timeout_ms: u64,
    /// A connection with no request in flight and no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// On SIGTERM, requests in flight get this long to finish before the node hands off its
    /// leadership and exits.
    pub shutdown_timeout_ms: u64,
    /// How often the leader checks for claims to expire.
    pub expiry_interval_ms: u64,
    /// Client writes waiting to be batched; beyond this a write is refused as overloaded.
    pub max_queued_writes: usize,
    /// Client writes committed together in one Raft entry, at most.
    pub max_writes_per_entry: usize,
    /// Batches this node has proposed and not yet seen committed, at most.
    pub max_entries_in_flight: usize,
}

/// The form of log lines (`log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// sled page cache size.
    pub cache_mb: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            node_id_from_hostname: false,
            listen: "127.0.0.1:7001".into(),
            advertise_url: String::new(),
            peer_listen: None,
            advertise_peer_url: None,
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
            cluster_secret_file: None,
            admin_token_file: None,
            bootstrap: BTreeMap::new(),
            raft: RaftSettings::default(),
            limits: Limits::default(),
            storage: StorageSettings::default(),
            facilitator: FacilitatorSettings::default(),
            auth: AuthSettings::default(),
            rate_limits: Vec::new(),
            rate_limit: RateLimitSettings::default(),
            idempotency: IdempotencySettings::default(),
            breaker: BreakerSettings::default(),
            tls: TlsSettings::default(),
        }
    }
}

/// Most entries a node accepts in one append from a peer, whatever its own
/// `raft.max_payload_entries`: fixed, so nodes configured (or released) with other send limits
/// still take each other's appends during a rolling change.
pub const MAX_PAYLOAD_ENTRIES_ACCEPTED: u64 = 1024;

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 50,
            // openraft 0.9 lets a follower start an election only after the leader's lease
            // (election_max_ms) plus a random election timeout have passed without a heartbeat,
            // so these bound failover at 450-600 ms plus one vote round.
            election_min_ms: 150,
            election_max_ms: 300,
            // openraft gives an append one heartbeat (50 ms) before it times out and sends it
            // again. Entries under load carry a batch of writes each (tens of KB), so 1024 of
            // them, what a follower catching up after a restart is sent, took longer than that
            // on this 2-core machine at 128 connections: each catch-up append timed out, the
            // follower missed heartbeats and campaigned, two spurious elections per rolling
            // restart and stalls of 0.4-0.8 s. With 64: no spurious election and a 0.12 s stall
            // (scripts/bench.sh rolling), the same steady-state rate (an append to an up-to-date
            // follower carries one or two entries).
            max_payload_entries: 64,
            snapshot_after_logs: 200_000,
            logs_to_keep: 20_000,
            purge_batch_size: 256,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_peer_body_bytes: 32 << 20,
            snapshot_chunk_bytes: 4 << 20,
            propose_timeout_ms: 3_000,
            max_connections: 4_096,
            // Loopback load generators and a resource server's pool stay well below this; a
            // host holding more is refused rather than allowed to take every slot.
            max_connections_per_ip: 512,
            max_peer_connections: 256,
            // hyper's own default; also how long an idle HTTP/1 keep-alive connection stays open,
            // so longer than the idle pool of common clients' keep-alive (undici 4 s, ours 20 s).
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            shutdown_timeout_ms: 10_000,
            expiry_interval_ms: 1_000,
            max_queued_writes: 65_536,
            max_writes_per_entry: 1_024,
            // Measured on 2 cores, 3 nodes, 128 connections: 1, 2, 4, 8 gave about 14.6k, 14.8k,
            // 12.2k, 10.9k claims/s; fewer, larger entries cost fewer fsyncs and less CPU.
            max_entries_in_flight: 2,
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self { cache_mb: 64 }
    }
}

/// The secrets a node needs, loaded apart from the rest so the config can be printed.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub cluster_secret: Secret,
    pub admin_token: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("cannot read {what} from {path}: {source}")]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is missing: set {env} or {file_key} in the config")]
    SecretMissing {
        what: &'static str,
        env: &'static str,
        file_key: &'static str,
    },
    #[error("{what} must be at least {MIN_SECRET_LEN} characters")]
    SecretTooShort { what: &'static str },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (if given) and the `X402_` environment over the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        // Unknown keys are errors in every section, so a typo never silently keeps a default.
        // The `X402_` prefix is shared with variables that are not config keys (the secrets,
        // `X402_CONFIG`, the local scripts' own), so only variables naming a config key are read.
        let keys = top_level_keys();
        let env = Env::prefixed("X402_").split("__").filter(move |name| {
            let top = name.as_str().split('.').next().unwrap_or_default();
            keys.iter().any(|key| key.eq_ignore_ascii_case(top))
        });
        let mut config: Config = figment.merge(env).extract().map_err(Box::new)?;
        if config.node_id_from_hostname {
            let host = hostname().ok_or_else(|| {
                ConfigError::Invalid(
                    "node_id_from_hostname: neither HOSTNAME nor /proc/sys/kernel/hostname \
                     names this host"
                        .into(),
                )
            })?;
            config.node_id = node_id_of_hostname(&host).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "node_id_from_hostname: the host name {host:?} does not end in -<ordinal>"
                ))
            })?;
        }
        if config.advertise_url.is_empty() {
            let tls = matches!(config.tls.api_files(), Ok(Some(_)));
            let scheme = if tls { "https" } else { "http" };
            config.advertise_url = format!("{scheme}://{}", config.listen);
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_min_ms <= r.heartbeat_ms * 2 {
            return Err(ConfigError::Invalid(
                "raft.election_min_ms must exceed twice raft.heartbeat_ms".into(),
            ));
        }
        if r.max_payload_entries == 0 || r.max_payload_entries > MAX_PAYLOAD_ENTRIES_ACCEPTED {
            return Err(ConfigError::Invalid(format!(
                "raft.max_payload_entries must be 1 to {MAX_PAYLOAD_ENTRIES_ACCEPTED}"
            )));
        }
        if r.election_max_ms <= r.election_min_ms {
            return Err(ConfigError::Invalid(
                "raft.election_max_ms must exceed raft.election_min_ms".into(),
            ));
        }
        self.tls.validate()?;
        let api_tls = self.tls.api_files()?.is_some();
        let peer_tls = self.tls.peer_files()?.is_some();
        let scheme = if api_tls { "https://" } else { "http://" };
        if !self.advertise_url.starts_with(scheme) {
            return Err(ConfigError::Invalid(format!(
                "advertise_url {:?} must start with {scheme} (TLS on the API is {})",
                self.advertise_url,
                if api_tls { "on" } else { "off" }
            )));
        }
        if (api_tls || peer_tls) && self.peer_listen.is_none() {
            return Err(ConfigError::Invalid(
                "TLS needs peer_listen: peers use a listener of their own".into(),
            ));
        }
        let plaintext: Vec<&str> = [
            Some(&self.listen).filter(|_| !api_tls),
            self.peer_listen.as_ref().filter(|_| !peer_tls),
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .filter(|address| !tls::is_loopback(address))
        .collect();
        if !plaintext.is_empty() && !self.tls.allow_plaintext {
            return Err(ConfigError::Invalid(format!(
                "{} would serve plaintext on a network address: configure [tls] (cert_file and \
                 key_file for the API, peer_ca_file for peers), or set tls.allow_plaintext = \
                 true behind your own TLS",
                plaintext.join(" and ")
            )));
        }
        let peer_scheme = if peer_tls { "https://" } else { "http://" };
        if !self.member_url().starts_with(peer_scheme) {
            return Err(ConfigError::Invalid(format!(
                "advertise_peer_url {:?} must start with {peer_scheme} (TLS between peers is {})",
                self.member_url(),
                if peer_tls { "on" } else { "off" }
            )));
        }
        let l = &self.limits;
        if l.max_writes_per_entry == 0
            || l.max_writes_per_entry > x402_raft_store::state::MAX_OPS_PER_COMMAND
            || l.max_queued_writes == 0
            || l.max_entries_in_flight == 0
        {
            return Err(ConfigError::Invalid(format!(
                "limits.max_writes_per_entry must be 1..={}, and limits.max_queued_writes and \
                 limits.max_entries_in_flight at least 1",
                x402_raft_store::state::MAX_OPS_PER_COMMAND
            )));
        }
        self.facilitator.validate()?;
        access::validate(
            &self.auth,
            &self.rate_limits,
            &self.rate_limit,
            &self.idempotency,
            &self.breaker,
        )?;
        if !self.bootstrap.is_empty() && !self.bootstrap.contains_key(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "bootstrap members do not include this node ({})",
                self.node_id
            )));
        }
        Ok(())
    }

    /// The URL other members reach this node at (the peer API): `advertise_peer_url`, or the
    /// host of `advertise_url` with the port of `peer_listen`, or `advertise_url`.
    pub fn member_url(&self) -> String {
        if let Some(url) = &self.advertise_peer_url {
            return url.clone();
        }
        let Some(peer_listen) = &self.peer_listen else {
            return self.advertise_url.clone();
        };
        let port = peer_listen.rsplit(':').next().unwrap_or_default();
        // The peer port speaks TLS when peer TLS is on, whatever the API speaks.
        let scheme = match self.tls.peer_ca_file {
            Some(_) => "https://",
            None => "http://",
        };
        let base = self.advertise_url.trim_end_matches('/');
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .unwrap_or(base);
        let base = format!("{scheme}{rest}");
        match base.rsplit_once(':') {
            Some((host, p)) if p.chars().all(|c| c.is_ascii_digit()) => format!("{host}:{port}"),
            _ => format!("{base}:{port}"),
        }
    }

    /// Loads the cluster secret and the admin token from the environment or their files.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        Ok(Secrets {
            cluster_secret: load_secret(
                "the cluster secret",
                "X402_CLUSTER_SECRET",
                "cluster_secret_file",
                self.cluster_secret_file.as_deref(),
            )?,
            admin_token: load_secret(
                "the admin token",
                "X402_ADMIN_TOKEN",
                "admin_token_file",
                self.admin_token_file.as_deref(),
            )?,
        })
    }

    /// The openraft configuration these settings describe.
    pub fn openraft(&self) -> openraft::Config {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "x402-cluster".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_min_ms,
            election_timeout_max: r.election_max_ms,
            max_payload_entries: r.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_logs),
            max_in_snapshot_log_to_keep: r.logs_to_keep,
            snapshot_max_chunk_size: self.limits.snapshot_chunk_bytes,
            // A chunk of several MiB to a busy follower takes longer than the 200 ms default.
            install_snapshot_timeout: 5_000,
            purge_batch_size: r.purge_batch_size.max(1),
            ..Default::default()
        }
    }
}

/// This host's name: `HOSTNAME` (set in every Kubernetes pod), else the kernel's.
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The node id a StatefulSet pod name gives: its trailing ordinal plus one (ids start at 1).
pub fn node_id_of_hostname(host: &str) -> Option<u64> {
    // A fully qualified name (`x402-2.x402.default.svc`) carries the pod name first.
    let pod = host.split('.').next()?;
    let (_, ordinal) = pod.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse::<u64>().ok()?.checked_add(1)
}

/// The config's top-level keys (`node_id`, `raft`, ...), as the TOML and the environment name them.
fn top_level_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(key, _)| key).collect(),
        _ => unreachable!("Config serializes to a map"),
    }
}

/// Maps keyed by node id: TOML and environment keys are always strings, so they are parsed here.
mod id_keys {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<u64, String>, s: S) -> Result<S::Ok, S::Error> {
        let by_text: BTreeMap<String, &String> =
            map.iter().map(|(k, v)| (k.to_string(), v)).collect();
        by_text.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                k.parse::<u64>()
                    .map(|id| (id, v))
                    .map_err(|_| D::Error::custom(format!("node id {k:?} is not a number")))
            })
            .collect()
    }
}

fn load_secret(
    what: &'static str,
    env: &'static str,
    file_key: &'static str,
    file: Option<&Path>,
) -> Result<Secret, ConfigError> {
    let value = match (std::env::var(env), file) {
        (Ok(v), _) if !v.is_empty() => v,
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| ConfigError::SecretFile {
                what,
                path: path.to_path_buf(),
                source,
            })?
            .trim()
            .to_string(),
        _ => {
            return Err(ConfigError::SecretMissing {
                what,
                env,
                file_key,
            })
        }
    };
    if value.len() < MIN_SECRET_LEN {
        return Err(ConfigError::SecretTooShort { what });
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/example-node.toml");

    /// Loads `toml` as a node would load its config file.
    pub(crate) fn parse(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Config::load(Some(&path))
    }

    /// The defaults as a loaded config holds them (the advertised URL derived from `listen`).
    fn loaded_defaults() -> serde_json::Value {
        let mut defaults = Config::default();
        defaults.advertise_url = format!("http://{}", defaults.listen);
        serde_json::to_value(defaults).expect("the defaults serialize")
    }

    /// Every `(path, value)` leaf of a JSON object; arrays are leaves.
    fn leaves(value: &serde_json::Value, path: &str, out: &mut Vec<(String, serde_json::Value)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(v, &child, out);
                }
            }
            other => out.push((path.to_string(), other.clone())),
        }
    }

    #[test]
    fn node_ids_from_statefulset_pod_names() {
        assert_eq!(node_id_of_hostname("x402-0"), Some(1));
        assert_eq!(node_id_of_hostname("x402-node-4"), Some(5));
        assert_eq!(node_id_of_hostname("x402-2.x402.default.svc"), Some(3));
        for bad in [
            "x402",
            "x402-",
            "x402-a1",
            "-",
            "",
            "x402-+1",
            "x402-18446744073709551615",
        ] {
            assert_eq!(node_id_of_hostname(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_example_config_shows_the_defaults() {
        let text = std::fs::read_to_string(EXAMPLE).expect("deploy/example-node.toml");
        // Every value the example sets is the default, as its first lines promise.
        let shown: serde_json::Value = Figment::from(Toml::string(&text))
            .extract()
            .expect("the example is valid TOML");
        let defaults = loaded_defaults();
        let mut set = Vec::new();
        leaves(&shown, "", &mut set);
        assert!(set.len() > 30, "the example sets only {} keys", set.len());
        for (path, value) in &set {
            let default = path
                .split('.')
                .try_fold(&defaults, |v, key| v.get(key))
                .unwrap_or_else(|| panic!("the example sets {path}, which is not a config key"));
            assert_eq!(
                value, default,
                "the example shows {path} = {value}, the default is {default}"
            );
        }
        // Every key is shown, commented out where it has no default (a path, a list entry).
        let mut all = Vec::new();
        leaves(&defaults, "", &mut all);
        let network = serde_json::to_value(NetworkSettings::default()).expect("serializes");
        leaves(&network, "facilitator.networks", &mut all);
        for (path, default) in &all {
            let key = path.rsplit('.').next().unwrap_or_default();
            let mentioned = if default.is_array() {
                // A list is shown by a commented example entry (`# [[rate_limits]]`).
                text.contains(&format!("[[{path}]]")) || text.contains(&format!("{key} = ["))
            } else {
                text.lines().any(|line| {
                    let line = line.trim_start().trim_start_matches('#').trim_start();
                    line.strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
            };
            assert!(mentioned, "deploy/example-node.toml does not show {path}");
        }
        // And the whole file loads.
        let config = parse(&text).expect("the example config is valid");
        assert_eq!(
            serde_json::to_value(config).expect("serializes"),
            defaults,
            "the example config loads to the defaults"
        );
    }

    #[test]
    fn no_plaintext_on_a_network_address_unless_allowed_and_tls_needs_its_files_and_peer_port() {
        let refused = |toml: &str, says: &str| {
            let err = parse(toml).expect_err(toml).to_string();
            assert!(err.contains(says), "{toml:?}: {err}");
        };
        refused(
            "listen = \"0.0.0.0:7001\"\n",
            "0.0.0.0:7001 would serve plaintext",
        );
        refused(
            "listen = \"127.0.0.1:7001\"\npeer_listen = \"10.0.0.5:7002\"\n",
            "10.0.0.5:7002 would serve plaintext",
        );
        let allowed = "listen = \"0.0.0.0:7001\"\n[tls]\nallow_plaintext = true\n";
        assert!(parse(allowed).is_ok());
        assert!(
            parse("listen = \"[::1]:7001\"\n").is_ok(),
            "loopback needs no TLS"
        );

        refused("[tls]\ncert_file = \"/x.pem\"\n", "set both or neither");
        let tls = "listen = \"0.0.0.0:7001\"\npeer_listen = \"127.0.0.1:7002\"\n\
                   [tls]\ncert_file = \"/x.pem\"\nkey_file = \"/x.key\"\n";
        let config = parse(tls).expect("TLS on a network address");
        assert_eq!(config.advertise_url, "https://0.0.0.0:7001");
        assert_eq!(
            config.member_url(),
            "http://0.0.0.0:7002",
            "peers speak plain http without peer_ca_file"
        );
        refused(
            "advertise_url = \"http://a:1\"\npeer_listen = \"127.0.0.1:7002\"\n\
             [tls]\ncert_file = \"/x.pem\"\nkey_file = \"/x.key\"\n",
            "must start with https://",
        );
        refused(
            "[tls]\ncert_file = \"/x.pem\"\nkey_file = \"/x.key\"\n",
            "TLS needs peer_listen",
        );
        refused("[tls]\nreload_check_ms = 0\n", "tls.reload_check_ms");

        // Mutual TLS between peers: https member URLs, and no plaintext refusal for the peer port.
        let peers = "listen = \"0.0.0.0:7001\"\npeer_listen = \"0.0.0.0:7002\"\n\
                     [tls]\ncert_file = \"/x.pem\"\nkey_file = \"/x.key\"\n\
                     peer_ca_file = \"/ca.pem\"\n";
        let config = parse(peers).expect("TLS on both listeners");
        assert_eq!(config.member_url(), "https://0.0.0.0:7002");
        let files = config.tls.peer_files().unwrap().expect("peer TLS");
        assert_eq!(files.cert_file, std::path::Path::new("/x.pem"));
        assert_eq!(
            files.client_ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let own = format!("{peers}peer_cert_file = \"/p.pem\"\npeer_key_file = \"/p.key\"\n");
        let files = parse(&own).unwrap().tls.peer_files().unwrap().unwrap();
        assert_eq!(files.key_file, std::path::Path::new("/p.key"));
        refused(
            "peer_listen = \"127.0.0.1:7002\"\n[tls]\npeer_ca_file = \"/ca.pem\"\n",
            "needs a node certificate and key",
        );
        refused(
            "[tls]\npeer_cert_file = \"/p.pem\"\n",
            "need tls.peer_ca_file",
        );
        refused(
            "[tls]\npeer_ca_file = \"/ca.pem\"\npeer_cert_file = \"/p\"\npeer_key_file = \"/k\"\n",
            "TLS needs peer_listen",
        );
        refused(
            &peers.replace("[tls]", "advertise_peer_url = \"http://a:7002\"\n[tls]"),
            "must start with https://",
        );
    }

    #[test]
    fn unknown_keys_are_errors_in_every_section() {
        for (section, typo) in [
            ("", "listn = \"127.0.0.1:7001\""),
            ("[raft]", "heartbeat = 50"),
            ("[limits]", "max_conections = 10"),
            ("[storage]", "cache = 1"),
            ("[facilitator]", "onchain_check = false"),
            ("[auth]", "require = true"),
            ("[rate_limit]", "lease = 1"),
            ("[idempotency]", "ttl = 1"),
            ("[breaker]", "open = 1"),
            ("[tls]", "cert = 1"),
        ] {
            let toml = format!("{section}\n{typo}\n");
            let err = parse(&toml).expect_err(&toml);
            let key = typo.split(' ').next().unwrap_or_default();
            assert!(
                err.to_string().contains(key),
                "the error for {toml:?} should name {key}: {err}"
            );
        }
        // One letter apart, a table where a list is meant: refused too.
        let err = parse("[rate_limits]\nname = \"r\"\n").expect_err("a table for a list");
        assert!(err.to_string().contains("rate_limits"), "{err}");
        let network = "[[facilitator.networks]]\nnetwork = \"eip155:1\"\nrpc_url = \"http://x\"\n";
        assert!(parse(network).is_err(), "a typo in a network is refused");
    }
}
