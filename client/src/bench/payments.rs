//! `bench verify` and `bench settle`: load on the x402 endpoints with real signed payments.
//!
//! Signing costs about 100 µs of CPU per payment, as much as the node spends on a request, so
//! it must not happen while the clock runs: [`PaymentPool::sign`] signs every payment of the run
//! beforehand, on all cores, each with its own random nonce. All payments of a pool share the
//! payer, the terms and the signing time, so only the nonce and the signature differ: the pool
//! keeps those 97 bytes per payment and one encoded body, and an operation writes its nonce and
//! signature into a copy of that body (a memcpy, no JSON encoding). Each operation takes the next
//! payment, so no payment is sent twice, even after a failure; when the pool runs dry the
//! workers stop (see [`super::run`]).
//!
//! Only `isValid: true` (verify) or `success: true` (settle) counts as an operation; any other
//! answer is an error counted by its reason code.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use alloy::signers::local::PrivateKeySigner;
use bytes::Bytes;

use super::{BenchConfig, BenchError, BenchOutcome, Failure};
use crate::error::ClientError;
use crate::facilitator::FacilitatorClient;
use crate::x402::eip3009::SIGNATURE_LEN;
use crate::x402::payment::{self, random_nonce, PaymentBuilder, PaymentError};
use crate::x402::{ReasonCode, SettleResponse, VerifyResponse};

/// Which endpoint a run loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /verify`: counts `isValid: true`.
    Verify,
    /// `POST /settle`: counts `success: true`.
    Settle,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Verify => "verify",
            Endpoint::Settle => "settle",
        }
    }
}

/// The nonce and signature of one pre-signed payment.
struct Signed {
    nonce: [u8; 32],
    signature: [u8; SIGNATURE_LEN],
}

/// Placeholders the template body carries where each payment's own values go: 64 `1`s and 130
/// `2`s, which no address (40 digits) holds; a body where either occurs elsewhere (an absurd
/// amount or URL) is refused by [`find_once`] rather than mangled.
const NONCE_PLACEHOLDER: [u8; 32] = [0x11; 32];
const SIGNATURE_PLACEHOLDER: [u8; SIGNATURE_LEN] = [0x22; SIGNATURE_LEN];

/// Payments signed before a run, handed out once each.
pub struct PaymentPool {
    /// The encoded body of a payment with the placeholders.
    template: Vec<u8>,
    /// Where the hex digits of the nonce and of the signature start in `template`.
    nonce_at: usize,
    signature_at: usize,
    signed: Vec<Signed>,
    next: AtomicUsize,
    valid_before: u64,
}

impl fmt::Debug for PaymentPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentPool")
            .field("len", &self.len())
            .field("taken", &self.taken())
            .field("valid_before", &self.valid_before)
            .finish_non_exhaustive()
    }
}

impl PaymentPool {
    /// Signs `count` payments of `payer` for `builder`'s terms, all at time `now` (Unix
    /// seconds) with random nonces, spread over every core. Blocks until done.
    pub fn sign(
        builder: &PaymentBuilder,
        payer: &PrivateKeySigner,
        count: usize,
        now: u64,
    ) -> Result<PaymentPool, PaymentError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .clamp(1, count.max(1));
        let per_thread = count.div_ceil(threads);
        let chunks: Vec<Result<Vec<Signed>, PaymentError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let n = per_thread.min(count.saturating_sub(t * per_thread));
                    scope.spawn(move || sign_chunk(builder, payer, n, now))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut signed = Vec::with_capacity(count);
        for chunk in chunks {
            signed.extend(chunk?);
        }
        let placeholder = builder.assemble(
            &builder.authorization(payer.address(), now, NONCE_PLACEHOLDER),
            &SIGNATURE_PLACEHOLDER,
        );
        let template = payment::encode(&placeholder)?;
        let nonce_at = find_once(&template, &NONCE_PLACEHOLDER)?;
        let signature_at = find_once(&template, &SIGNATURE_PLACEHOLDER)?;
        Ok(PaymentPool {
            template,
            nonce_at,
            signature_at,
            signed,
            next: AtomicUsize::new(0),
            valid_before: builder.validity(now).1,
        })
    }

    /// How many payments the pool was signed with.
    pub fn len(&self) -> usize {
        self.signed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signed.is_empty()
    }

    /// How many have been handed out.
    pub fn taken(&self) -> usize {
        self.next.load(Ordering::Relaxed).min(self.len())
    }

    /// `validBefore` of every payment (Unix seconds): a node refuses them from 6 s before.
    pub fn valid_before(&self) -> u64 {
        self.valid_before
    }

    /// The encoded body of the next payment, `None` once all are taken.
    pub fn take(&self) -> Option<Bytes> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.body(i)
    }

    /// The encoded body of payment `i`.
    pub fn body(&self, i: usize) -> Option<Bytes> {
        let signed = self.signed.get(i)?;
        let mut body = self.template.clone();
        write_hex(&mut body, self.nonce_at, &signed.nonce);
        write_hex(&mut body, self.signature_at, &signed.signature);
        Some(Bytes::from(body))
    }
}

