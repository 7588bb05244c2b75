//! A server's TLS configuration, from files, reloaded when they change.
//!
//! Every new connection takes the configuration current at its handshake
//! ([`ServerTls::config`]); connections already open keep theirs. A reload reads all files
//! first and swaps only a configuration that builds: a half-written or mismatched certificate
//! and key leave the old one serving (and the error is logged), so a rotation can never take a
//! listener down. Reloads happen when asked ([`ServerTls::reload`], the node's SIGHUP) and when
//! a file's modification time or size changes ([`ServerTls::watch`], polled: it also sees a
//! Kubernetes secret volume swap its symlink, which inotify on the file would miss).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::peer::NodeCertVerifier;
use crate::{provider, read_certificates, Roots, TlsError};

/// The files a server's TLS is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, clients must present a node certificate ([`crate::peer`]) this PEM file's CAs
    /// signed (mutual TLS between nodes), and [`ServerTls::client_config`] gives the node's
    /// own connections to its peers: the same certificate, verifying servers against this CA.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [
            Some(&self.cert_file),
            Some(&self.key_file),
            self.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
    }

    /// Reads every file and builds the server configuration and, with a client CA, the
    /// client configuration they describe.
    pub fn build(&self) -> Result<(ServerConfig, Option<ClientConfig>), TlsError> {
        let chain = read_certificates(&self.cert_file, "the certificate file")?;
        let key = read_key(&self.key_file)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Client(e.to_string()))?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Roots::File(ca.clone()).store()?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            path: ca.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(Arc::new(NodeCertVerifier::new(verifier)))
            }
        };
        let bad_pair = |e: rustls::Error| TlsError::BadPair {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            reason: e.to_string(),
        };
        let client = match &self.client_ca_file {
            None => None,
            Some(ca) => {
                let mut client = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError::Client(e.to_string()))?
                    .with_root_certificates(Roots::File(ca.clone()).store()?)
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(bad_pair)?;
                // Peers speak HTTP/2 only.
                client.alpn_protocols = vec![b"h2".to_vec()];
                Some(client)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(bad_pair)?;
        // HTTP/2 for peers (prior knowledge in the clear; ALPN under TLS), HTTP/1.1 for clients.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((config, client))
    }

    /// Modification time and length of every file: what [`ServerTls::watch`] compares.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "the key file",
        path: path.to_path_buf(),
        source,
    })?;
    // The parse error is not shown: it could quote part of the key.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Missing {
        what: "private key",
        path: path.to_path_buf(),
    })
}

/// A server's current TLS configuration and the files it came from. Shared by the listener
/// (which reads it per handshake) and the reloaders.
pub struct ServerTls {
    files: ServerFiles,
    current: RwLock<Arc<ServerConfig>>,
    client: RwLock<Option<Arc<ClientConfig>>>,
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads `files`; an error here is a start-up error.
    pub fn load(files: ServerFiles) -> Result<Arc<ServerTls>, TlsError> {
        let stamp = files.stamp();
        let (config, client) = files.build()?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(Arc::new(config)),
            client: RwLock::new(client.map(Arc::new)),
            stamp: Mutex::new(stamp),
        }))
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The configuration of a new connection to a peer, when the files name a client CA.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again and uses what they hold from the next handshake on (served and
    /// made); on an error the configurations in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = self.files.stamp();
        let (config, client) = self.files.build()?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = client.map(Arc::new);
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        Ok(())
    }

    /// [`ServerTls::reload`] if a file changed since the last load; whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = self.files.stamp();
        if *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Polls the files every `every` and reloads when one changed; logs each outcome. A file
    /// caught half-written fails to build and is tried again at the next poll.
    pub async fn watch(self: Arc<Self>, name: &'static str, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(listener = name, "TLS certificate reloaded (file changed)")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(listener = name, error = %e,
                    "TLS files changed but do not load; still serving the previous certificate"),
            }
        }
    }
}
