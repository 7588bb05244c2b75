//! Retries that must get the first answer again, for the cluster as a whole: the
//! `Idempotency-Key` header on `POST /verify` and `/settle` (draft-ietf-httpapi-idempotency-key-
//! header) and the x402 `payment-identifier` extension on `/settle`
//! (`paymentPayload.extensions["payment-identifier"].info.id`):
//!
//! - the first request with a key runs and its final answer is stored (replicated) for `ttl_ms`;
//! - a later request with the same key and the same fingerprint gets the stored answer again,
//!   on any node, marked `Idempotent-Replayed: true`;
//! - the same key while the first is still running: 409; with another request: 422 for an
//!   `Idempotency-Key`, 409 for a `payment-identifier` (as its specification says);
//! - an answer that decided nothing is not stored: 5xx, 429, and `settlement_pending` (its retry
//!   must reach the settlement, whose success it may still get). The key is released so a retry
//!   runs again; a node that died mid-request leaves the key in flight, and after
//!   `in_flight_timeout_ms` a retry takes it over.
//!
//! The caller begins a key only after the request decoded and its signature and terms passed,
//! so malformed or forged requests never write to the log, and a payload that differs from the
//! stored one in any signed or required field never gets the stored answer. Keys are scoped by
//! caller (the API key id; an anonymous caller by its IP address) and stored as a digest, so a
//! key's text never reaches the log.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use x402_raft_store::runtime::ThreadRng;
use x402_raft_store::state::idempotency::{
    IdempotencyBegun, IdempotencyEnded, IdempotentFinish, IdempotentStart, StoredAnswer,
    MAX_STORED_ANSWER_BYTES,
};

use super::api_keys::KeyId;
use super::Route;
use crate::cluster::proposer::ProposeError;
use crate::cluster::writer::Writer;
use crate::config::IdempotencySettings;

pub const HEADER: &str = "idempotency-key";
/// Marks an answer that was stored earlier rather than computed now.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The x402 extension whose `info.id` a settlement's retry repeats.
pub const PAYMENT_IDENTIFIER: &str = "payment-identifier";
/// Lengths of a `payment-identifier` id, as its specification bounds them.
pub const PAYMENT_ID_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Which mechanism a request's key came from (their conflicts answer differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    IdempotencyKey,
    PaymentIdentifier,
}

/// A request's idempotency key, scoped and digested, with the fingerprint of what it asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestKey {
    pub kind: KeyKind,
    key: [u8; 32],
    fingerprint: [u8; 32],
}

/// Who a key belongs to: the API key, or an anonymous caller's address (two anonymous clients
/// picking the same key must not see each other's answers).
#[derive(Clone, Debug)]
pub struct Scope {
    pub api_key: Option<KeyId>,
    pub client_ip: Option<IpAddr>,
}

impl Scope {
    fn write(&self, h: &mut Sha256) {
        let (tag, bytes): (&[u8], Vec<u8>) = match (&self.api_key, self.client_ip) {
            (Some(k), _) => (b"key", k.as_bytes().to_vec()),
            (None, Some(IpAddr::V4(ip))) => (b"ip4", ip.octets().to_vec()),
            (None, Some(IpAddr::V6(ip))) => (b"ip6", ip.octets().to_vec()),
            (None, None) => (b"none", Vec::new()),
        };
        h.update(tag);
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
}

/// Why a key was refused before the request ran (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Idempotency-Key must be 1..={max} visible ASCII characters")]
    BadIdempotencyKey { max: usize },
    #[error(
        "extensions[\"payment-identifier\"].info.id must be 16-128 characters of A-Z, a-z, 0-9, \
         '_' and '-'"
    )]
    BadPaymentIdentifier,
}

