//! `x402ctl bench claims|verify|settle`: wires the command line to [`crate::bench`] and prints
//! the report, the same for every operation (one JSON object with `--json`, a readable summary
//! otherwise; errors by kind on stderr with `--json`).

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;

use super::args::{PaymentBenchArgs, RunArgs};
use super::{json_line, payment, ClaimsArgs, CtlError, Output};
use crate::admin::AdminClient;
use crate::bench::claims::{self, ClaimTemplate};
use crate::bench::payments::{self, Endpoint, PaymentPool};
use crate::bench::{BenchConfig, BenchOutcome};
use crate::facilitator::FacilitatorClient;
use crate::http::HttpConfig;
use crate::x402::payment::unix_now;

/// Deadline of one claim or verify unless `--request-timeout-ms` says otherwise.
pub(super) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one settle: it waits for the transaction's receipt.
pub(super) const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default pool of pre-signed payments, per second of `--duration`. A verify is a replicated
/// claim plus a signature recovery, so it cannot beat `bench claims` (14,800/s for three nodes
/// on two cores, README); settling is bounded by the chain. Signing takes about 190 µs of one
/// core per payment there, so a larger pool would mostly lengthen the wait before the run.
const VERIFY_PAYMENTS_PER_SEC: u64 = 15_000;
const SETTLE_PAYMENTS_PER_SEC: u64 = 2_000;
/// `maxTimeoutSeconds` of bench payments beyond the run's duration, unless told otherwise: room
/// for signing them and for the node's 6 s margin.
const BENCH_VALIDITY_MARGIN_SECS: u64 = 600;
/// A node refuses an authorization this close to its `validBefore`.
const VALID_BEFORE_BUFFER_SECS: u64 = 6;

/// The per-operation deadline of a `bench` command.
pub(super) fn request_timeout(run: &RunArgs, endpoint: Option<Endpoint>) -> Duration {
    run.request_timeout(match endpoint {
        Some(Endpoint::Settle) => DEFAULT_SETTLE_TIMEOUT,
        _ => DEFAULT_REQUEST_TIMEOUT,
    })
}

/// Transport settings for a run: the per-operation deadline, and a pool large enough that every
/// worker keeps its own kept-alive connection to every node instead of reconnecting (none at
/// all with `--new-connection-per-request`).
pub(super) fn http_config(run: &RunArgs, timeout: Duration) -> HttpConfig {
    let pooled = usize::try_from(run.concurrency).unwrap_or(usize::MAX);
    HttpConfig {
        timeout,
        connect_timeout: timeout.min(Duration::from_secs(1)),
        max_idle_per_host: if run.new_connection_per_request {
            0
        } else {
            pooled
        },
        ..HttpConfig::default()
    }
}

fn bench_config(run: &RunArgs) -> BenchConfig {
    BenchConfig {
        concurrency: usize::try_from(run.concurrency).unwrap_or(usize::MAX),
        duration: run.duration,
        retry_pause: Duration::from_millis(run.retry_pause_ms),
    }
}

pub(super) async fn claims(
    nodes: Vec<AdminClient>,
    args: &ClaimsArgs,
    json: bool,
) -> Result<Output, CtlError> {
    let template = ClaimTemplate {
        chain_id: args.chain_id,
        asset: args.asset.clone(),
        ..ClaimTemplate::default()
    };
    let outcome = claims::run(nodes, &bench_config(&args.run), template).await?;
    report("claims", &outcome, json)
}

/// `bench supported`: GET /supported; every 200 with a parsable body counts.
pub(super) async fn supported(
    nodes: Vec<FacilitatorClient>,
    args: &super::SupportedBenchArgs,
    json: bool,
) -> Result<Output, CtlError> {
    let outcome = crate::bench::run(nodes, &bench_config(&args.run), |node| {
        let node = node.clone();
        Some(async move { node.supported().await.map(|_| ()) })
    })
    .await?;
    report("supported", &outcome, json)
}

