//! An `https://` front for a local `http://` server (anvil): a fresh test CA, a server
//! certificate it signed for `127.0.0.1` and `localhost`, and a TLS terminator on a free port
//! that forwards each connection's bytes to the server. What the https RPC tests put between
//! the node and anvil, the way a hosted RPC provider sits behind its TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::devchain::Anvil;

/// A CA made for one test run.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa { cert, key }
    }

    /// The CA's certificate, PEM: what a client's `ca_file` holds.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` and its key written as PEM files `<stem>.pem` and `<stem>.key`
    /// into `dir` (for a process, or a client certificate of this CA).
    pub fn certificate_files(
        &self,
        names: &[&str],
        dir: &std::path::Path,
        stem: &str,
    ) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("certificate parameters");
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed certificate");
        let (cert_file, key_file) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
        (cert_file, key_file)
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
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
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
    /// Starts a front for `anvil` on `127.0.0.1`, with a current certificate, on the current
    /// runtime.
    pub async fn in_front_of(anvil: &Anvil) -> TlsFront {
        Self::start_with(anvil, Validity::Current).await
    }

    /// [`TlsFront::in_front_of`] with a certificate of the given validity.
    pub async fn start_with(anvil: &Anvil, validity: Validity) -> TlsFront {
        let upstream = anvil_address(anvil);
        let ca = TestCa::new("x402 test RPC CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("rpc-ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("write the CA file");
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

    /// The front's URL carrying `key` the ways RPC providers take one: in the user info and in
    /// the query (anvil answers only on `/`, so not in the path).
    pub fn keyed_url(&self, key: &str) -> String {
        format!("https://user:{key}@127.0.0.1:{}/?apikey={key}", self.port)
    }

    /// TLS handshakes completed so far (connections that trusted the certificate).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

/// The socket address of `anvil`'s `http://` URL.
fn anvil_address(anvil: &Anvil) -> SocketAddr {
    anvil
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("anvil listens on a socket address")
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
