//! x402ctl, the operator tool: its command line ([`args`]) and the commands themselves. The binary
//! only parses and calls [`run`]; living in the library lets tests drive the commands directly.
//!
//! Commands build their whole output as a string ([`Output`]) and [`run`] prints it, so every
//! rendering is a pure function of what the nodes answered.

mod api_key;
pub mod args;
mod bench;
mod health;
mod leader;
mod members;
mod pay;
mod payment;
mod snapshot;
mod status;
mod tls;

use std::future::Future;
use std::process::ExitCode;

use tokio::task::JoinSet;
use x402_tls::Roots;

pub use args::{
    ApiKeyCommand, BenchCommand, ClaimsArgs, Cli, ClusterCommand, Command, LeaderCommand,
    MemberArg, MembersCommand, PayArgs, PayerArgs, PaymentBenchArgs, RequirementArgs, RunArgs,
    SupportedBenchArgs, TlsCommand, Token, ENV_PAYER_KEY,
};

use crate::admin::AdminClient;
use crate::bench::payments::Endpoint;
use crate::bench::BenchError;
use crate::error::ClientError;
use crate::facilitator::FacilitatorClient;
use crate::http::{HttpClient, HttpConfig};
use crate::wire::{UnreachableNode, ENV_NODES};
use crate::x402::payment::PaymentError;

/// Why a command could not do its job at all (partial failures are part of its output instead).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("no nodes: pass --nodes or set {ENV_NODES}")]
    NoNodes,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no node could be reached:{}", list_unreachable(.0))]
    NoneReachable(Vec<UnreachableNode>),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("cannot encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The payer's key is missing or unusable; the message never quotes it.
    #[error("{0}")]
    PayerKey(String),
    /// Flags that cannot work together.
    #[error("{0}")]
    Usage(String),
}

fn list_unreachable(nodes: &[UnreachableNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("\n  {}: {}", n.url, n.error))
        .collect()
}

/// What a command prints on stdout, and whether it failed.
#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub failed: bool,
}

impl Output {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            failed: false,
        }
    }
}

/// `value` as one line of JSON: what every command prints under `--json`.
fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, CtlError> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    Ok(line)
}