/// `bench verify` / `bench settle`: signs the pool, then runs. `payer_env` is the value of
/// `X402_PAYER_KEY`.
pub(super) async fn payments(
    nodes: Vec<FacilitatorClient>,
    args: &PaymentBenchArgs,
    endpoint: Endpoint,
    payer_env: Option<OsString>,
    json: bool,
) -> Result<Output, CtlError> {
    let command = format!("bench {}", endpoint.name());
    let payer = match endpoint {
        Endpoint::Settle => payment::required_payer_key(&args.payer, payer_env, &command)?,
        Endpoint::Verify => match payment::payer_key(&args.payer, payer_env)? {
            Some(payer) => payer,
            None => {
                let payer = PrivateKeySigner::random();
                eprintln!(
                    "{command}: no payer key given: a random payer ({}) signs; verify without \
                     on-chain checks needs no funds",
                    payer.address().to_checksum(None)
                );
                payer
            }
        },
    };
    let run_secs = whole_secs(args.run.duration);
    let builder = payment::builder(
        &args.requirements,
        run_secs.saturating_add(BENCH_VALIDITY_MARGIN_SECS),
    )?;
    let count = pool_size(args, endpoint);

    let started = Instant::now();
    let now = unix_now();
    let pool = tokio::task::spawn_blocking(move || PaymentPool::sign(&builder, &payer, count, now))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    eprintln!(
        "{command}: signed {} payments in {:.2} s",
        pool.len(),
        started.elapsed().as_secs_f64()
    );
    let run_ends = unix_now().saturating_add(run_secs);
    if pool.valid_before() < run_ends.saturating_add(VALID_BEFORE_BUFFER_SECS) {
        return Err(CtlError::Usage(format!(
            "the pre-signed payments expire (validBefore {}) before the run would end ({run_ends}); \
             raise --max-timeout-seconds",
            pool.valid_before()
        )));
    }

    let pool = Arc::new(pool);
    let outcome =
        payments::run(nodes, &bench_config(&args.run), Arc::clone(&pool), endpoint).await?;
    if outcome.ran_out {
        eprintln!(
            "{command}: all {} pre-signed payments were used after {:.2} s; pass a larger \
             --payments to run for the whole --duration",
            pool.len(),
            outcome.report.seconds
        );
    }
    report(endpoint.name(), &outcome, json)
}

/// `--payments`, or the default for the endpoint and duration; at least one per worker.
fn pool_size(args: &PaymentBenchArgs, endpoint: Endpoint) -> usize {
    let per_sec = match endpoint {
        Endpoint::Verify => VERIFY_PAYMENTS_PER_SEC,
        Endpoint::Settle => SETTLE_PAYMENTS_PER_SEC,
    };
    let count = args.payments.unwrap_or_else(|| {
        let millis = u64::try_from(args.run.duration.as_millis()).unwrap_or(u64::MAX);
        per_sec
            .saturating_mul(millis)
            .div_ceil(1000)
            .max(u64::from(args.run.concurrency))
    });
    usize::try_from(count).unwrap_or(usize::MAX)
}

/// A duration in whole seconds, rounded up.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The output of every `bench` command; a run in which nothing succeeded measured nothing, and
/// fails.
fn report(name: &str, outcome: &BenchOutcome, json: bool) -> Result<Output, CtlError> {
    let stdout = if json {
        // The JSON stays exactly the report's fields; error kinds go to stderr for the operator.
        if outcome.report.errors > 0 {
            eprint!("errors by kind:\n{}", render_failures(outcome));
        }
        json_line(&outcome.report)?
    } else {
        render(name, outcome)
    };
    Ok(Output {
        stdout,
        failed: outcome.report.ops == 0,
    })
}

fn render(name: &str, outcome: &BenchOutcome) -> String {
    let r = &outcome.report;
    let mut out = format!(
        "bench {name}: {} node(s), {} worker(s), {:.2} s\n\
         ops        {} ({:.1}/s)\n\
         latency    p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n\
         errors     {}\n\
         max stall  {:.1} ms\n",
        outcome.targets,
        outcome.concurrency,
        r.seconds,
        r.ops,
        r.ops_per_sec,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.errors,
        r.max_stall_ms,
    );
    if r.failovers > 0 {
        out.push_str(&format!(
            "failovers  {} (no connection to a node: sent to the next one)\n",
            r.failovers
        ));
    }
    out.push_str(&render_failures(outcome));
    out
}

