//! The `[tls]` section: TLS on the API listener, mutual TLS on the peer listener, and the rule
//! that no node serves plaintext on a network address by accident.
//!
//! ```toml
//! [tls]
//! cert_file = "/etc/x402/tls/node1.pem"   # PEM chain; with key_file: the API, /healthz,
//! key_file = "/etc/x402/tls/node1.key"    # /readyz and /metrics are served over TLS only
//! peer_ca_file = "/etc/x402/tls/ca.pem"   # the cluster CA: peers speak mutual TLS on
//!                                         # peer_listen, each with a certificate naming
//!                                         # node-<id>.x402-cluster, the CA's only
//! peer_cert_file = "..."                  # the node certificate for peers, when it is not
//! peer_key_file = "..."                   # cert_file/key_file (a public CA's API certificate)
//! allow_plaintext = false                 # serve http:// on a non-loopback address anyway
//! reload_check_ms = 10000                 # how often the files are checked for a change
//! ```
//!
//! Certificates, keys and the CA are read again when a file changes (checked every
//! `reload_check_ms`) and on `SIGHUP`; files that do not load leave the previous ones in use.
//! Peers keep their own listener (`peer_listen`), which TLS on the API requires.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use x402_tls::server::ServerFiles;

use super::ConfigError;

/// Shortest and longest interval between checks of the certificate files.
pub const RELOAD_CHECK_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of the API listener (`listen`), its own certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub key_file: Option<PathBuf>,
    /// The cluster CA (PEM). Set, the peer listener requires node certificates it signed, and
    /// this node dials its peers over TLS with its own (member URLs are `https://`).
    pub peer_ca_file: Option<PathBuf>,
    /// The node certificate peers see (server and client authentication, naming
    /// `node-<id>.x402-cluster`); `cert_file` when unset.
    pub peer_cert_file: Option<PathBuf>,
    /// Its key; `key_file` when unset.
    pub peer_key_file: Option<PathBuf>,
    /// Serve plaintext on an address that is not loopback (behind a TLS-terminating proxy of
    /// your own, or on a network you trust). Without it such a node refuses to start.
    pub allow_plaintext: bool,
    /// How often `cert_file` and `key_file` are checked for a change.
    pub reload_check_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            peer_ca_file: None,
            peer_cert_file: None,
            peer_key_file: None,
            allow_plaintext: false,
            reload_check_ms: 10_000,
        }
    }
}

impl TlsSettings {
    /// The API listener's TLS files, when TLS is configured.
    pub fn api_files(&self) -> Result<Option<ServerFiles>, ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => Ok(Some(ServerFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: None,
            })),
            (None, None) => Ok(None),
            _ => Err(ConfigError::Invalid(
                "tls.cert_file and tls.key_file go together: set both or neither".into(),
            )),
        }
    }

    /// The peer listener's (and the node's peer connections') TLS files, when peer TLS is on.
    pub fn peer_files(&self) -> Result<Option<ServerFiles>, ConfigError> {
        let Some(ca) = &self.peer_ca_file else {
            if self.peer_cert_file.is_some() || self.peer_key_file.is_some() {
                return Err(ConfigError::Invalid(
                    "tls.peer_cert_file and tls.peer_key_file need tls.peer_ca_file".into(),
                ));
            }
            return Ok(None);
        };
        let cert = self.peer_cert_file.as_ref().or(self.cert_file.as_ref());
        let key = self.peer_key_file.as_ref().or(self.key_file.as_ref());
        match (cert, key) {
            (Some(cert_file), Some(key_file)) => Ok(Some(ServerFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: Some(ca.clone()),
            })),
            _ => Err(ConfigError::Invalid(
                "tls.peer_ca_file needs a node certificate and key: tls.peer_cert_file and \
                 tls.peer_key_file, or tls.cert_file and tls.key_file"
                    .into(),
            )),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.api_files()?;
        self.peer_files()?;
        if !RELOAD_CHECK_MS.contains(&self.reload_check_ms) {
            return Err(ConfigError::Invalid(format!(
                "tls.reload_check_ms must be {}..={}",
                RELOAD_CHECK_MS.start(),
                RELOAD_CHECK_MS.end()
            )));
        }
        Ok(())
    }
}

/// Whether a listen address only accepts connections from this machine.
pub fn is_loopback(listen: &str) -> bool {
    match listen.parse::<SocketAddr>() {
        Ok(address) => address.ip().is_loopback(),
        Err(_) => listen
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_told_apart() {
        for yes in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "localhost:7001",
            "127.1.2.3:1",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "0.0.0.0:7001",
            "[::]:7001",
            "10.0.0.5:7001",
            "node1.example:7001",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }
}