/// The `Idempotency-Key` of a request (route and body fingerprinted), if it sent one.
pub fn idempotency_key(
    header: Option<&[u8]>,
    settings: &IdempotencySettings,
    scope: &Scope,
    route: Route,
    body: &[u8],
) -> Result<Option<RequestKey>, KeyError> {
    let Some(raw) = header else {
        return Ok(None);
    };
    let text = std::str::from_utf8(raw).unwrap_or_default();
    // The draft's key is a Structured Field string: "…"; bare tokens are accepted too.
    let key = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    if key.is_empty()
        || key.len() > settings.max_key_bytes
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(KeyError::BadIdempotencyKey {
            max: settings.max_key_bytes,
        });
    }
    let mut h = Sha256::new();
    h.update(b"x402-cluster idempotency key v2");
    scope.write(&mut h);
    h.update(key.as_bytes());
    let mut f = Sha256::new();
    f.update(b"POST ");
    f.update(route.path().as_bytes());
    f.update(Sha256::digest(body));
    Ok(Some(RequestKey {
        kind: KeyKind::IdempotencyKey,
        key: h.finalize().into(),
        fingerprint: f.finalize().into(),
    }))
}

/// The `payment-identifier` key of a request, if its payload carries an id. `payment` is the
/// digest of everything signed and required (the caller computes it from the checked payment),
/// so the same id with another payload is a conflict.
pub fn payment_identifier(
    extensions: Option<&serde_json::Value>,
    scope: &Scope,
    route: Route,
    payment: [u8; 32],
) -> Result<Option<RequestKey>, KeyError> {
    let Some(id) = extensions
        .and_then(|e| e.get(PAYMENT_IDENTIFIER))
        .and_then(|e| e.get("info"))
        .and_then(|i| i.get("id"))
    else {
        return Ok(None);
    };
    let id = id.as_str().ok_or(KeyError::BadPaymentIdentifier)?;
    if !PAYMENT_ID_LEN.contains(&id.len())
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(KeyError::BadPaymentIdentifier);
    }
    let mut h = Sha256::new();
    h.update(b"x402-cluster payment-identifier v1");
    scope.write(&mut h);
    h.update(route.path().as_bytes());
    h.update(id.as_bytes());
    Ok(Some(RequestKey {
        kind: KeyKind::PaymentIdentifier,
        key: h.finalize().into(),
        fingerprint: payment,
    }))
}

/// One request's claim on an idempotency key.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    key: [u8; 32],
    attempt: [u8; 16],
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begun {
    /// Run the request, then [`finish`] with its answer.
    Run(KeyClaim),
    /// Answer this stored answer instead.
    Replay(StoredAnswer),
}

/// Why a keyed request does not run (nothing was written, or the write's outcome is unknown).
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    #[error("a request with this key is still being processed; retry later")]
    InFlight,
    #[error("this key was used for a different request")]
    Mismatch(KeyKind),
    #[error("too many idempotency keys are stored; retry later or without the key")]
    Full,
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

/// Claims `key` for this request, or answers it from the store.
pub async fn begin(
    writer: &Writer,
    settings: &IdempotencySettings,
    key: &RequestKey,
) -> Result<Begun, BeginError> {
    let claim = KeyClaim {
        key: key.key,
        // Raft's thread generator: OS-seeded in production, seeded by a simulation.
        attempt: rand::Rng::gen(&mut ThreadRng),
    };
    let start = IdempotentStart {
        key: claim.key,
        fingerprint: key.fingerprint,
        attempt: claim.attempt,
        ttl_ms: settings.ttl_ms,
        stale_after_ms: settings.in_flight_timeout_ms,
    };
    match writer.begin_idempotent(start).await? {
        IdempotencyBegun::Started => Ok(Begun::Run(claim)),
        IdempotencyBegun::Replay(stored) => Ok(Begun::Replay(stored)),
        IdempotencyBegun::InFlight => Err(BeginError::InFlight),
        IdempotencyBegun::Mismatch => Err(BeginError::Mismatch(key.kind)),
        IdempotencyBegun::Full => Err(BeginError::Full),
    }
}

