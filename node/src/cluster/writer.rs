//! Typed writes: one method per state-machine operation, each answering its own type.
//!
//! The log and the wire carry one `Op` and one `Response` for every operation; which answers an
//! operation can get is the answer contract of [`Op::answered_by`]: apply keeps it (asserted in
//! every test) and a forwarded write's answers are checked against it where they arrive
//! ([`super::proposer::Proposer::forward`]). So the methods here unwrap each answer without a
//! fallback: an answer outside the contract is a bug of this program, and stops the request
//! with a panic that names it (`unreachable!`), never a made-up reply.

use x402_raft_store::state::{
    Admission, AdmissionVerdict, BreakerAnswer, BreakerMove, ClaimId, ClaimOutcome, GuardedOp,
    IdempotencyBegun, IdempotencyEnded, IdempotentFinish, IdempotentStart, LeaseGrant, LeaseId,
    LeaseRequest, NonceClaim, Rejection, SettlementAnswer, SettlementFinish, SettlementRecord,
    SettlementReplace, SettlementStart, SignedSettlement, SuccessTaker,
};
use x402_raft_store::{Op, Response};

use super::batcher::Batcher;
use super::proposer::ProposeError;

/// Proposes typed operations through the node's group commit. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    batcher: Batcher,
}

/// An answer and the index of the log entry that committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written<T> {
    pub log_index: u64,
    pub answer: T,
}

/// Why a settlement step did not answer a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// The state machine refused the step; nothing changed.
    #[error("the state machine refused the settlement step: {0}")]
    Rejected(Rejection),
}

/// The answer to a guarded operation: the admission's verdict and, when it admitted, the
/// operation's own answer (`None` when limited: the operation was not applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guarded<T> {
    pub verdict: AdmissionVerdict,
    pub answer: Option<T>,
}

/// `ReplaceSettlement`'s answer when it is not a rejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// A fresh nonce for the settlement: sign its call at it.
    Allocated { signer: [u8; 20], nonce: u64 },
    /// Replaced already or finished: the record as it stands.
    Current(Box<SettlementRecord>),
}

impl Writer {
    pub fn new(batcher: Batcher) -> Self {
        Self { batcher }
    }

    async fn write(&self, op: Op) -> Result<Written<Response>, ProposeError> {
        let committed = self.batcher.propose(op).await?;
        Ok(Written {
            log_index: committed.log_index,
            answer: committed.response,
        })
    }

    /// `ClaimNonce`: claims an authorization for its requirements (I1).
    pub async fn claim(&self, claim: NonceClaim) -> Result<Written<ClaimOutcome>, ProposeError> {
        let written = self.write(Op::ClaimNonce(claim)).await?;
        Ok(Written {
            log_index: written.log_index,
            answer: claim_outcome(written.answer),
        })
    }

    /// `BeginSettlement`: claims an authorization and reserves a signer nonce for it.
    pub async fn begin_settlement(
        &self,
        start: SettlementStart,
    ) -> Result<SettlementAnswer, ProposeError> {
        Ok(begin_answer(
            self.write(Op::BeginSettlement(start)).await?.answer,
        ))
    }

    /// A claim with a rate-limit admission in the same log entry.
    pub async fn guarded_claim(
        &self,
        admission: Admission,
        claim: NonceClaim,
    ) -> Result<Written<Guarded<ClaimOutcome>>, ProposeError> {
        self.guarded(admission, GuardedOp::ClaimNonce(claim), claim_outcome)
            .await
    }

    /// A settlement's beginning with a rate-limit admission in the same log entry.
    pub async fn guarded_begin_settlement(
        &self,
        admission: Admission,
        start: SettlementStart,
    ) -> Result<Guarded<SettlementAnswer>, ProposeError> {
        let written = self
            .guarded(admission, GuardedOp::BeginSettlement(start), begin_answer)
            .await?;
        Ok(written.answer)
    }

    async fn guarded<T>(
        &self,
        admission: Admission,
        op: GuardedOp,
        inner: fn(Response) -> T,
    ) -> Result<Written<Guarded<T>>, ProposeError> {
        let written = self.write(Op::Guarded { admission, op }).await?;
        let answer = match written.answer {
            Response::Guarded { verdict, response } => Guarded {
                verdict,
                answer: response.map(|r| inner(*r)),
            },
            other => outside_contract("Guarded", &other),
        };
        Ok(Written {
            log_index: written.log_index,
            answer,
        })
    }

    /// `SyncSigner`: tells the state machine a signer's transaction count on chain; the
    /// signer's next nonce after, or why it was not registered.
    pub async fn sync_signer(
        &self,
        chain_id: u64,
        signer: [u8; 20],
        chain_nonce: u64,
    ) -> Result<Result<u64, Rejection>, ProposeError> {
        let op = Op::SyncSigner {
            chain_id,
            signer,
            chain_nonce,
        };
        Ok(match self.write(op).await?.answer {
            Response::SignerSynced { next_nonce } => Ok(next_nonce),
            Response::Settlement(SettlementAnswer::Rejected(why)) => Err(why),
            other => outside_contract("SyncSigner", &other),
        })
    }

