//! `x402-devchain`: a local chain for trying the facilitator by hand.
//!
//! ```text
//! x402-devchain start DIR [--chain-id 31337] [--port 8545] [--token-name "USD Coin"]
//!                         [--token-version 2] [--v1-name NAME] [--block-time N | --no-mining]
//! x402-devchain stop DIR
//! ```
//!
//! `start` runs anvil in the background (it outlives the command: pid in `DIR/anvil.pid`, output
//! in `DIR/anvil.log`), puts Permit2 and Multicall3 at their canonical addresses
//! (`x402_dev::canonical`), deploys our EIP-3009 TestUSDC, mints 1,000,000 tokens to the payer
//! (anvil dev account #3) and writes
//!
//! - `DIR/devchain.env`: shell exports `X402_RPC_URL`, `X402_CHAIN_ID`, `X402_NETWORK`
//!   (`eip155:<id>`), `X402_V1_NETWORK` (when the chain has a v1 name), `X402_TOKEN`,
//!   `X402_TOKEN_NAME`, `X402_TOKEN_VERSION`, `X402_PAY_TO` (account #4), `X402_PAYER`,
//!   `X402_PAYER_KEY` (account #3) and `X402_SIGNER_KEYS` (accounts #1 and #2, comma separated);
//! - `DIR/facilitator.toml`: the node's `[facilitator]` section for this chain, with
//!   `signer_keys_env = "X402_SIGNER_KEYS"`.
//!
//! `stop` stops that anvil (SIGTERM, SIGKILL after 5 s); the chain's state is gone with it.
//!
//! anvil comes from `X402_ANVIL` (or `ANVIL_BIN`), else from `contracts/node_modules` of the
//! workspace this binary was built in (`cd contracts && npm ci`). Every key here is one of
//! anvil's public dev keys: test use only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use clap::{Parser, Subcommand};
use x402_dev::devchain::{
    default_v1_name, facilitator_toml, signer_keys_csv, spawn_anvil, wait_anvil, AnvilOptions,
    DevChainError, DevRpc, DevToken, Mining, DEFAULT_TOKEN_NAME, DEFAULT_TOKEN_VERSION, MERCHANT,
    PAYER, PAYER_FUNDS, PAYER_KEY, SIGNER_KEYS_ENV,
};

