//! `x402ctl bench claims`: wires the command line to [`crate::bench::claims`] and prints the
//! report (one JSON object with `--json`, a readable summary otherwise).

use std::time::Duration;

use super::{ClaimsArgs, CtlError, Output};
use crate::admin::AdminClient;
use crate::bench::claims::{self, ClaimTemplate};
use crate::bench::{BenchConfig, BenchOutcome};
use crate::http::HttpConfig;

/// Transport settings for a run: the per-claim deadline, and a pool large enough that every
/// worker keeps its own kept-alive connection to every node instead of reconnecting.
pub(super) fn http_config(args: &ClaimsArgs) -> HttpConfig {
    let timeout = Duration::from_millis(args.request_timeout_ms.max(1));
    HttpConfig {
        timeout,
        connect_timeout: timeout.min(Duration::from_secs(1)),
        max_idle_per_host: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        ..HttpConfig::default()
    }
}

pub(super) async fn claims(
    nodes: Vec<AdminClient>,
    args: &ClaimsArgs,
    json: bool,
) -> Result<Output, CtlError> {
    let config = BenchConfig {
        concurrency: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        duration: args.duration,
        retry_pause: Duration::from_millis(args.retry_pause_ms),
    };
    let template = ClaimTemplate {
        chain_id: args.chain_id,
        asset: args.asset.clone(),
        ..ClaimTemplate::default()
    };
    let outcome = claims::run(nodes, &config, template).await?;
    let stdout = if json {
        // The JSON stays exactly the report's fields; error kinds go to stderr for the operator.
        if outcome.report.errors > 0 {
            eprint!("errors by kind:\n{}", render_failures(&outcome));
        }
        let mut s = serde_json::to_string(&outcome.report)?;
        s.push('\n');
        s
    } else {
        render("claims", &outcome)
    };
    Ok(Output {
        stdout,
        // A run in which nothing succeeded measured nothing.
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
                max_stall_ms: 250.0,
            },
            failures: vec![FailureSummary {
                kind: "connection",
                count: 3,
                example: "connection to http://c:3/admin/claims failed: refused".into(),
            }],
            concurrency: 8,
            targets: 3,
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
        let args = ClaimsArgs {
            concurrency: 300,
            duration: Duration::from_secs(1),
            chain_id: 1,
            asset: String::new(),
            request_timeout_ms: 2000,
            retry_pause_ms: 20,
        };
        let config = http_config(&args);
        assert_eq!(config.max_idle_per_host, 300);
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.connect_timeout, Duration::from_secs(1));
    }
}
