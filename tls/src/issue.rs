//! A CA and per-node certificates for a test or small cluster (`x402ctl tls init`).
//!
//! Writes into one directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem` | the cluster CA's certificate: clients' `--cacert`, peers' `peer_ca_file` |
//! | `ca.key` | its key (mode 0600): keep it offline; only needed to issue more certificates |
//! | `node<N>.pem` | node N's certificate, then the CA's (a chain, for `cert_file`) |
//! | `node<N>.key` | node N's key (mode 0600), for `key_file` |
//!
//! Each node certificate names every `--host` given (DNS names or IP addresses) and
//! [`node_name`] of its id, and is good for both server and client authentication, so one pair
//! serves the API, the peer listener and the node's own peer connections. Existing files are
//! never overwritten: a second `init` into the same directory is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::TlsError;

/// Most nodes one `init` issues for.
pub const MAX_NODES: u64 = 64;
/// How long a node certificate is valid.
pub const NODE_VALIDITY_DAYS: i64 = 397;
/// How long the CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;

pub use crate::peer::node_name;

/// What [`init`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// `(node id, certificate chain, key)`, ids 1..=N.
    pub nodes: Vec<(u64, PathBuf, PathBuf)>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Issue(format!("{what}: {e}"))
}

/// Issues a CA and certificates for nodes `1..=nodes` naming `hosts`, into `dir` (created if
/// missing).
pub fn init(dir: &Path, nodes: u64, hosts: &[String]) -> Result<Issued, TlsError> {
    if nodes == 0 || nodes > MAX_NODES {
        return Err(TlsError::Issue(format!("--nodes must be 1..={MAX_NODES}")));
    }
    std::fs::create_dir_all(dir).map_err(|e| failed(&format!("create {}", dir.display()), e))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let mut files = vec![ca_cert.clone(), ca_key.clone()];
    for id in 1..=nodes {
        files.push(dir.join(format!("node{id}.pem")));
        files.push(dir.join(format!("node{id}.key")));
    }
    if let Some(existing) = files.iter().find(|f| f.exists()) {
        return Err(TlsError::Issue(format!(
            "{} exists; refusing to overwrite certificates (use another directory)",
            existing.display()
        )));
    }

    let now = time_now();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "x402-cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now;
    ca.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    let ca_keys = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let ca_certificate = ca.self_signed(&ca_keys).map_err(|e| failed("CA", e))?;
    let ca_pem = ca_certificate.pem();

    let mut issued = Vec::new();
    let mut outputs: Vec<(PathBuf, String, bool)> = vec![
        (ca_cert.clone(), ca_pem.clone(), false),
        (ca_key.clone(), ca_keys.serialize_pem(), true),
    ];
    for id in 1..=nodes {
        let mut names: Vec<String> = hosts.to_vec();
        names.push(node_name(id));
        let mut params = CertificateParams::new(names).map_err(|e| failed("a --host", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("x402-cluster node {id}"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now;
        params.not_after = now + time::Duration::days(NODE_VALIDITY_DAYS);
        let keys = KeyPair::generate().map_err(|e| failed("node key", e))?;
        let cert = params
            .signed_by(&keys, &ca_certificate, &ca_keys)
            .map_err(|e| failed("node certificate", e))?;
        let chain = format!("{}{ca_pem}", cert.pem());
        let (cert_file, key_file) = (
            dir.join(format!("node{id}.pem")),
            dir.join(format!("node{id}.key")),
        );
        outputs.push((cert_file.clone(), chain, false));
        outputs.push((key_file.clone(), keys.serialize_pem(), true));
        issued.push((id, cert_file, key_file));
    }
    for (path, text, secret) in outputs {
        write_new(&path, text.as_bytes(), secret)?;
    }
    Ok(Issued {
        ca_cert,
        ca_key,
        nodes: issued,
    })
}

/// Now, minus a minute: a peer whose clock is a little behind still accepts the certificate.
fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::minutes(1)
}

/// Writes `bytes` to a file that must not exist yet; keys readable by the owner only.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .map_err(|e| failed(&format!("create {}", path.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| failed(&format!("write {}", path.display()), e))
}