#[derive(Parser)]
#[command(
    name = "x402-devchain",
    about = "A local anvil chain with our EIP-3009 test token, for x402-cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start anvil in the background, deploy TestUSDC, fund the payer, write DIR/devchain.env
    /// and DIR/facilitator.toml.
    Start {
        /// Directory for anvil.pid, anvil.log, devchain.env and facilitator.toml.
        dir: PathBuf,
        #[arg(long, default_value_t = 31337)]
        chain_id: u64,
        /// Port on 127.0.0.1.
        #[arg(long, default_value_t = 8545)]
        port: u16,
        /// The token's EIP-712 domain name (what `extra.name` must say).
        #[arg(long, default_value = DEFAULT_TOKEN_NAME)]
        token_name: String,
        /// The token's EIP-712 domain version (what `extra.version` must say).
        #[arg(long, default_value = DEFAULT_TOKEN_VERSION)]
        token_version: String,
        /// The x402 v1 network name to serve the chain under (default: its built-in name, or
        /// `anvil` for 31337).
        #[arg(long)]
        v1_name: Option<String>,
        /// Mine a block every N seconds instead of one per transaction.
        #[arg(long, conflicts_with = "no_mining")]
        block_time: Option<u64>,
        /// Mine only when asked (`anvil_mine` / `evm_mine`).
        #[arg(long)]
        no_mining: bool,
    },
    /// Stop the anvil started in DIR.
    Stop { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Start {
            dir,
            chain_id,
            port,
            token_name,
            token_version,
            v1_name,
            block_time,
            no_mining,
        } => {
            let mining = match (block_time, no_mining) {
                (_, true) => Mining::Manual,
                (Some(secs), false) => Mining::Interval(secs),
                (None, false) => Mining::Auto,
            };
            let v1_name = v1_name.or_else(|| default_v1_name(chain_id));
            let options = AnvilOptions::new(chain_id).port(port).mining(mining);
            start(&dir, options, &token_name, &token_version, v1_name)
        }
        Cmd::Stop { dir } => stop(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("x402-devchain: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(
    dir: &Path,
    options: AnvilOptions,
    token_name: &str,
    token_version: &str,
    v1_name: Option<String>,
) -> Result<(), DevChainError> {
    let pid_file = dir.join("anvil.pid");
    if let Some(pid) = running_pid(&pid_file) {
        return Err(DevChainError(format!(
            "a devchain already runs in {} (anvil pid {pid}); stop it with `x402-devchain stop {}`",
            dir.display(),
            dir.display()
        )));
    }
    fs::create_dir_all(dir)
        .map_err(|e| DevChainError(format!("cannot create {}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| DevChainError(format!("{}: {e}", dir.display())))?;
    let pid_file = dir.join("anvil.pid");
    let log = dir.join("anvil.log");
    // A new chain: a new log.
    let _ = fs::remove_file(&log);
    let mut child = spawn_anvil(&options, &log, true)?;
    write(&pid_file, &format!("{}\n", child.id()))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DevChainError(format!("tokio runtime: {e}")))?;
    let set_up = runtime.block_on(async {
        let url = wait_anvil(&mut child, &options, &log).await?;
        let rpc = DevRpc::connect(&url)?;
        x402_dev::canonical::install(&rpc).await?;
        let token = DevToken::try_deploy(&rpc, token_name, token_version).await?;
        token.try_mint(PAYER, U256::from(PAYER_FUNDS)).await?;
        Ok::<_, DevChainError>((url, token))
    });
    let (url, token) = match set_up {
        Ok(done) => done,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&pid_file);
            return Err(e);
        }
    };

    let chain_id = options.chain_id;
    let network = format!("eip155:{chain_id}");
    let mut env = String::from(
        "# Written by x402-devchain start: a local anvil chain (public dev keys, test use only).\n",
    );
    let mut export = |key: &str, value: &str| {
        env.push_str(&format!("export {key}={}\n", shell_quote(value)));
    };
    export("X402_RPC_URL", &url);
    export("X402_CHAIN_ID", &chain_id.to_string());
    export("X402_NETWORK", &network);
    if let Some(name) = &v1_name {
        export("X402_V1_NETWORK", name);
    }
    export("X402_TOKEN", &token.address.to_checksum(None));
    export("X402_TOKEN_NAME", &token.name);
    export("X402_TOKEN_VERSION", &token.version);
    export("X402_PAY_TO", &MERCHANT.to_checksum(None));
    export("X402_PAYER", &PAYER.to_checksum(None));
    export("X402_PAYER_KEY", PAYER_KEY);
    export(SIGNER_KEYS_ENV, &signer_keys_csv());
    write(&dir.join("devchain.env"), &env)?;
    let toml = facilitator_toml(
        &[(&network, v1_name.as_deref(), &url, &token)],
        SIGNER_KEYS_ENV,
    );
    write(&dir.join("facilitator.toml"), &toml)?;

    println!(
        "anvil (chain {chain_id}) listens on {url}, pid {}; TestUSDC ({:?}, version {:?}) at {}; \
         payer {} holds {} tokens",
        child.id(),
        token.name,
        token.version,
        token.address,
        PAYER,
        PAYER_FUNDS / 1_000_000
    );
    println!(
        "  . {}/devchain.env; node config: {}/facilitator.toml (with {SIGNER_KEYS_ENV} exported)",
        dir.display(),
        dir.display()
    );
    println!("  stop with: x402-devchain stop {}", dir.display());
    Ok(())
}

fn stop(dir: &Path) -> Result<(), DevChainError> {
    let pid_file = dir.join("anvil.pid");
    if !pid_file.exists() {
        return Err(DevChainError(format!("no devchain in {}", dir.display())));
    }
    let Some(pid) = running_pid(&pid_file) else {
        let _ = fs::remove_file(&pid_file);
        println!("anvil was not running");
        return Ok(());
    };
    // SAFETY: kill(2) of a process we checked is anvil.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = fs::remove_file(&pid_file);
    if alive(pid) {
        return Err(DevChainError(format!("anvil (pid {pid}) does not die")));
    }
    println!("stopped anvil (pid {pid})");
    Ok(())
}

/// The pid in `pid_file`, if that process runs and is an anvil (a stale file may name a pid
/// that was reused since).
fn running_pid(pid_file: &Path) -> Option<libc::pid_t> {
    let pid: libc::pid_t = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let program = cmdline.split(|b| *b == 0).next()?;
    (alive(pid) && String::from_utf8_lossy(program).contains("anvil")).then_some(pid)
}

/// Whether `pid` runs (a zombie no longer counts: nobody may reap it in a container).
fn alive(pid: libc::pid_t) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => false,
    }
}

/// Writes `text` to `path`, readable by its owner only (the files hold dev keys; a real key
/// put in their place must not be world-readable either).
fn write(path: &Path, text: &str) -> Result<(), DevChainError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| DevChainError(format!("cannot write {}: {e}", path.display()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    // An existing file keeps its mode on open: tighten it.
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)
}

/// `value` in single quotes for sh.
fn shell_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/@+=".contains(&b))
    {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\'', r"'\''"))
}
