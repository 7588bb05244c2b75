//! `x402ctl pay`: signs one payment, POSTs it to `/verify` and, when valid and not
//! `--verify-only`, the same body to `/settle`, each on the first node that answers.

use alloy::signers::local::PrivateKeySigner;
use bytes::Bytes;
use serde::Serialize;

use super::{json_line, on_first_reachable, payment, CtlError, Output, PayArgs};
use crate::facilitator::FacilitatorClient;
use crate::x402::payment::{encode, DEFAULT_MAX_TIMEOUT_SECONDS};
use crate::x402::{ReasonCode, SettleResponse, VerifyResponse};

/// `verify_nodes` and `settle_nodes` are the same nodes with the deadline of each call.
pub(super) async fn run(
    verify_nodes: Vec<FacilitatorClient>,
    settle_nodes: Vec<FacilitatorClient>,
    args: &PayArgs,
    payer: &PrivateKeySigner,
    json: bool,
) -> Result<Output, CtlError> {
    let builder = payment::builder(&args.requirements, DEFAULT_MAX_TIMEOUT_SECONDS)?;
    let request = builder.sign_now(payer, &mut rand::thread_rng())?;
    let body = Bytes::from(encode(&request)?);
    let verify = on_first_reachable(&verify_nodes, |node| {
        let body = body.clone();
        async move { node.verify_raw(body).await }
    })
    .await?;
    let settle = if verify.is_valid && !args.verify_only {
        Some(
            on_first_reachable(&settle_nodes, |node| {
                let body = body.clone();
                async move { node.settle_raw(body).await }
            })
            .await?,
        )
    } else {
        None
    };
    let report = PayReport {
        payer: payer.address().to_checksum(None),
        nonce: request.payload().authorization.nonce.to_string(),
        verify,
        settle,
    };
    let stdout = if json {
        json_line(&report)?
    } else {
        render(&report)
    };
    Ok(Output {
        stdout,
        failed: !report.succeeded(),
    })
}

/// What `pay --json` prints: the payment's identity and the nodes' whole answers.
#[derive(Debug, Serialize)]
struct PayReport {
    payer: String,
    nonce: String,
    verify: VerifyResponse,
    /// Absent with `--verify-only` or when verify said invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    settle: Option<SettleResponse>,
}

impl PayReport {
    /// Valid, and settled unless only verified.
    fn succeeded(&self) -> bool {
        self.verify.is_valid && self.settle.as_ref().is_none_or(|s| s.success)
    }
}

fn render(report: &PayReport) -> String {
    let mut out = if report.verify.is_valid {
        format!("valid: payer {}, nonce {}\n", report.payer, report.nonce)
    } else {
        format!(
            "invalid: {} (payer {}, nonce {})\n",
            report.verify.explain(),
            report.payer,
            report.nonce
        )
    };
    match &report.settle {
        None => {}
        Some(s) if s.success => out.push_str(&format!("settled {}\n", s.transaction)),
        Some(s) if s.error_reason == Some(ReasonCode::SettlementPending) => out.push_str(&format!(
            "settlement pending: transaction {} was broadcast; its outcome is not known yet\n",
            or_none(&s.transaction)
        )),
        Some(s) => {
            out.push_str(&format!("not settled: {}", s.explain()));
            if !s.transaction.is_empty() {
                out.push_str(&format!(" (transaction {})", s.transaction));
            }
            out.push('\n');
        }
    }
    out
}

fn or_none(text: &str) -> &str {
    if text.is_empty() {
        "(none given)"
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    const TX: &str = "0x681faea569bab5eb8b4a1d248949fbae9d04f468233b1cb8ddf2b5581b88e59f";

    fn report(verify: VerifyResponse, settle: Option<SettleResponse>) -> PayReport {
        PayReport {
            payer: PAYER.into(),
            nonce: "0x01".into(),
            verify,
            settle,
        }
    }

    #[test]
    fn settled_prints_the_hash() {
        let r = report(
            VerifyResponse::valid(PAYER),
            Some(SettleResponse::success(TX, "eip155:31337", PAYER)),
        );
        assert!(r.succeeded());
        assert_eq!(
            render(&r),
            format!("valid: payer {PAYER}, nonce 0x01\nsettled {TX}\n")
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["verify"]["isValid"], true);
        assert_eq!(json["settle"]["transaction"], TX);
        assert_eq!(json["payer"], PAYER);
    }

    #[test]
    fn verify_only_and_invalid() {
        let r = report(VerifyResponse::valid(PAYER), None);
        assert!(r.succeeded());
        assert_eq!(render(&r), format!("valid: payer {PAYER}, nonce 0x01\n"));
        assert!(serde_json::to_value(&r).unwrap().get("settle").is_none());

        let invalid = VerifyResponse::invalid(ReasonCode::InvalidExactEvmSignature, None)
            .with_message("wrong domain");
        let r = report(invalid, None);
        assert!(!r.succeeded());
        assert_eq!(
            render(&r),
            format!(
                "invalid: invalid_exact_evm_signature: wrong domain (payer {PAYER}, nonce 0x01)\n"
            )
        );
    }

    #[test]
    fn pending_and_failed_settlements_fail() {
        let r = report(
            VerifyResponse::valid(PAYER),
            Some(SettleResponse::pending(TX, "eip155:31337", PAYER)),
        );
        assert!(!r.succeeded());
        assert!(
            render(&r).ends_with(&format!(
                "settlement pending: transaction {TX} was broadcast; its outcome is not known yet\n"
            )),
            "{}",
            render(&r)
        );
        let failed = SettleResponse::failure(
            ReasonCode::InvalidExactEvmInsufficientBalance,
            "eip155:31337",
            None,
        );
        let r = report(VerifyResponse::valid(PAYER), Some(failed));
        assert!(!r.succeeded());
        assert!(render(&r).ends_with("not settled: invalid_exact_evm_insufficient_balance\n"));
    }
}
