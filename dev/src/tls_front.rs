//! An `https://` front for a local `http://` server (anvil): a fresh test CA, a server
//! certificate it signed for `127.0.0.1` and `localhost`, and a TLS terminator on a free port
//! that forwards each connection's bytes to the server. What the https RPC tests put between
//! the node and anvil, the way a hosted RPC provider sits behind its TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A CA made for one test run, and the PEM file that names it.
pub struct TestCa {
    pub cert_pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.clone().self_signed(&key).expect("self-signed CA");
        TestCa {
            cert_pem: cert.pem(),
            params,
            key,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its PKCS#8 key.
    pub fn server_certificate(
        &self,
        names: &[&str],
        validity: Validity,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server parameters");
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("server key");
        let issuer = self
            .params
            .clone()
            .self_signed(&self.key)
            .expect("CA certificate");
        let cert = params
            .signed_by(&key, &issuer, &self.key)
            .expect("signed server certificate");
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// Whether a certificate is valid now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Current,
    /// Expired in 2021.
    Expired,
}

/// A running TLS front. Dropping it stops accepting.
pub struct TlsFront {
    pub port: u16,
    /// The PEM file of the CA that signed the front's certificate (`ca_file`).
    pub ca_file: PathBuf,
    handshakes: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    /// Starts a front for `upstream` on `127.0.0.1`, on the current runtime.
    pub async fn start(upstream: SocketAddr) -> TlsFront {
        Self::start_with(upstream, Validity::Current).await
    }

    /// [`TlsFront::start`] with a certificate of the given validity.
    pub async fn start_with(upstream: SocketAddr, validity: Validity) -> TlsFront {
        let ca = TestCa::new("x402 test RPC CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("rpc-ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).expect("write the CA file");
        let (cert, key) = ca.server_certificate(&["127.0.0.1", "localhost"], validity);
        let config = rustls::ServerConfig::builder_with_provider(x402_node::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server configuration");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let handshakes = Arc::new(AtomicU64::new(0));
        let counted = handshakes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    // A client that refuses our certificate ends here; that is its test.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    }
                });
            }
        });
        TlsFront {
            port,
            ca_file,
            handshakes,
            accept,
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT` followed by `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("https://127.0.0.1:{}{path_and_query}", self.port)
    }

    /// TLS handshakes completed so far (connections that trusted the certificate).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
