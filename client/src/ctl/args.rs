//! x402ctl's command line (clap derive). Kept apart from the commands so it can be parsed and
//! tested without any network.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::bench::claims::DEFAULT_ASSET;
use crate::wire::{ENV_ADMIN_TOKEN, ENV_NODES};

#[derive(Parser, Debug)]
#[command(
    name = "x402ctl",
    version,
    about = "Operate an x402-cluster: status, membership, snapshots, load generation"
)]
pub struct Cli {
    /// Node base URLs, comma separated (e.g. http://127.0.0.1:7001,http://127.0.0.1:7002)
    #[arg(long, env = ENV_NODES, value_delimiter = ',', global = true, value_name = "URLS")]
    pub nodes: Vec<String>,

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
    /// Trigger a snapshot on every node
    Snapshot,
    /// Wait until every node answers and all name the same leader (exit 1 on timeout)
    WaitLeader {
        /// How long to wait, in seconds
        #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
        wait: Duration,
    },
    /// Load generators
    #[command(subcommand)]
    Bench(BenchCommand),
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
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum BenchCommand {
    /// Claim fresh random nonces as fast as possible (POST /admin/claims) across all nodes
    Claims(ClaimsArgs),
}

#[derive(Args, Debug, PartialEq)]
pub struct ClaimsArgs {
    /// Concurrent workers, spread round-robin over the nodes
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// How long to run, in seconds (fractions allowed)
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    pub duration: Duration,
    /// Chain id every claim is made for
    #[arg(long, default_value_t = 31337)]
    pub chain_id: u64,
    /// Token address every claim is made for
    #[arg(long, default_value = DEFAULT_ASSET)]
    pub asset: String,
    /// Deadline of one claim; a slower one counts as an error
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub request_timeout_ms: u64,
    /// Pause after an error before a worker tries the next node
    #[arg(long, default_value_t = 20, value_name = "MS")]
    pub retry_pause_ms: u64,
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
        assert_eq!(args.concurrency, 256);
        assert_eq!(args.duration, Duration::from_secs(30));
        assert_eq!(args.chain_id, 31337);
        assert_eq!(args.asset, DEFAULT_ASSET);
        assert_eq!((args.request_timeout_ms, args.retry_pause_ms), (2000, 20));

        let cli = parse(&["bench", "claims", "--chain-id", "8453"]).unwrap();
        let Command::Bench(BenchCommand::Claims(args)) = cli.command else {
            panic!("not bench claims")
        };
        assert_eq!((args.chain_id, args.concurrency), (8453, 64));

        assert!(parse(&["bench", "claims", "--concurrency", "0"]).is_err());
        assert!(parse(&["bench", "claims", "--duration", "-1"]).is_err());
        assert!(parse(&["bench", "claims", "--duration", "abc"]).is_err());
        assert!(parse(&["bench"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn token_debug_is_redacted() {
        let cli = parse(&["status", "--token", "hunter2"]).unwrap();
        assert!(!format!("{:?}", cli.token).contains("hunter2"));
    }
}
