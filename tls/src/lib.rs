//! The one TLS stack of x402-cluster: rustls with its `ring` provider (no OpenSSL, no second
//! provider; ring builds in seconds where aws-lc-rs needs a C toolchain run of minutes).
//!
//! - Clients ([`client_config`]) verify servers against [`Roots`]: the system's store (as
//!   `rustls-native-certs` reads it: `/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), or
//!   the certificates of one PEM file only (a private CA, or a pinned one). A client of
//!   `http://` URLs only reads none, so it runs where no CA store is installed.
//! - Servers ([`server::ServerTls`]) serve a certificate chain and key from files, optionally
//!   requiring node certificates of the cluster CA (mutual TLS between nodes, [`peer`]), and read the files again when they
//!   change, so certificates rotate without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

pub mod issue;
pub mod peer;
pub mod server;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Most certificates one PEM file may hold (a bundle of a private CA and its intermediates, or
/// a chain, is a handful; the Mozilla bundle is ~150).
pub const MAX_PEM_CERTIFICATES: usize = 1024;

/// Why a TLS configuration could not be built. Never quotes a certificate or a key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file} {path} holds no PEM certificate")]
    NoCertificate { file: &'static str, path: PathBuf },
    #[error("{file} {path} holds more than {MAX_PEM_CERTIFICATES} certificates")]
    TooManyCertificates { file: &'static str, path: PathBuf },
    #[error("{file} {path}: certificate #{index} is not valid PEM")]
    BadPem {
        file: &'static str,
        path: PathBuf,
        index: usize,
    },
    #[error("the CA file {path}: certificate #{index} is not a valid X.509 CA certificate")]
    BadCa { path: PathBuf, index: usize },
    #[error(
        "no system CA certificates found for an https:// URL: install the ca-certificates \
         package, point SSL_CERT_FILE at a bundle, or set ca_file"
    )]
    NoSystemRoots,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot issue certificates: {0}")]
    Issue(String),
    #[error("the client CA file {path} cannot verify clients: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("{path} holds no PEM {what}")]
    Missing { what: &'static str, path: PathBuf },
    #[error("the certificate {cert} and the key {key} do not make a usable pair: {reason}")]
    BadPair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The crypto provider of every TLS connection of this program; installed as the process
/// default too, so that a client built with defaults (by a library) uses the same one.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only if something installed another provider first; ours is used explicitly.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the roots that verify a server come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The system's CA store.
    System,
    /// The certificates of one PEM file, and no other.
    File(PathBuf),
    /// None: for a client that only speaks `http://`.
    None,
}

impl Roots {
    /// The roots for `urls`: the CA file when one is named, the system's store when a URL is
    /// `https://`, none otherwise.
    pub fn for_urls<S: AsRef<str>>(urls: &[S], ca_file: Option<&Path>) -> Roots {
        match ca_file {
            Some(path) => Roots::File(path.to_path_buf()),
            None if urls.iter().any(|u| is_https(u.as_ref())) => Roots::System,
            None => Roots::None,
        }
    }

    /// The root store these roots describe, read now.
    pub fn store(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        match self {
            Roots::None => {}
            Roots::System => {
                // Unreadable entries of the system store are skipped (as curl does); only an
                // empty result is an error.
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError::NoSystemRoots);
                }
            }
            Roots::File(path) => {
                let certs = read_certificates(path, "the CA file")?;
                for (index, cert) in certs.into_iter().enumerate() {
                    store.add(cert).map_err(|_| TlsError::BadCa {
                        path: path.clone(),
                        index: index + 1,
                    })?;
                }
            }
        }
        Ok(store)
    }
}

/// Whether `url` names the `https` scheme (case-insensitive, as URLs do).
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The certificates of a PEM file (anything else in it is ignored); `file` names its role in
/// errors ("the CA file").
pub fn read_certificates(
    path: &Path,
    file: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        what: file,
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|_| TlsError::BadPem {
            file,
            path: path.to_path_buf(),
            index: index + 1,
        })?;
        if certs.len() == MAX_PEM_CERTIFICATES {
            return Err(TlsError::TooManyCertificates {
                file,
                path: path.to_path_buf(),
            });
        }
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            file,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A client configuration verifying servers against `roots` (TLS 1.2 and 1.3, HTTP/1.1 only:
/// the JSON-RPC endpoints are plain HTTP/1.1 services behind their TLS).
pub fn client_config(roots: &Roots) -> Result<ClientConfig, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Client(e.to_string()))?
        .with_root_certificates(roots.store()?)
        .with_no_client_auth();
    Ok(config)
}