fn render_failures(outcome: &BenchOutcome) -> String {
    outcome
        .failures
        .iter()
        .map(|f| format!("  {} x {} (e.g. {})\n", f.count, f.kind, f.example))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchReport, FailureSummary};

    #[test]
    fn summary_is_readable() {
        let outcome = BenchOutcome {
            report: BenchReport {
                ops: 1000,
                seconds: 2.0,
                ops_per_sec: 500.0,
                p50_ms: 1.5,
                p99_ms: 9.25,
                max_ms: 20.0,
                errors: 3,
                failovers: 0,
                max_stall_ms: 250.0,
            },
            failures: vec![FailureSummary {
                kind: "connection",
                count: 3,
                example: "connection to http://c:3/admin/claims failed: refused".into(),
            }],
            concurrency: 8,
            targets: 3,
            ran_out: false,
        };
        assert_eq!(
            render("claims", &outcome),
            "bench claims: 3 node(s), 8 worker(s), 2.00 s\n\
             ops        1000 (500.0/s)\n\
             latency    p50 1.500 ms  p99 9.250 ms  max 20.000 ms\n\
             errors     3\n\
             max stall  250.0 ms\n  \
             3 x connection (e.g. connection to http://c:3/admin/claims failed: refused)\n"
        );
    }

    #[test]
    fn pool_fits_the_workers() {
        let run = RunArgs {
            concurrency: 300,
            duration: Duration::from_secs(1),
            request_timeout_ms: None,
            retry_pause_ms: 20,
            new_connection_per_request: false,
        };
        let config = http_config(&run, request_timeout(&run, None));
        assert_eq!(config.max_idle_per_host, 300);
        let fresh = RunArgs {
            new_connection_per_request: true,
            ..run.clone()
        };
        assert_eq!(
            http_config(&fresh, Duration::from_secs(1)).max_idle_per_host,
            0
        );
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.connect_timeout, Duration::from_secs(1));
        assert_eq!(
            request_timeout(&run, Some(Endpoint::Settle)),
            DEFAULT_SETTLE_TIMEOUT
        );
        let run = RunArgs {
            request_timeout_ms: Some(500),
            ..run
        };
        assert_eq!(
            request_timeout(&run, Some(Endpoint::Settle)),
            Duration::from_millis(500)
        );
    }

    fn bench_args(duration: Duration, payments: Option<u64>) -> PaymentBenchArgs {
        use crate::ctl::args::{PayerArgs, RequirementArgs};
        use crate::x402::{Address, U256};
        PaymentBenchArgs {
            run: RunArgs {
                concurrency: 64,
                duration,
                request_timeout_ms: None,
                retry_pause_ms: 20,
                new_connection_per_request: false,
            },
            requirements: RequirementArgs {
                network: "eip155:31337".into(),
                asset: Address::from_bytes([1; 20]),
                pay_to: Address::from_bytes([2; 20]),
                amount: U256::from_u64(1),
                token_name: "USD Coin".into(),
                token_version: "2".into(),
                x402_version: 2,
                chain_id: None,
                resource: "http://r".into(),
                max_timeout_seconds: None,
            },
            payer: PayerArgs {
                payer_key_file: None,
            },
            payments,
        }
    }

    #[test]
    fn pool_size_follows_the_duration() {
        let ten = bench_args(Duration::from_secs(10), None);
        assert_eq!(pool_size(&ten, Endpoint::Verify), 150_000);
        assert_eq!(pool_size(&ten, Endpoint::Settle), 20_000);
        let short = bench_args(Duration::from_millis(1), None);
        assert_eq!(
            pool_size(&short, Endpoint::Verify),
            64,
            "one per worker at least"
        );
        let fixed = bench_args(Duration::from_secs(10), Some(7));
        assert_eq!(pool_size(&fixed, Endpoint::Verify), 7);
        assert_eq!(whole_secs(Duration::from_millis(300)), 1);
        assert_eq!(whole_secs(Duration::from_secs(10)), 10);
        // Bench payments outlive the run: --duration + 600 s unless told otherwise.
        let b = payment::builder(&ten.requirements, whole_secs(ten.run.duration) + 600).unwrap();
        assert_eq!(b.terms().max_timeout_seconds, 610);
        assert_eq!(b.validity(10_000), (10_000 - 600, 10_610));
    }
}
