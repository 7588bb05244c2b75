//! x402ctl's command line (clap derive). Kept apart from the commands so it can be parsed and
//! tested without any network.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bench::claims::DEFAULT_ASSET;
use crate::wire::{ENV_ADMIN_TOKEN, ENV_CACERT, ENV_NODES};
use crate::x402::payment::{DEFAULT_RESOURCE, DEFAULT_TOKEN_NAME, DEFAULT_TOKEN_VERSION};
use crate::x402::{Address, U256};

/// Most payments `bench verify|settle` signs before a run (97 bytes each in memory, about half
/// an hour of signing on two cores).
pub const MAX_PAYMENTS: u64 = 20_000_000;

/// Environment variable holding the payer's private key for `pay` and `bench verify|settle`
/// (there is deliberately no command-line flag for the key itself).
pub const ENV_PAYER_KEY: &str = "X402_PAYER_KEY";

#[derive(Parser, Debug)]
#[command(
    name = "x402ctl",
    version,
    about = "Operate an x402-cluster: status, membership, snapshots, payments, load generation"
)]
pub struct Cli {
    /// Node base URLs, comma separated (e.g. http://127.0.0.1:7001,http://127.0.0.1:7002)
    #[arg(long, env = ENV_NODES, value_delimiter = ',', global = true, value_name = "URLS")]
    pub nodes: Vec<String>,

    /// PEM file of the CA that https:// node URLs are verified against (default: the system's
    /// CA store)
    #[arg(long, env = ENV_CACERT, global = true, value_name = "PEM")]
    pub cacert: Option<std::path::PathBuf>,

    /// Admin bearer token (prefer the environment variable: arguments show up in `ps`)
    #[arg(long, env = ENV_ADMIN_TOKEN, hide_env_values = true, global = true)]
    pub token: Option<Token>,

    /// Deadline for each request of the operator commands, in seconds
    #[arg(long, global = true, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Duration,