/// Runs the parsed command line and prints its output; the exit code says whether it succeeded.
pub async fn run(cli: Cli) -> Result<ExitCode, CtlError> {
    let output = execute(cli).await?;
    print!("{}", output.stdout);
    Ok(if output.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the parsed command line and returns what it would print.
pub async fn execute(cli: Cli) -> Result<Output, CtlError> {
    let operator = HttpConfig {
        timeout: cli.timeout,
        connect_timeout: cli.timeout.min(HttpConfig::default().connect_timeout),
        ..HttpConfig::default()
    };
    match &cli.command {
        Command::Status => status::run(clients(&cli, &operator)?, cli.json).await,
        Command::Init { members } | Command::Cluster(ClusterCommand::Init { members }) => {
            members::init(clients(&cli, &operator)?, members, cli.json).await
        }
        Command::Members(MembersCommand::Replace { old, url, id }) => {
            let nodes = clients(&cli, &operator)?;
            let new_node = client_of(&cli, &operator, url)?;
            members::replace(nodes, new_node, *old, url, *id, cli.json).await
        }
        Command::Members(cmd) => members::change(clients(&cli, &operator)?, cmd, cli.json).await,
        Command::Health => health::health(clients(&cli, &operator)?, cli.json).await,
        Command::Version => health::versions(clients(&cli, &operator)?, cli.json).await,
        Command::Leader(LeaderCommand::Move { to }) => {
            leader::move_to(clients(&cli, &operator)?, *to, cli.json).await
        }
        Command::Snapshot => snapshot::run(clients(&cli, &operator)?, cli.json).await,
        Command::WaitLeader { wait } => status::wait_leader(clients(&cli, &operator)?, *wait).await,
        Command::Check { wait } => status::check(clients(&cli, &operator)?, *wait).await,
        Command::ApiKey(ApiKeyCommand::New { id }) => Ok(Output::ok(api_key::new(id))),
        Command::ApiKey(ApiKeyCommand::Hash) => api_key::hash_stdin().map(Output::ok),
        Command::Tls(TlsCommand::Init { dir, hosts }) => {
            tls::init(dir, tls::node_count(&cli.node_urls())?, hosts, cli.json).map(Output::ok)
        }
        Command::Pay(args) => {
            let verify = facilitators(&cli, &operator)?;
            let settle = HttpConfig {
                timeout: args.settle_timeout,
                ..operator
            };
            let settle = facilitators(&cli, &settle)?;
            let payer =
                payment::required_payer_key(&args.payer, std::env::var_os(ENV_PAYER_KEY), "pay")?;
            pay::run(verify, settle, args, &payer, cli.json).await
        }
        Command::Bench(BenchCommand::Claims(args)) => {
            let config = bench::http_config(&args.run, bench::request_timeout(&args.run, None));
            bench::claims(clients(&cli, &config)?, args, cli.json).await
        }
        Command::Bench(BenchCommand::Verify(args)) => {
            payment_bench(&cli, args, Endpoint::Verify).await
        }
        Command::Bench(BenchCommand::Settle(args)) => {
            payment_bench(&cli, args, Endpoint::Settle).await
        }
        Command::Bench(BenchCommand::Supported(args)) => {
            let config = bench::http_config(&args.run, bench::request_timeout(&args.run, None));
            bench::supported(facilitators(&cli, &config)?, args, cli.json).await
        }
    }
}

async fn payment_bench(
    cli: &Cli,
    args: &PaymentBenchArgs,
    endpoint: Endpoint,
) -> Result<Output, CtlError> {
    let timeout = bench::request_timeout(&args.run, Some(endpoint));
    let nodes = facilitators(cli, &bench::http_config(&args.run, timeout))?;
    let payer_env = std::env::var_os(ENV_PAYER_KEY);
    bench::payments(nodes, args, endpoint, payer_env, cli.json).await
}

/// `config` verifying https:// nodes against `--cacert`, or the system's store when a node URL
/// is https:// and no CA is named.
fn with_roots(cli: &Cli, urls: &[String], config: &HttpConfig) -> HttpConfig {
    HttpConfig {
        roots: Roots::for_urls(urls, cli.cacert.as_deref()),
        ..config.clone()
    }
}

/// One client per node, all sharing one connection pool.
fn clients(cli: &Cli, config: &HttpConfig) -> Result<Vec<AdminClient>, CtlError> {
    let urls = cli.node_urls();
    if urls.is_empty() {
        return Err(CtlError::NoNodes);
    }
    let http = HttpClient::new(&with_roots(cli, &urls, config))?;
    let token = cli.token.as_ref().map(Token::expose);
    urls.iter()
        .map(|url| Ok(AdminClient::with_http(http.clone(), url, token)?))
        .collect()
}

/// A client of one node given by URL outside `--nodes` (a node being added).
fn client_of(cli: &Cli, config: &HttpConfig, url: &str) -> Result<AdminClient, CtlError> {
    let urls = [url.to_owned()];
    let http = HttpClient::new(&with_roots(cli, &urls, config))?;
    let token = cli.token.as_ref().map(Token::expose);
    Ok(AdminClient::with_http(http, url, token)?)
}

/// One facilitator client per node (no admin token), all sharing one connection pool.
fn facilitators(cli: &Cli, config: &HttpConfig) -> Result<Vec<FacilitatorClient>, CtlError> {
    let urls = cli.node_urls();
    if urls.is_empty() {
        return Err(CtlError::NoNodes);
    }
    let http = HttpClient::new(&with_roots(cli, &urls, config))?;
    urls.iter()
        .map(|url| Ok(FacilitatorClient::with_http(http.clone(), url)?))
        .collect()
}

/// A client of one node, as [`on_first_reachable`] reports it.
trait Node: Clone {
    fn base_url(&self) -> &str;
}

impl Node for AdminClient {
    fn base_url(&self) -> &str {
        AdminClient::base_url(self)
    }
}

impl Node for FacilitatorClient {
    fn base_url(&self) -> &str {
        FacilitatorClient::base_url(self)
    }
}

/// Calls `f` on every node concurrently; answers come back in the order of `nodes`.
async fn on_every_node<T, F, Fut>(
    nodes: Vec<AdminClient>,
    f: F,
) -> Vec<(String, Result<T, ClientError>)>
where
    T: Send + 'static,
    F: Fn(AdminClient) -> Fut,
    Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
{
    let count = nodes.len();
    let mut tasks = JoinSet::new();
    for (i, node) in nodes.into_iter().enumerate() {
        let url = node.base_url().to_owned();
        let call = f(node);
        tasks.spawn(async move { (i, url, call.await) });
    }
    let mut answers: Vec<Option<(String, Result<T, ClientError>)>> =
        (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, url, result)) => answers[i] = Some((url, result)),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {} // cancelled: only when the runtime shuts down.
        }
    }
    answers.into_iter().flatten().collect()
}

/// Tries the nodes in order until one answers; only "unreachable" moves on to the next node, an
/// answer (even an error status) is final.
async fn on_first_reachable<N, T, F, Fut>(nodes: &[N], f: F) -> Result<T, CtlError>
where
    N: Node,
    F: Fn(N) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut unreachable = Vec::new();
    for node in nodes {
        match f(node.clone()).await {
            Ok(answer) => return Ok(answer),
            Err(e) if e.is_unreachable() => unreachable.push(UnreachableNode {
                url: node.base_url().to_owned(),
                error: e.to_string(),
            }),
            Err(e) => return Err(e.into()),
        }
    }
    Err(CtlError::NoneReachable(unreachable))
}

/// Renders rows as left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let out = table(
            &["ID", "URL"],
            &[
                vec!["1".into(), "http://a:1".into()],
                vec!["22".into(), "-".into()],
            ],
        );
        assert_eq!(out, "ID  URL\n1   http://a:1\n22  -\n");
    }

    #[test]
    fn none_reachable_lists_every_node() {
        let e = CtlError::NoneReachable(vec![
            UnreachableNode {
                url: "http://a:1".into(),
                error: "refused".into(),
            },
            UnreachableNode {
                url: "http://b:2".into(),
                error: "timeout".into(),
            },
        ]);
        assert_eq!(
            e.to_string(),
            "no node could be reached:\n  http://a:1: refused\n  http://b:2: timeout"
        );
    }

    #[tokio::test]
    async fn first_reachable_skips_dead_nodes_only() {
        // Port 9 on localhost (discard) is closed on test machines: connection refused.
        let config = HttpConfig::default();
        let dead = AdminClient::new("http://127.0.0.1:9", None, &config).unwrap();
        let result: Result<(), _> =
            on_first_reachable(&[dead.clone(), dead], |n| async move { n.readyz().await })
                .await
                .map(|_| ());
        match result {
            Err(CtlError::NoneReachable(nodes)) => assert_eq!(nodes.len(), 2),
            other => panic!("expected NoneReachable, got {other:?}"),
        }
    }
}