/// Stores `status` and `body` as the key's answer when it is `final` (a decided answer small
/// enough to store), or releases the key. Failing to store is logged, not answered: the caller
/// already has its answer, and a retry simply runs again.
pub async fn finish(
    writer: &Writer,
    claim: KeyClaim,
    status: u16,
    body: &[u8],
    final_answer: bool,
) {
    let keep = final_answer
        && !(500..600).contains(&status)
        && status != 429
        && body.len() <= MAX_STORED_ANSWER_BYTES;
    let ended = if keep {
        let finish = IdempotentFinish {
            key: claim.key,
            attempt: claim.attempt,
            answer: StoredAnswer {
                status,
                body: body.to_vec(),
            },
        };
        writer.finish_idempotent(finish).await
    } else {
        writer.release_idempotent(claim.key, claim.attempt).await
    };
    match ended {
        Ok(IdempotencyEnded::Finished | IdempotencyEnded::Released) => {}
        Ok(other) => tracing::warn!(?other, "idempotency key not stored"),
        Err(e) => tracing::warn!(error = %e, "idempotency key not stored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> IdempotencySettings {
        IdempotencySettings::default()
    }

    const ANON_A: Scope = Scope {
        api_key: None,
        client_ip: Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1))),
    };
    const ANON_B: Scope = Scope {
        api_key: None,
        client_ip: Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2))),
    };

    #[test]
    fn keys_are_scoped_by_caller_and_fingerprinted_by_route_and_body() {
        let k = |scope: Scope, route, body: &[u8]| {
            idempotency_key(Some(b"k-1"), &settings(), &scope, route, body)
                .unwrap()
                .unwrap()
        };
        let a = k(ANON_A, Route::Settle, b"{}");
        assert_eq!(a, k(ANON_A, Route::Settle, b"{}"));
        assert_ne!(a.key, k(ANON_B, Route::Settle, b"{}").key);
        let keyed = Scope {
            api_key: Some("shop".into()),
            client_ip: ANON_A.client_ip,
        };
        assert_ne!(a.key, k(keyed, Route::Settle, b"{}").key);
        // Same key, other request: same record, other fingerprint (a conflict).
        let other = k(ANON_A, Route::Verify, b"{}");
        assert_eq!(a.key, other.key);
        assert_ne!(a.fingerprint, other.fingerprint);
        assert_ne!(a.fingerprint, k(ANON_A, Route::Settle, b"{ }").fingerprint);
    }

    #[test]
    fn malformed_keys_are_refused_before_anything_is_written() {
        let s = settings();
        let bad = |raw: &[u8]| idempotency_key(Some(raw), &s, &ANON_A, Route::Settle, b"{}");
        assert_eq!(
            bad(b""),
            Err(KeyError::BadIdempotencyKey {
                max: s.max_key_bytes
            })
        );
        assert!(bad(&vec![b'a'; s.max_key_bytes + 1]).is_err());
        assert!(bad(b"tab\there").is_err());
        assert!(bad(&[0xff, 0xfe]).is_err());
        assert!(bad(b"\"quoted\"").unwrap().is_some());
        assert_eq!(
            idempotency_key(None, &s, &ANON_A, Route::Settle, b"{}"),
            Ok(None)
        );
    }

    #[test]
    fn payment_identifiers_follow_the_extension_s_rules() {
        let ext = |id: serde_json::Value| serde_json::json!({"payment-identifier": {"info": {"required": false, "id": id}}});
        let key =
            |e: &serde_json::Value, route| payment_identifier(Some(e), &ANON_A, route, [7; 32]);
        let good = ext("pay_0123456789abcdef".into());
        let k = key(&good, Route::Settle).unwrap().unwrap();
        assert_eq!(k.kind, KeyKind::PaymentIdentifier);
        assert_eq!(k.fingerprint, [7; 32]);
        // Verify and settle of one payment share an id, not a record.
        assert_ne!(k.key, key(&good, Route::Verify).unwrap().unwrap().key);
        for bad in [
            serde_json::json!("short"),
            serde_json::json!("x".repeat(129)),
            serde_json::json!("has space in it!!"),
            serde_json::json!(12345678901234567u64),
        ] {
            assert_eq!(
                key(&ext(bad), Route::Settle),
                Err(KeyError::BadPaymentIdentifier)
            );
        }
        // Declared without an id (the server's declaration echoed): no key.
        let declared = serde_json::json!({"payment-identifier": {"info": {"required": true}}});
        assert_eq!(key(&declared, Route::Settle), Ok(None));
        assert_eq!(
            payment_identifier(None, &ANON_A, Route::Settle, [7; 32]),
            Ok(None)
        );
    }
}