    /// Print one JSON object instead of text
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The node URLs, trimmed, without empty entries (a trailing comma is harmless).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum Command {
    /// Query every node concurrently: role, term, leader, log positions, claims
    Status,
    /// Form the cluster, on the first node of --nodes
    Init {
        /// A founding member (repeat it); none = the members in the node's configuration
        #[arg(long = "member", value_name = "ID=URL")]
        members: Vec<MemberArg>,
    },
    /// Cluster-wide operations (`cluster init` is `init`)
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Change membership, through the first reachable node (it forwards to the leader)
    #[command(subcommand)]
    Members(MembersCommand),
    /// Whether every node is ready and the cluster can lose one more voter (exit 1 if not): run
    /// it before and after each maintenance step
    Health,
    /// Every node's release and commit
    Version,
    /// Leadership, through the first reachable node (it forwards to the leader)
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Trigger a snapshot on every node
    Snapshot,
    /// Wait until every node answers and all name the same leader (exit 1 on timeout)
    WaitLeader {
        /// How long to wait, in seconds
        #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
        wait: Duration,
    },
    /// Wait until every node has applied the same log index, then compare their state hashes:
    /// exit 0 when all agree, 1 on a divergence (or when they never reach one index in time)
    Check {
        /// How long to wait for every node to reach one applied index, in seconds
        #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
        wait: Duration,
    },
    /// Sign one payment and send it to the x402 endpoints: POST /verify, then POST /settle
    ///
    /// The request body is what an official x402 resource server sends for a client that paid
    /// with EIP-3009 (validAfter = now - 600 s, validBefore = now + --max-timeout-seconds, a
    /// random nonce). The nodes are tried in order until one answers. Exit status 1 when the
    /// payment is invalid or not settled (settlement_pending included).
    ///
    /// The payer's private key comes from X402_PAYER_KEY or --payer-key-file, never from the
    /// command line, and is never printed.
    Pay(PayArgs),
    /// Load generators
    #[command(subcommand)]
    Bench(BenchCommand),
    /// API keys for the nodes' [auth] section
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Certificates for the nodes' [tls] section
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum TlsCommand {
    /// Write a CA and a certificate per node into DIR (ca.pem, ca.key, nodeN.pem, nodeN.key),
    /// for a test or small cluster; with your own PKI, give each node a certificate naming its
    /// hosts instead. Here `--nodes N` is how many nodes (ids 1..=N, default 3)
    Init {
        /// Directory to write into (created; existing certificates are never overwritten)
        dir: std::path::PathBuf,
        /// A DNS name or IP address every node certificate names (repeat it); default
        /// 127.0.0.1 and localhost
        #[arg(long = "host", value_name = "NAME_OR_IP")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum ApiKeyCommand {
    /// Make a random key: prints the key (give it to the client) and the [[auth.api_keys]]
    /// entry with its SHA-256 (put it in every node's config)
    New {
        /// The key's name in logs, metrics and per-key limits
        id: String,
    },
    /// Print the SHA-256 of a key read from standard input
    Hash,
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum ClusterCommand {
    /// Form the cluster, on the first node of --nodes
    Init {
        /// A founding member (repeat it); none = the members in the node's configuration
        #[arg(long = "member", value_name = "ID=URL")]
        members: Vec<MemberArg>,
    },
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum MembersCommand {
    /// Add a node as a non-voting learner
    Add {
        id: u64,
        /// The new node's base URL
        url: String,
    },
    /// Make a learner a voter
    Promote { id: u64 },
    /// Remove a node from the cluster
    Remove { id: u64 },
    /// Replace a member by a new node: add it as a learner, let it catch up and promote it,
    /// move leadership away if the old member leads, then remove the old member. Start the new
    /// node first (with no [bootstrap]); run it again after an interruption, it resumes
    Replace {
        /// The member to replace
        old: u64,
        /// The new node's member URL (its peer API)
        url: String,
        /// The new node's id; asked from the new node when not given
        #[arg(long)]
        id: Option<u64>,
    },
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum LeaderCommand {
    /// Hand leadership to a caught-up voter (before maintenance on the leader's host): the
    /// leader stops proposing until the voter has its last entry and has won the election
    Move {
        /// The voter to lead next; any caught-up one when not given
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum BenchCommand {
    /// Claim fresh random nonces as fast as possible (POST /admin/claims) across all nodes
    Claims(ClaimsArgs),
    /// POST /verify with pre-signed payments as fast as possible across all nodes
    ///
    /// Every payment is signed before the clock starts (on all cores; signing is not measured),
    /// each with its own random nonce, and sent once. Only isValid: true counts; other answers
    /// are errors, counted by reason code. Without a payer key, a random payer signs: with the
    /// nodes' on-chain checks off, verify needs no funds.
    Verify(PaymentBenchArgs),
    /// POST /settle with pre-signed payments as fast as possible across all nodes
    ///
    /// As `bench verify`, but only success: true counts, and the payer key is required (the
    /// payer needs the funds: --amount times --payments).
    Settle(PaymentBenchArgs),
    /// GET /supported as fast as possible across all nodes (no write of its own: with rate
    /// limits configured, it spends leased quota slices)
    Supported(SupportedBenchArgs),
}

/// `bench supported`.
#[derive(Args, Debug, PartialEq)]
pub struct SupportedBenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// How a load-generator run goes: shared by every `bench` command.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct RunArgs {
    /// Concurrent workers, spread round-robin over the nodes
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// How long to run, in seconds (fractions allowed)
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub duration: Duration,
    /// Deadline of one operation; a slower one counts as an error [default: 2000; 60000 for
    /// bench settle, which waits for the chain]
    #[arg(long, value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Pause after an error before a worker tries the next node
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub retry_pause_ms: u64,
    /// Open a new connection for every request (no keep-alive): measures how many connections
    /// (TLS handshakes, against https:// nodes) the nodes accept per second
    #[arg(long)]
    pub new_connection_per_request: bool,
}

impl RunArgs {
    /// `--request-timeout-ms`, or `default` (at least 1 ms).
    pub fn request_timeout(&self, default: Duration) -> Duration {
        self.request_timeout_ms
            .map_or(default, Duration::from_millis)
            .max(Duration::from_millis(1))
    }
}

#[derive(Args, Debug, PartialEq)]
pub struct ClaimsArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Chain id every claim is made for
    #[arg(long, default_value_t = 31337)]
    pub chain_id: u64,
    /// Token address every claim is made for
    #[arg(long, default_value = DEFAULT_ASSET)]
    pub asset: String,
}

/// `bench verify` and `bench settle`.
#[derive(Args, Debug, PartialEq)]
pub struct PaymentBenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub requirements: RequirementArgs,
    #[command(flatten)]
    pub payer: PayerArgs,
    /// Payments to sign before the run; the run ends early if they run out [default: 15000
    /// (verify) or 2000 (settle) per second of --duration, at least --concurrency]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_PAYMENTS))]
    pub payments: Option<u64>,
}

/// `pay`.
#[derive(Args, Debug, PartialEq)]
pub struct PayArgs {
    #[command(flatten)]
    pub requirements: RequirementArgs,
    #[command(flatten)]
    pub payer: PayerArgs,
    /// Only POST /verify; do not settle
    #[arg(long)]
    pub verify_only: bool,
    /// Deadline of POST /settle, which waits for the transaction's receipt (--timeout applies
    /// to /verify)
    #[arg(long, default_value = "90", value_name = "SECS", value_parser = parse_secs)]
    pub settle_timeout: Duration,
}

/// One x402 payment requirement: what the payment is for (the resource server's side).
#[derive(Args, Clone, Debug, PartialEq)]
pub struct RequirementArgs {
    /// A CAIP-2 id such as eip155:31337 (x402 v2), or a v1 name such as base-sepolia with
    /// --x402-version 1
    #[arg(long)]
    pub network: String,
    /// The EIP-3009 token contract
    #[arg(long, value_name = "ADDRESS")]
    pub asset: Address,
    /// The recipient
    #[arg(long, value_name = "ADDRESS")]
    pub pay_to: Address,
    /// Amount in the token's base units (10000 = 0.01 USDC)
    #[arg(long, value_name = "UNITS")]
    pub amount: U256,
    /// The token's EIP-712 domain name (requirements extra.name)
    #[arg(long, default_value = DEFAULT_TOKEN_NAME, value_name = "NAME")]
    pub token_name: String,
    /// The token's EIP-712 domain version (requirements extra.version)
    #[arg(long, default_value = DEFAULT_TOKEN_VERSION, value_name = "VERSION")]
    pub token_version: String,
    /// x402 protocol version of the request body
    #[arg(long, default_value_t = 2, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub x402_version: u8,
    /// Chain id of a v1 network name (built-in names such as base-sepolia need none)
    #[arg(long, value_name = "ID")]
    pub chain_id: Option<u64>,
    /// URL of the paid resource (v2 resource.url, v1 resource)
    #[arg(long, default_value = DEFAULT_RESOURCE, value_name = "URL")]
    pub resource: String,
    /// maxTimeoutSeconds: the authorization is valid until this long after signing [default:
    /// 60 for pay; --duration + 600 for bench, so no payment expires during the run]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_timeout_seconds: Option<u64>,
}

/// Where the payer's private key comes from.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct PayerArgs {
    /// File holding the payer's private key (0x and 64 hex digits); takes precedence over the
    /// X402_PAYER_KEY environment variable. The key itself is never a command-line value
    #[arg(long, value_name = "PATH")]
    pub payer_key_file: Option<PathBuf>,
}

/// `--member ID=URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberArg {
    pub id: u64,
    pub url: String,
}

impl FromStr for MemberArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (id, url) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ID=URL, got {s:?}"))?;
        let id = id
            .trim()
            .parse()
            .map_err(|e| format!("bad member id {id:?}: {e}"))?;
        let url = url.trim();
        if url.is_empty() {
            return Err(format!("member {id} has an empty URL"));
        }
        Ok(Self {
            id,
            url: url.to_owned(),
        })
    }
}

/// The admin token; its `Debug` never shows it, so no stray `{:?}` can leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl FromStr for Token {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Self(s.to_owned()))
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("expected seconds, got {s:?}: {e}"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("expected a positive number of seconds, got {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("x402ctl").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn nodes_split_on_commas_and_globals_go_anywhere() {
        let cli = parse(&[
            "status",
            "--nodes",
            "http://a:1, http://b:2,,",
            "--json",
            "--token",
            "t0k",
        ])
        .unwrap();
        assert_eq!(cli.node_urls(), ["http://a:1", "http://b:2"]);
        assert!(cli.json);
        assert_eq!(cli.token.as_ref().map(Token::expose), Some("t0k"));
        assert_eq!(cli.command, Command::Status);
        assert_eq!(cli.timeout, Duration::from_secs(10));

        let cli = parse(&["--json", "--timeout", "0.5", "snapshot"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_millis(500));
    }

    #[test]
    fn init_members() {
        let cli = parse(&[
            "init",
            "--member",
            "1=http://a:1",
            "--member",
            "2 = http://b:2",
        ])
        .unwrap();
        let Command::Init { members } = cli.command else {
            panic!("not init")
        };
        assert_eq!(
            members,
            [
                MemberArg {
                    id: 1,
                    url: "http://a:1".into()
                },
                MemberArg {
                    id: 2,
                    url: "http://b:2".into()
                },
            ]
        );
        assert!(parse(&["init", "--member", "x=http://a"]).is_err());
        assert!(parse(&["init", "--member", "http://a"]).is_err());
        assert!(parse(&["init", "--member", "3="]).is_err());
        let cli = parse(&["init"]).unwrap();
        assert_eq!(cli.command, Command::Init { members: vec![] });
        let cli = parse(&["cluster", "init", "--member", "1=http://a:1"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Cluster(ClusterCommand::Init {
                members: vec![MemberArg {
                    id: 1,
                    url: "http://a:1".into()
                }]
            })
        );
    }

    #[test]
    fn members_subcommands() {
        let cli = parse(&["members", "add", "4", "http://d:4"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Members(MembersCommand::Add {
                id: 4,
                url: "http://d:4".into()
            })
        );
        let cli = parse(&["members", "promote", "4"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Members(MembersCommand::Promote { id: 4 })
        );
        let cli = parse(&["members", "remove", "4"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Members(MembersCommand::Remove { id: 4 })
        );
        assert_eq!(
            parse(&["members", "replace", "2", "http://e:5"])
                .unwrap()
                .command,
            Command::Members(MembersCommand::Replace {
                old: 2,
                url: "http://e:5".into(),
                id: None
            })
        );
        assert_eq!(
            parse(&["leader", "move", "--to", "2"]).unwrap().command,
            Command::Leader(LeaderCommand::Move { to: Some(2) })
        );
        assert_eq!(
            parse(&["leader", "move"]).unwrap().command,
            Command::Leader(LeaderCommand::Move { to: None })
        );
        assert!(parse(&["members", "add", "4"]).is_err());
        assert!(parse(&["members", "remove", "four"]).is_err());
    }

    #[test]
    fn bench_claims_options_and_defaults() {
        let cli = parse(&[
            "bench",
            "claims",
            "--concurrency",
            "256",
            "--duration",
            "30",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Bench(BenchCommand::Claims(args)) = cli.command else {
            panic!("not bench claims")
        };
        assert_eq!(args.run.concurrency, 256);
        assert_eq!(args.run.duration, Duration::from_secs(30));
        assert_eq!(args.chain_id, 31337);
        assert_eq!(args.asset, DEFAULT_ASSET);
        assert_eq!(
            (args.run.request_timeout_ms, args.run.retry_pause_ms),
            (None, 20)
        );
        assert_eq!(
            args.run.request_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );

        let cli = parse(&["bench", "claims", "--chain-id", "8453"]).unwrap();
        let Command::Bench(BenchCommand::Claims(args)) = cli.command else {
            panic!("not bench claims")
        };
        assert_eq!((args.chain_id, args.run.concurrency), (8453, 64));

        assert!(parse(&["bench", "claims", "--concurrency", "0"]).is_err());
        assert!(parse(&["bench", "claims", "--duration", "-1"]).is_err());
        assert!(parse(&["bench", "claims", "--duration", "abc"]).is_err());
        assert!(parse(&["bench"]).is_err());
        assert!(parse(&[]).is_err());
    }

    const ASSET: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

    /// The required requirement flags, then `extra`.
    fn with_terms<'a>(command: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        let terms = [
            "--network",
            "eip155:31337",
            "--asset",
            ASSET,
            "--pay-to",
            PAY_TO,
            "--amount",
            "10000",
        ];
        command
            .iter()
            .chain(terms.iter())
            .chain(extra.iter())
            .copied()
            .collect()
    }

    #[test]
    fn pay_options_and_defaults() {
        let cli = parse(&with_terms(&["pay"], &[])).unwrap();
        let Command::Pay(args) = cli.command else {
            panic!("not pay")
        };
        let r = &args.requirements;
        assert_eq!(r.network, "eip155:31337");
        assert_eq!(r.asset, Address::parse(ASSET).unwrap());
        assert_eq!(r.pay_to, Address::parse(PAY_TO).unwrap());
        assert_eq!(r.amount, U256::from_u64(10_000));
        assert_eq!(
            (r.token_name.as_str(), r.token_version.as_str()),
            ("USD Coin", "2")
        );
        assert_eq!((r.x402_version, r.chain_id), (2, None));
        assert_eq!(r.resource, DEFAULT_RESOURCE);
        assert_eq!(r.max_timeout_seconds, None);
        assert_eq!(args.payer.payer_key_file, None);
        assert!(!args.verify_only);
        assert_eq!(args.settle_timeout, Duration::from_secs(90));

        let cli = parse(&with_terms(
            &["pay"],
            &[
                "--token-name",
                "USDC",
                "--token-version",
                "1",
                "--x402-version",
                "1",
                "--chain-id",
                "31337",
                "--resource",
                "http://shop/item",
                "--max-timeout-seconds",
                "30",
                "--payer-key-file",
                "/etc/x402/payer.key",
                "--verify-only",
                "--settle-timeout",
                "5",
                "--json",
            ],
        ))
        .unwrap();
        assert!(cli.json);
        let Command::Pay(args) = cli.command else {
            panic!("not pay")
        };
        let r = &args.requirements;
        assert_eq!(
            (r.token_name.as_str(), r.token_version.as_str()),
            ("USDC", "1")
        );
        assert_eq!((r.x402_version, r.chain_id), (1, Some(31337)));
        assert_eq!(r.resource, "http://shop/item");
        assert_eq!(r.max_timeout_seconds, Some(30));
        assert_eq!(
            args.payer.payer_key_file.as_deref(),
            Some(std::path::Path::new("/etc/x402/payer.key"))
        );
        assert!(args.verify_only);
        assert_eq!(args.settle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn pay_refuses_bad_values_and_has_no_key_flag() {
        assert!(
            parse(&["pay", "--network", "eip155:31337"]).is_err(),
            "terms required"
        );
        let bad = |extra: &[&str]| parse(&with_terms(&["pay"], extra)).is_err();
        assert!(bad(&["--x402-version", "3"]));
        assert!(bad(&["--max-timeout-seconds", "0"]));
        assert!(bad(&["--payer-key", "0x01"]), "the key is never a flag");
        let mut args = with_terms(&["pay"], &[]);
        args[4] = "0x1234"; // --asset
        assert!(parse(&args).is_err());
        let mut args = with_terms(&["pay"], &[]);
        args[8] = "1.5"; // --amount
        assert!(parse(&args).is_err());
    }

    #[test]
    fn bench_verify_and_settle_share_the_run_flags() {
        let cli = parse(&with_terms(
            &["bench", "verify"],
            &["--concurrency", "8", "--duration", "2", "--payments", "500"],
        ))
        .unwrap();
        let Command::Bench(BenchCommand::Verify(args)) = cli.command else {
            panic!("not bench verify")
        };
        assert_eq!(args.run.concurrency, 8);
        assert_eq!(args.run.duration, Duration::from_secs(2));
        assert_eq!(args.run.request_timeout_ms, None);
        assert_eq!(args.payments, Some(500));
        assert_eq!(args.requirements.amount, U256::from_u64(10_000));

        let cli = parse(&with_terms(
            &["bench", "settle"],
            &[
                "--request-timeout-ms",
                "9000",
                "--retry-pause-ms",
                "5",
                "--x402-version",
                "1",
                "--payer-key-file",
                "k",
            ],
        ))
        .unwrap();
        let Command::Bench(BenchCommand::Settle(args)) = cli.command else {
            panic!("not bench settle")
        };
        assert_eq!(
            (args.run.request_timeout_ms, args.run.retry_pause_ms),
            (Some(9000), 5)
        );
        assert_eq!(args.payments, None);
        assert_eq!(args.requirements.x402_version, 1);
        assert!(args.payer.payer_key_file.is_some());
        assert!(parse(&with_terms(&["bench", "verify"], &["--payments", "0"])).is_err());
        assert!(parse(&with_terms(
            &["bench", "verify"],
            &["--payments", "20000001"]
        ))
        .is_err());
        assert!(parse(&["bench", "verify"]).is_err(), "terms required");
    }

    #[test]
    fn token_debug_is_redacted() {
        let cli = parse(&["status", "--token", "hunter2"]).unwrap();
        assert!(!format!("{:?}", cli.token).contains("hunter2"));
    }
}