fn sign_chunk(
    builder: &PaymentBuilder,
    payer: &PrivateKeySigner,
    count: usize,
    now: u64,
) -> Result<Vec<Signed>, PaymentError> {
    let mut rng = rand::thread_rng();
    let from = payer.address();
    (0..count)
        .map(|_| {
            let nonce = random_nonce(&mut rng);
            let signature = builder.signature(payer, &builder.authorization(from, now, nonce))?;
            Ok(Signed { nonce, signature })
        })
        .collect()
}

/// Where the lowercase hex of `bytes` starts in `body`; it must occur exactly once.
fn find_once(body: &[u8], bytes: &[u8]) -> Result<usize, PaymentError> {
    let needle = hex::encode(bytes).into_bytes();
    let mut found = body
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle.as_slice())
        .map(|(at, _)| at);
    match (found.next(), found.next()) {
        (Some(at), None) => Ok(at),
        _ => Err(PaymentError::Encode(
            "a placeholder of the body template is not unique".into(),
        )),
    }
}

fn write_hex(body: &mut [u8], at: usize, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        body[at + 2 * i] = DIGITS[usize::from(b >> 4)];
        body[at + 2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Why one payment did not count as an operation.
#[derive(Debug, thiserror::Error)]
pub enum PaymentFailure {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `/verify` answered `isValid: false`.
    #[error("verify answered isValid false: {}", .0.explain())]
    Invalid(VerifyResponse),
    /// `/settle` answered `success: false` (`settlement_pending` included: not settled yet).
    #[error("settle answered success false: {}{}", .0.explain(), transaction(&.0.transaction))]
    NotSettled(SettleResponse),
}

fn transaction(hash: &str) -> String {
    if hash.is_empty() {
        String::new()
    } else {
        format!(" (transaction {hash})")
    }
}

impl Failure for PaymentFailure {
    /// The reason code itself (`invalid_exact_evm_signature`, `settlement_pending`, ...), or
    /// `invalid` / `not_settled` without a known one.
    fn kind(&self) -> &'static str {
        match self {
            Self::Client(e) => e.kind(),
            Self::Invalid(r) => r
                .invalid_reason
                .as_ref()
                .and_then(ReasonCode::known_str)
                .unwrap_or("invalid"),
            Self::NotSettled(r) => r
                .error_reason
                .as_ref()
                .and_then(ReasonCode::known_str)
                .unwrap_or("not_settled"),
        }
    }

    fn not_sent(&self) -> bool {
        matches!(self, Self::Client(e) if e.is_not_sent())
    }
}

/// Sends one payment; `Ok` only for a 200 that says valid (verify) or settled (settle).
pub async fn send_once(
    node: &FacilitatorClient,
    endpoint: Endpoint,
    body: Bytes,
) -> Result<(), PaymentFailure> {
    match endpoint {
        Endpoint::Verify => {
            let answer = node.verify_raw(body).await?;
            if answer.is_valid {
                Ok(())
            } else {
                Err(PaymentFailure::Invalid(answer))
            }
        }
        Endpoint::Settle => {
            let answer = node.settle_raw(body).await?;
            if answer.success {
                Ok(())
            } else {
                Err(PaymentFailure::NotSettled(answer))
            }
        }
    }
}

/// Runs `bench verify` or `bench settle` against `nodes` (which should share one
/// [`crate::http::HttpClient`]), one payment of `pool` per operation.
pub async fn run(
    nodes: Vec<FacilitatorClient>,
    config: &BenchConfig,
    pool: Arc<PaymentPool>,
    endpoint: Endpoint,
) -> Result<BenchOutcome, BenchError> {
    let nodes: Vec<Arc<FacilitatorClient>> = nodes.into_iter().map(Arc::new).collect();
    super::run(nodes, config, move |node: &Arc<FacilitatorClient>| {
        let body = pool.take()?;
        let node = Arc::clone(node);
        Some(async move { send_once(&node, endpoint, body).await })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::eip3009;
    use crate::x402::payment::{unix_now, PaymentTerms};
    use crate::x402::{decode_request, Address, ChainId, U256};
    use std::collections::HashSet;

    fn builder(version: u8) -> PaymentBuilder {
        let asset = Address::parse("0x5FbDB2315678afecb367f032d93F642f64180aa3").unwrap();
        let pay_to = Address::parse("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC").unwrap();
        let amount = U256::from_u64(10_000);
        let terms = match version {
            1 => PaymentTerms::v1("base-sepolia", ChainId(84532), asset, pay_to, amount),
            _ => PaymentTerms::v2(ChainId(31337), asset, pay_to, amount),
        };
        PaymentBuilder::new(terms).unwrap()
    }

    #[test]
    fn pooled_bodies_are_the_builders_and_recover_to_the_payer() {
        for version in [1, 2] {
            let builder = builder(version);
            let payer = PrivateKeySigner::random();
            let now = unix_now();
            let pool = PaymentPool::sign(&builder, &payer, 37, now).unwrap();
            assert_eq!(pool.len(), 37);
            assert_eq!(pool.valid_before(), now + 60);
            let mut nonces = HashSet::new();
            for i in 0..pool.len() {
                let body = pool.body(i).unwrap();
                let request = decode_request(&body).unwrap();
                assert_eq!(request.x402_version(), version);
                let payload = request.payload();
                let typed = eip3009::typed_authorization(&payload.authorization);
                let signer =
                    eip3009::recover_signer(&typed, builder.domain(), payload.signature.as_bytes())
                        .unwrap();
                assert_eq!(signer, payer.address());
                // Byte for byte what the builder itself encodes for that nonce and signature.
                let direct = builder.assemble(&typed, payload.signature.as_bytes());
                assert_eq!(payment::encode(&direct).unwrap(), body.to_vec());
                assert!(nonces.insert(*payload.authorization.nonce.as_bytes()));
            }
            assert!(pool.body(37).is_none());
        }
    }

    #[test]
    fn take_hands_out_each_payment_once() {
        let pool =
            PaymentPool::sign(&builder(2), &PrivateKeySigner::random(), 5, unix_now()).unwrap();
        let taken: Vec<Bytes> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(taken.len(), 5);
        assert_eq!(pool.taken(), 5);
        assert!(pool.take().is_none());
        assert_eq!(pool.taken(), 5);
        let distinct: HashSet<&Bytes> = taken.iter().collect();
        assert_eq!(distinct.len(), 5);
    }

    #[test]
    fn an_empty_pool_is_fine() {
        let pool =
            PaymentPool::sign(&builder(2), &PrivateKeySigner::random(), 0, unix_now()).unwrap();
        assert!(pool.is_empty());
        assert!(pool.take().is_none());
    }

    #[test]
    fn failure_kinds_are_reason_codes() {
        let invalid = PaymentFailure::Invalid(
            VerifyResponse::invalid(ReasonCode::InvalidExactEvmSignature, None).with_message("bad"),
        );
        assert_eq!(invalid.kind(), "invalid_exact_evm_signature");
        assert_eq!(
            invalid.to_string(),
            "verify answered isValid false: invalid_exact_evm_signature: bad"
        );
        let odd = PaymentFailure::Invalid(VerifyResponse::invalid(
            ReasonCode::Other("made_up".into()),
            None,
        ));
        assert_eq!(odd.kind(), "invalid");
        assert!(odd.to_string().contains("made_up"));
        let pending =
            PaymentFailure::NotSettled(SettleResponse::pending("0xabc", "eip155:1", "0xpayer"));
        assert_eq!(pending.kind(), "settlement_pending");
        assert_eq!(
            pending.to_string(),
            "settle answered success false: settlement_pending (transaction 0xabc)"
        );
        let mut bare = SettleResponse::failure(ReasonCode::InsufficientFunds, "eip155:1", None);
        bare.error_reason = None;
        assert_eq!(PaymentFailure::NotSettled(bare).kind(), "not_settled");
    }
}
