//! Mutual TLS between the nodes of one cluster: every node certificate names its node id.
//!
//! A node's certificate carries the DNS name [`node_name`] of its id (`node-3.x402-cluster`)
//! besides the host names peers dial. The peer listener accepts only clients whose certificate
//! the cluster CA signed *and* that name a node id ([`NodeCertVerifier`]): anything else is
//! refused at the handshake. Which ids may send Raft messages is the membership's business and
//! changes at run time, so the node checks the id [`node_id_of`] reads against its membership
//! per request, not here. Peers verify the server they dial like any TLS client: the cluster
//! CA, and the host of the member URL among the certificate's names.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The DNS names of node certificates end with this.
const NODE_NAME_SUFFIX: &str = ".x402-cluster";
const NODE_NAME_PREFIX: &str = "node-";

/// The DNS name every certificate of node `id` carries: how a peer's certificate names its id.
pub fn node_name(id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{id}{NODE_NAME_SUFFIX}")
}

/// The node id a certificate names ([`node_name`] among its DNS names), if exactly one.
pub fn node_id_of(certificate: &CertificateDer<'_>) -> Option<u64> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let mut ids = parsed.valid_dns_names().filter_map(|name| {
        let digits = name
            .strip_prefix(NODE_NAME_PREFIX)?
            .strip_suffix(NODE_NAME_SUFFIX)?;
        // Canonical decimal only: "node-03" is not node 3.
        let id: u64 = digits.parse().ok()?;
        (id.to_string() == digits).then_some(id)
    });
    let id = ids.next()?;
    // A certificate naming two nodes could speak as either: it names none.
    ids.all(|other| other == id).then_some(id)
}

/// Verifies client certificates against the cluster CA (the inner WebPKI verifier) and
/// refuses any that names no node id.
#[derive(Debug)]
pub struct NodeCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl NodeCertVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        Self { inner }
    }
}

impl ClientCertVerifier for NodeCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match node_id_of(end_entity) {
            Some(_) => Ok(verified),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let keys = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&keys)
            .unwrap();
        cert.der().clone()
    }

    #[test]
    fn a_certificate_names_the_node_id_of_its_node_name() {
        assert_eq!(node_name(3), "node-3.x402-cluster");
        let cases: &[(&[&str], Option<u64>)] = &[
            (&["node-3.x402-cluster", "10.0.0.3", "db.example"], Some(3)),
            (&["10.0.0.3", "node-12.x402-cluster"], Some(12)),
            (&["node-3.x402-cluster", "node-3.x402-cluster"], Some(3)),
            (&["db.example"], None),
            (&["node-03.x402-cluster"], None),
            (&["node-x.x402-cluster"], None),
            (&["node-3.x402-cluster.evil"], None),
            (&["node-1.x402-cluster", "node-2.x402-cluster"], None),
        ];
        for (names, id) in cases {
            assert_eq!(node_id_of(&certificate(names)), *id, "{names:?}");
        }
        assert_eq!(node_id_of(&CertificateDer::from(vec![1, 2, 3])), None);
    }

    #[test]
    fn the_peer_verifier_wants_the_cluster_ca_and_a_node_name() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crate::provider(),
        )
        .build()
        .unwrap();
        let verifier = NodeCertVerifier::new(inner);
        let signed = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(names).unwrap();
            params.signed_by(&key, &ca, &ca_key).unwrap().der().clone()
        };
        let now = UnixTime::now();
        assert!(verifier
            .verify_client_cert(&signed(&["node-2.x402-cluster"]), &[], now)
            .is_ok());
        assert!(
            verifier
                .verify_client_cert(&signed(&["127.0.0.1"]), &[], now)
                .is_err(),
            "the cluster CA's certificate naming no node"
        );
        assert!(
            verifier
                .verify_client_cert(&certificate(&["node-2.x402-cluster"]), &[], now)
                .is_err(),
            "a node name the cluster CA did not sign"
        );
        assert!(verifier.client_auth_mandatory());
    }
}