    /// `RecordSigned`: commits the signed bytes before they are broadcast; the record after
    /// (with the bytes someone else recorded first, if someone did).
    pub async fn record_signed(
        &self,
        signed: SignedSettlement,
    ) -> Result<SettlementRecord, StepError> {
        record(self.write(Op::RecordSigned(signed)).await?.answer)
    }

    /// `FinishSettlement`: commits the chain's verdict; the finished record (whose outcome is
    /// the first one committed).
    pub async fn finish_settlement(
        &self,
        finish: SettlementFinish,
    ) -> Result<SettlementRecord, StepError> {
        let record = record(self.write(Op::FinishSettlement(finish)).await?.answer)?;
        assert!(
            !record.phase.is_unfinished(),
            "a finish left the settlement unfinished"
        );
        Ok(record)
    }

    /// `TakeSuccess`: gives a settled authorization's success to `taker` if nobody took it.
    pub async fn take_success(
        &self,
        id: ClaimId,
        taker: SuccessTaker,
    ) -> Result<SettlementRecord, StepError> {
        record(self.write(Op::TakeSuccess { id, taker }).await?.answer)
    }

    /// `ReplaceSettlement`: a fresh nonce for a settlement whose nonce another transaction used.
    pub async fn replace_settlement(
        &self,
        replace: SettlementReplace,
    ) -> Result<Replaced, StepError> {
        match self.write(Op::ReplaceSettlement(replace)).await?.answer {
            Response::Settlement(SettlementAnswer::Allocated { signer, nonce }) => {
                Ok(Replaced::Allocated { signer, nonce })
            }
            Response::Settlement(SettlementAnswer::Current(record)) => {
                Ok(Replaced::Current(record))
            }
            Response::Settlement(SettlementAnswer::Rejected(why)) => Err(StepError::Rejected(why)),
            other => outside_contract("ReplaceSettlement", &other),
        }
    }

    /// `TakeLease`: admissions of one rate key to spend locally (I4).
    pub async fn take_lease(&self, request: LeaseRequest) -> Result<LeaseGrant, ProposeError> {
        match self.write(Op::TakeLease(request)).await?.answer {
            Response::Lease(grant) => Ok(grant),
            other => outside_contract("TakeLease", &other),
        }
    }

    /// `ReturnLease`: gives back a lease's unspent admissions; how many were taken back.
    pub async fn return_lease(&self, id: LeaseId, unused: u32) -> Result<u32, ProposeError> {
        match self.write(Op::ReturnLease { id, unused }).await?.answer {
            Response::LeaseReturned { returned } => Ok(returned),
            other => outside_contract("ReturnLease", &other),
        }
    }

    /// `MoveBreaker`: moves an endpoint's circuit breaker (I5).
    pub async fn move_breaker(&self, change: BreakerMove) -> Result<BreakerAnswer, ProposeError> {
        match self.write(Op::MoveBreaker(change)).await?.answer {
            Response::Breaker(answer) => Ok(answer),
            other => outside_contract("MoveBreaker", &other),
        }
    }

    /// `BeginIdempotent`: claims an Idempotency-Key for one request.
    pub async fn begin_idempotent(
        &self,
        start: IdempotentStart,
    ) -> Result<IdempotencyBegun, ProposeError> {
        match self.write(Op::BeginIdempotent(start)).await?.answer {
            Response::IdempotencyBegun(begun) => Ok(begun),
            other => outside_contract("BeginIdempotent", &other),
        }
    }

    /// `FinishIdempotent`: stores a begun request's answer.
    pub async fn finish_idempotent(
        &self,
        finish: IdempotentFinish,
    ) -> Result<IdempotencyEnded, ProposeError> {
        self.end_idempotent(Op::FinishIdempotent(finish)).await
    }

    /// `ReleaseIdempotent`: forgets a begun request that ended without an answer to store.
    pub async fn release_idempotent(
        &self,
        key: [u8; 32],
        attempt: [u8; 16],
    ) -> Result<IdempotencyEnded, ProposeError> {
        self.end_idempotent(Op::ReleaseIdempotent { key, attempt })
            .await
    }

    async fn end_idempotent(&self, op: Op) -> Result<IdempotencyEnded, ProposeError> {
        match self.write(op).await?.answer {
            Response::IdempotencyEnded(ended) => Ok(ended),
            other => outside_contract("FinishIdempotent/ReleaseIdempotent", &other),
        }
    }
}

fn claim_outcome(response: Response) -> ClaimOutcome {
    match response {
        Response::Claim(outcome) => outcome,
        other => outside_contract("ClaimNonce", &other),
    }
}

fn begin_answer(response: Response) -> SettlementAnswer {
    match response {
        Response::Settlement(answer) => answer,
        other => outside_contract("BeginSettlement", &other),
    }
}

fn record(response: Response) -> Result<SettlementRecord, StepError> {
    match response {
        Response::Settlement(SettlementAnswer::Current(record)) => Ok(*record),
        Response::Settlement(SettlementAnswer::Rejected(why)) => Err(StepError::Rejected(why)),
        other => outside_contract("a settlement step", &other),
    }
}

/// An answer the contract of [`Op::answered_by`] rules out: a bug of this program.
#[track_caller]
fn outside_contract(op: &str, answer: &Response) -> ! {
    unreachable!("the state machine answered {op} with {answer:?}, outside the answer contract")
}
