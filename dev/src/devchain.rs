//! A local EVM chain for end-to-end tests: [`Anvil`] (a real anvil process), [`DevToken`] (our
//! EIP-3009 TestUSDC deployed on it), [`DevRpc`] (JSON-RPC helpers: nonces, mining, sending
//! transactions, logs) and the `[facilitator]` TOML that points `x402-node` at it.
//!
//! ```ignore
//! let chain = DevChain::start(31337).await;            // anvil + TestUSDC + payer funded
//! let cluster = LocalCluster::start_with(3, ClusterOptions::on(&chain)).await;
//! let (auth, sig) = chain.token.authorize(&key_signer(PAYER_KEY), MERCHANT, value, valid_before);
//! // ... POST /settle to the cluster ...
//! assert_eq!(chain.token.transfers_of_authorization(PAYER, auth.nonce).await.len(), 1);
//! ```
//!
//! The accounts are anvil's well-known dev accounts (mnemonic `test test … junk`, public keys
//! for tests only): [`DEPLOYER`] #0 deploys and mints, [`SIGNER1`] #1 and [`SIGNER2`] #2 are the
//! facilitator's signers, [`PAYER`] #3 pays, [`MERCHANT`] #4 is `payTo`.
//!
//! anvil comes from `X402_ANVIL` (or `ANVIL_BIN`), falling back to the npm package in
//! `contracts/node_modules` (`cd contracts && npm ci`). Without it the tests fail; they do not
//! skip. This is the workspace's one anvil launcher.
//!
//! An [`Anvil`] never outlives its test: it is SIGKILLed and reaped on `Drop` and, on Linux, has
//! `PR_SET_PDEATHSIG = SIGKILL` like the cluster's nodes. The `x402-devchain` binary starts a
//! detached anvil with the same code ([`spawn_anvil`] with `detach`).
//!
//! Helper transactions ([`DevRpc::send`], [`DevToken::deploy`], [`DevToken::mint`]) are sent by
//! [`DEPLOYER`] one at a time and wait for their receipt. When anvil mines neither automatically
//! nor on an interval (`--no-mining`, or [`DevRpc::set_automine`] `(false)`), they mine a block
//! themselves after a short wait, which also mines whatever else is pending.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::network::Ethereum;
use alloy::primitives::{address, Address, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolCall, SolValue};
use tempfile::TempDir;
use x402_node::chain::tx::{sign_eip1559, Eip1559Request};
use x402_node::chain::{
    rpc_provider, AlloyChain, CallRequest, Chain, ChainError, ChainLimits, NonceTag, Receipt,
};
use x402_node::tls::{rpc_http_client, Roots};
use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};
use x402_protocol::x402::network::{ChainId, NetworkRegistry};
use x402_protocol::x402::payment::{PaymentBuilder, PaymentTerms};
use x402_protocol::x402::{self, FacilitatorRequest};

use crate::process::{die_with_parent, toml_str};

sol! {
    function mint(address to, uint256 amount) external;
}

// ---------------------------------------------------------------------------------------------
// Accounts: anvil's dev accounts #0..#4 (mnemonic "test test test test test test test test test
// test test junk"). Public test keys: never use them on a chain where anything has value.

/// Account #0: deploys the token and mints.
pub const DEPLOYER: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
pub const DEPLOYER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// Account #1: the facilitator's first signer.
pub const SIGNER1: Address = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
pub const SIGNER1_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// Account #2: the facilitator's second signer.
pub const SIGNER2: Address = address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
pub const SIGNER2_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// Account #3: the payer (an EOA holding tokens).
pub const PAYER: Address = address!("90F79bf6EB2c4f870365E785982E1f101E93b906");
pub const PAYER_KEY: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
/// Account #4: the merchant, `payTo` of the payment requirements.
pub const MERCHANT: Address = address!("15d34AAf54267DB7D7c367839AAf71A00a2C6A65");
pub const MERCHANT_KEY: &str = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";

/// The facilitator's signers, in configuration order.
pub const SIGNERS: [Address; 2] = [SIGNER1, SIGNER2];
pub const SIGNER_KEYS: [&str; 2] = [SIGNER1_KEY, SIGNER2_KEY];
/// The environment variable [`DevChain::cluster_options`] puts the signer keys in (and the
/// `signer_keys_env` of its TOML).
pub const SIGNER_KEYS_ENV: &str = "X402_SIGNER_KEYS";

/// The token's decimals (like USDC).
pub const TOKEN_DECIMALS: u32 = 6;
/// One whole token in base units.
pub const ONE_TOKEN: u64 = 1_000_000;
/// What [`DevChain::start`] and `x402-devchain start` mint to [`PAYER`]: 1,000,000 tokens.
pub const PAYER_FUNDS: u64 = 1_000_000 * ONE_TOKEN;
/// The token's default EIP-712 domain: real USDC's on Ethereum and Base mainnet.
pub const DEFAULT_TOKEN_NAME: &str = "USD Coin";
pub const DEFAULT_TOKEN_VERSION: &str = "2";

/// How long anvil may take to listen and answer `eth_chainId`.
pub const ANVIL_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a helper transaction may take to be mined.
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one JSON-RPC call of the helpers.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Where `npm ci` in `contracts/` installs anvil, relative to the workspace root.
pub const ANVIL_NPM_PATH: &str = "contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";
/// The committed TestUSDC artifact, relative to the workspace root.
pub const TEST_USDC_ARTIFACT: &str = "contracts/artifacts/TestUSDC.json";
/// Lines of anvil's log printed when a test fails.
const LOG_TAIL_LINES: usize = 30;

/// A parsed dev key.
pub fn key_signer(key: &str) -> PrivateKeySigner {
    key.parse()
        .unwrap_or_else(|_| panic!("not a private key: {}…", &key[..key.len().min(6)]))
}

/// The signer keys as `X402_SIGNER_KEYS` holds them: `0x…,0x…`.
pub fn signer_keys_csv() -> String {
    SIGNER_KEYS.join(",")
}

/// Seconds since the Unix epoch (for `validBefore`).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The anvil binary: `X402_ANVIL`, else `ANVIL_BIN`, else [`ANVIL_NPM_PATH`] in the workspace.
pub fn anvil_bin() -> PathBuf {
    for var in ["X402_ANVIL", "ANVIL_BIN"] {
        match std::env::var_os(var) {
            Some(path) if !path.is_empty() => return PathBuf::from(path),
            _ => {}
        }
    }
    workspace_root().join(ANVIL_NPM_PATH)
}

/// The v1 name a chain is served under by default: its built-in x402 v1 name (e.g.
/// `base-sepolia` for 84532), `anvil` for 31337, none otherwise.
pub fn default_v1_name(chain_id: u64) -> Option<String> {
    match NetworkRegistry::builtin().name_of(ChainId(chain_id)) {
        Some(name) => Some(name.to_owned()),
        None if chain_id == 31337 => Some("anvil".to_owned()),
        None => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why a dev-chain operation failed: one readable sentence (also in `Debug`, so `unwrap` prints
/// it as is).
pub struct DevChainError(pub String);

impl DevChainError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for DevChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DevChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DevChainError {}

type Result<T, E = DevChainError> = std::result::Result<T, E>;

fn or_panic<T>(result: Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// Starting anvil.

/// How anvil mines blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mining {
    /// A block per transaction, at once (anvil's default).
    #[default]
    Auto,
    /// A block every N seconds (`--block-time N`).
    Interval(u64),
    /// Only when asked (`--no-mining`; see [`DevRpc::mine`]).
    Manual,
}

/// How to start anvil.
#[derive(Clone, Debug)]
pub struct AnvilOptions {
    pub chain_id: u64,
    pub mining: Mining,
    /// The port on 127.0.0.1; `None` lets anvil pick a free one (`--port 0`).
    pub port: Option<u16>,
    /// The anvil binary; `None` is [`anvil_bin`].
    pub bin: Option<PathBuf>,
}

impl AnvilOptions {
    pub fn new(chain_id: u64) -> Self {
        Self {
            chain_id,
            mining: Mining::Auto,
            port: None,
            bin: None,
        }
    }

    pub fn mining(mut self, mining: Mining) -> Self {
        self.mining = mining;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// anvil's command-line arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--host".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            self.port.unwrap_or(0).to_string(),
            "--chain-id".to_owned(),
            self.chain_id.to_string(),
        ];
        match self.mining {
            Mining::Auto => {}
            Mining::Interval(secs) => {
                args.push("--block-time".to_owned());
                args.push(secs.to_string());
            }
            Mining::Manual => args.push("--no-mining".to_owned()),
        }
        args
    }
}

/// Spawns anvil with its stdout and stderr appended to `log`. `detach`: in a new session, so it
/// survives the caller (the `x402-devchain` binary); otherwise it dies with the calling thread
/// (`PR_SET_PDEATHSIG`). Does not wait for it: see [`wait_anvil`].
pub fn spawn_anvil(options: &AnvilOptions, log: &Path, detach: bool) -> Result<Child> {
    let bin = options.bin.clone().unwrap_or_else(anvil_bin);
    if !bin.is_file() {
        let from_env = ["X402_ANVIL", "ANVIL_BIN"]
            .into_iter()
            .find(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
        return Err(DevChainError::new(match from_env {
            Some(var) if options.bin.is_none() => format!(
                "anvil not found at {} (from {var}): point {var} at an anvil binary, or unset \
                 it and run `npm ci` in {}",
                bin.display(),
                workspace_root().join("contracts").display()
            ),
            _ => format!(
                "anvil not found at {}: run `npm ci` in {} (or set X402_ANVIL to an anvil binary)",
                bin.display(),
                workspace_root().join("contracts").display()
            ),
        }));
    }
    if let Some(port) = options.port {
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(DevChainError::new(format!(
                "port {port} on 127.0.0.1 is in use (another anvil?); choose another port \
                 (x402-devchain --port, X402_DEVCHAIN_PORT for deploy/local)"
            )));
        }
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| DevChainError::new(format!("cannot open {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| DevChainError::new(format!("cannot open {}: {e}", log.display())))?;
    let mut command = Command::new(&bin);
    command
        .args(options.args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if detach {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        die_with_parent(&mut command);
    }
    command
        .spawn()
        .map_err(|e| DevChainError::new(format!("cannot start {}: {e}", bin.display())))
}

/// Waits until the anvil spawned by [`spawn_anvil`] listens and answers `eth_chainId` with
/// `options.chain_id`; returns its URL. Fails early (with the log's tail) if it exits.
pub async fn wait_anvil(child: &mut Child, options: &AnvilOptions, log: &Path) -> Result<String> {
    let deadline = Instant::now() + ANVIL_START_TIMEOUT;
    let exited = |child: &mut Child| -> Result<()> {
        match child.try_wait() {
            Ok(Some(status)) => Err(DevChainError::new(format!(
                "anvil exited ({status}) before it answered; its log {}:\n{}",
                log.display(),
                tail(log, LOG_TAIL_LINES)
            ))),
            _ => Ok(()),
        }
    };
    // With --port 0 anvil picks the port and prints "Listening on 127.0.0.1:PORT".
    let url = match options.port {
        Some(port) => format!("http://127.0.0.1:{port}"),
        None => loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("Listening on "))
            {
                break format!("http://{}", addr.trim());
            }
            exited(child)?;
            if Instant::now() >= deadline {
                return Err(DevChainError::new(format!(
                    "anvil did not say where it listens within {ANVIL_START_TIMEOUT:?}; log {}",
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        },
    };
    let rpc = DevRpc::connect(&url)?;
    loop {
        match rpc.inner.chain.chain_id().await {
            Ok(id) if id == options.chain_id => return Ok(url),
            Ok(id) => {
                return Err(DevChainError::new(format!(
                    "{url} answers chain id {id}, expected {} (another node on that port?)",
                    options.chain_id
                )))
            }
            Err(e) => {
                exited(child)?;
                if Instant::now() >= deadline {
                    return Err(DevChainError::new(format!(
                        "anvil at {url} did not answer eth_chainId within \
                         {ANVIL_START_TIMEOUT:?}: {e}"
                    )));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running anvil, owned by the test: SIGKILLed and reaped on `Drop`. Derefs to its
/// [`DevRpc`].
pub struct Anvil {
    child: Option<Child>,
    url: String,
    options: AnvilOptions,
    rpc: DevRpc,
    log: PathBuf,
    _dir: TempDir,
}

impl Anvil {
    /// Starts anvil with `--chain-id chain_id`, automining, on a free loopback port, and waits
    /// until it answers.
    pub async fn start(chain_id: u64) -> Anvil {
        Self::start_with(AnvilOptions::new(chain_id)).await
    }

    pub async fn start_with(options: AnvilOptions) -> Anvil {
        or_panic(Self::try_start_with(options).await)
    }

    pub async fn try_start_with(options: AnvilOptions) -> Result<Anvil> {
        let dir = tempfile::Builder::new()
            .prefix("x402-anvil-")
            .tempdir()
            .map_err(|e| DevChainError::new(format!("temporary directory: {e}")))?;
        let log = dir.path().join("anvil.log");
        let mut child = spawn_anvil(&options, &log, false)?;
        let url = match wait_anvil(&mut child, &options, &log).await {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let rpc = DevRpc::connect(&url)?;
        Ok(Anvil {
            child: Some(child),
            url,
            options,
            rpc,
            log,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The chain id anvil was started with (no RPC; `anvil.rpc().chain_id().await` asks it).
    pub fn chain_id(&self) -> u64 {
        self.options.chain_id
    }

    /// `eip155:<chain id>`.
    pub fn network(&self) -> String {
        format!("eip155:{}", self.options.chain_id)
    }

    pub fn options(&self) -> &AnvilOptions {
        &self.options
    }

    pub fn rpc(&self) -> &DevRpc {
        &self.rpc
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// anvil's output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs anvil now (an RPC outage); its chain is gone for good.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Deref for Anvil {
    type Target = DevRpc;

    fn deref(&self) -> &DevRpc {
        &self.rpc
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- anvil ({}) log: last {LOG_TAIL_LINES} lines -----\n{}\n----- end of anvil log -----",
                self.url,
                tail(&self.log, LOG_TAIL_LINES)
            );
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC helpers.

/// JSON-RPC to a dev chain: the node's own [`AlloyChain`] (the [`Chain`] seam) plus an alloy
/// provider for what the seam does not have (logs, anvil's methods). Cheap to clone.
#[derive(Clone)]
pub struct DevRpc {
    inner: Arc<RpcInner>,
}

struct RpcInner {
    url: String,
    chain: AlloyChain,
    provider: RootProvider<Ethereum>,
    /// Helper transactions are sent one at a time (one nonce sequence per sender).
    send_lock: tokio::sync::Mutex<()>,
}

impl DevRpc {
    /// Connects (lazily) to `url`.
    pub fn connect(url: &str) -> Result<DevRpc> {
        let client = rpc_http_client(&Roots::for_urls(&[url], None))
            .map_err(|e| DevChainError::new(format!("RPC URL {url}: {e}")))?;
        let chain = AlloyChain::new(
            &[url],
            ChainLimits {
                call_timeout: CALL_TIMEOUT,
            },
            &client,
        )
        .map_err(|e| DevChainError::new(format!("RPC URL {url}: {e}")))?;
        let parsed = url
            .parse()
            .map_err(|e| DevChainError::new(format!("RPC URL {url}: {e}")))?;
        Ok(DevRpc {
            inner: Arc::new(RpcInner {
                url: url.to_owned(),
                chain,
                provider: rpc_provider(&client, parsed),
                send_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The node's [`Chain`] implementation over this RPC.
    pub fn chain(&self) -> &dyn Chain {
        &self.inner.chain
    }

    /// alloy's provider over this RPC.
    pub fn provider(&self) -> &RootProvider<Ethereum> {
        &self.inner.provider
    }

    /// Any JSON-RPC call, e.g. `rpc("evm_snapshot", json!([]))`.
    pub async fn try_rpc(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.inner
            .provider
            .raw_request::<_, serde_json::Value>(method.to_owned().into(), params)
            .await
            .map_err(|e| DevChainError::new(format!("{method} on {}: {e}", self.inner.url)))
    }

    pub async fn rpc(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        or_panic(self.try_rpc(method, params).await)
    }

    pub async fn chain_id(&self) -> u64 {
        self.inner
            .chain
            .chain_id()
            .await
            .unwrap_or_else(|e| panic!("eth_chainId on {}: {e}", self.inner.url))
    }

    pub async fn block_number(&self) -> u64 {
        self.inner
            .chain
            .block_number()
            .await
            .unwrap_or_else(|e| panic!("eth_blockNumber on {}: {e}", self.inner.url))
    }

    /// The transaction count of `address` in mined blocks: for a signer, the number of its
    /// transactions that were mined.
    pub async fn nonce_of(&self, address: Address) -> u64 {
        self.inner
            .chain
            .nonce(address, NonceTag::Latest)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "eth_getTransactionCount({address}) on {}: {e}",
                    self.inner.url
                )
            })
    }

    /// The transaction count of `address` including anvil's pending pool.
    pub async fn pending_nonce_of(&self, address: Address) -> u64 {
        self.inner
            .chain
            .nonce(address, NonceTag::Pending)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "eth_getTransactionCount({address}) on {}: {e}",
                    self.inner.url
                )
            })
    }

    /// The ether balance of `address`, in wei.
    pub async fn eth_balance(&self, address: Address) -> U256 {
        self.inner
            .provider
            .get_balance(address)
            .await
            .unwrap_or_else(|e| panic!("eth_getBalance({address}) on {}: {e}", self.inner.url))
    }

    /// `eth_call` at the latest block.
    pub async fn call(
        &self,
        from: Option<Address>,
        to: Address,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, ChainError> {
        self.inner
            .chain
            .eth_call(CallRequest { from, to, data })
            .await
    }

    /// Mines `blocks` blocks now (`anvil_mine`), whatever the mining mode.
    pub async fn mine(&self, blocks: u64) {
        self.rpc("anvil_mine", serde_json::json!([format!("{blocks:#x}")]))
            .await;
    }

    /// Switches automining on or off (`evm_setAutomine`).
    pub async fn set_automine(&self, on: bool) {
        self.rpc("evm_setAutomine", serde_json::json!([on])).await;
    }

    /// Mines a block every `secs` seconds; 0 switches interval mining off
    /// (`evm_setIntervalMining`).
    pub async fn set_block_time(&self, secs: u64) {
        self.rpc("evm_setIntervalMining", serde_json::json!([secs]))
            .await;
    }

    /// Whether a transaction gets mined without [`DevRpc::mine`] (automine or interval mining).
    pub async fn mines_by_itself(&self) -> Result<bool> {
        let auto = self
            .try_rpc("anvil_getAutomine", serde_json::json!([]))
            .await?;
        if auto.as_bool() == Some(true) {
            return Ok(true);
        }
        let interval = self
            .try_rpc("anvil_getIntervalMining", serde_json::json!([]))
            .await?;
        Ok(interval.as_u64().is_some_and(|s| s > 0))
    }

    /// The receipt of `hash`, if it is mined.
    pub async fn receipt(&self, hash: B256) -> Option<Receipt> {
        self.inner.chain.receipt(hash).await.unwrap_or_else(|e| {
            panic!(
                "eth_getTransactionReceipt({hash}) on {}: {e}",
                self.inner.url
            )
        })
    }

    /// Waits up to `timeout` for the receipt of `hash` (mines nothing).
    pub async fn wait_receipt(&self, hash: B256, timeout: Duration) -> Receipt {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(receipt) = self.receipt(hash).await {
                return receipt;
            }
            assert!(
                Instant::now() < deadline,
                "no receipt for {hash} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs (EIP-1559, the node's own [`sign_eip1559`]) and sends a transaction from `signer`
    /// with its next nonce, and waits for its receipt; mines a block if anvil would not. Fails
    /// if the transaction reverts. `to: None` deploys `input`.
    pub async fn try_send(
        &self,
        signer: &PrivateKeySigner,
        to: Option<Address>,
        input: Vec<u8>,
        gas_limit: u64,
    ) -> Result<Receipt> {
        let _one_at_a_time = self.inner.send_lock.lock().await;
        let rpc_err = |what: &str, e: ChainError| {
            DevChainError::new(format!("{what} on {}: {e}", self.inner.url))
        };
        let chain_id = self
            .inner
            .chain
            .chain_id()
            .await
            .map_err(|e| rpc_err("eth_chainId", e))?;
        let nonce = self
            .inner
            .chain
            .nonce(signer.address(), NonceTag::Pending)
            .await
            .map_err(|e| rpc_err("eth_getTransactionCount", e))?;
        let fees = self
            .inner
            .chain
            .fees()
            .await
            .map_err(|e| rpc_err("fees", e))?;
        let signed = sign_eip1559(
            signer,
            &Eip1559Request {
                chain_id,
                nonce,
                gas_limit,
                max_fee_per_gas: fees.max_fee_per_gas(),
                max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
                to,
                value: U256::ZERO,
                input,
            },
        )
        .map_err(|e| DevChainError::new(format!("signing: {e}")))?;
        let hash = self
            .inner
            .chain
            .send_raw_transaction(signed.raw)
            .await
            .map_err(|e| rpc_err("eth_sendRawTransaction", e))?;
        let started = Instant::now();
        let mut mined_by_us = false;
        loop {
            let receipt = self
                .inner
                .chain
                .receipt(hash)
                .await
                .map_err(|e| rpc_err("eth_getTransactionReceipt", e))?;
            if let Some(receipt) = receipt {
                if !receipt.status {
                    return Err(DevChainError::new(format!(
                        "transaction {hash} from {} reverted",
                        signer.address()
                    )));
                }
                return Ok(receipt);
            }
            if !mined_by_us
                && started.elapsed() > Duration::from_millis(500)
                && !self.mines_by_itself().await?
            {
                self.try_rpc("evm_mine", serde_json::json!([])).await?;
                mined_by_us = true;
            }
            if started.elapsed() > RECEIPT_TIMEOUT {
                return Err(DevChainError::new(format!(
                    "transaction {hash} was not mined within {RECEIPT_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn send(
        &self,
        signer: &PrivateKeySigner,
        to: Option<Address>,
        input: Vec<u8>,
        gas_limit: u64,
    ) -> Receipt {
        or_panic(self.try_send(signer, to, input, gas_limit).await)
    }
}

// ---------------------------------------------------------------------------------------------
// The token.

/// One `Transfer` event of the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferLog {
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub tx_hash: B256,
    pub block_number: u64,
    pub log_index: u64,
}

/// A payer's signed EIP-3009 authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedAuthorization {
    pub authorization: TransferWithAuthorization,
    /// 65 bytes `r‖s‖v`.
    pub signature: [u8; 65],
}

/// Our TestUSDC (EIP-3009, 6 decimals, anyone may mint) on a dev chain.
#[derive(Clone)]
pub struct DevToken {
    pub address: Address,
    /// The EIP-712 domain name and version (constructor arguments).
    pub name: String,
    pub version: String,
    pub chain_id: u64,
    rpc: DevRpc,
}

impl fmt::Debug for DevToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevToken")
            .field("address", &self.address)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("chain_id", &self.chain_id)
            .field("rpc", &self.rpc.inner.url)
            .finish()
    }
}

/// The creation bytecode in one of our contracts' artifacts (`contracts/artifacts/*.json`,
/// given relative to the workspace root).
pub fn contract_bytecode(artifact: &str) -> Result<Vec<u8>> {
    let path = workspace_root().join(artifact);
    let text = fs::read(&path)
        .map_err(|e| DevChainError::new(format!("cannot read {}: {e}", path.display())))?;
    let json: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| DevChainError::new(format!("{}: {e}", path.display())))?;
    let bytecode = json["bytecode"]
        .as_str()
        .ok_or_else(|| DevChainError::new(format!("{} has no bytecode", path.display())))?;
    hex::decode(bytecode.trim_start_matches("0x"))
        .map_err(|e| DevChainError::new(format!("{}: bytecode: {e}", path.display())))
}

impl DevToken {
    /// Deploys TestUSDC from `contracts/artifacts/TestUSDC.json` with `constructor(name,
    /// version)`, from [`DEPLOYER`].
    pub async fn deploy(anvil: &Anvil, name: &str, version: &str) -> DevToken {
        or_panic(Self::try_deploy(anvil.rpc(), name, version).await)
    }

    pub async fn try_deploy(rpc: &DevRpc, name: &str, version: &str) -> Result<DevToken> {
        let mut init = contract_bytecode(TEST_USDC_ARTIFACT)?;
        init.extend((name.to_owned(), version.to_owned()).abi_encode_params());
        let deployer = key_signer(DEPLOYER_KEY);
        let chain_id =
            rpc.inner.chain.chain_id().await.map_err(|e| {
                DevChainError::new(format!("eth_chainId on {}: {e}", rpc.inner.url))
            })?;
        let receipt = rpc.try_send(&deployer, None, init, 5_000_000).await?;
        // The contract address is the deployer's and the nonce its transaction used; read it
        // back from the transaction rather than guess the nonce.
        let tx: serde_json::Value = rpc
            .try_rpc(
                "eth_getTransactionByHash",
                serde_json::json!([receipt.transaction_hash]),
            )
            .await?;
        let nonce = tx["nonce"]
            .as_str()
            .and_then(|n| u64::from_str_radix(n.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| DevChainError::new(format!("no nonce in transaction {tx}")))?;
        let address = DEPLOYER.create(nonce);
        let code =
            rpc.inner.chain.code_at(address).await.map_err(|e| {
                DevChainError::new(format!("eth_getCode on {}: {e}", rpc.inner.url))
            })?;
        if code.is_empty() {
            return Err(DevChainError::new(format!(
                "no code at {address} after deploying TestUSDC"
            )));
        }
        Ok(DevToken {
            address,
            name: name.to_owned(),
            version: version.to_owned(),
            chain_id,
            rpc: rpc.clone(),
        })
    }

    /// A token already deployed at `address` (e.g. by `x402-devchain`).
    pub fn at(rpc: &DevRpc, chain_id: u64, address: Address, name: &str, version: &str) -> Self {
        DevToken {
            address,
            name: name.to_owned(),
            version: version.to_owned(),
            chain_id,
            rpc: rpc.clone(),
        }
    }

    pub fn rpc(&self) -> &DevRpc {
        &self.rpc
    }

    /// `eip155:<chain id>`.
    pub fn network(&self) -> String {
        format!("eip155:{}", self.chain_id)
    }

    /// Mints `amount` base units to `to` (from [`DEPLOYER`]; anyone may mint).
    pub async fn mint(&self, to: Address, amount: U256) {
        or_panic(self.try_mint(to, amount).await)
    }

    pub async fn try_mint(&self, to: Address, amount: U256) -> Result<()> {
        let data = mintCall { to, amount }.abi_encode();
        self.rpc
            .try_send(&key_signer(DEPLOYER_KEY), Some(self.address), data, 200_000)
            .await
            .map(|_| ())
    }

    async fn read(&self, what: &str, data: Vec<u8>) -> Vec<u8> {
        self.rpc
            .call(None, self.address, data)
            .await
            .unwrap_or_else(|e| panic!("{what} of token {}: {e}", self.address))
    }

    /// `balanceOf(owner)`.
    pub async fn balance_of(&self, owner: Address) -> U256 {
        let ret = self
            .read("balanceOf", eip3009::balance_of_calldata(owner))
            .await;
        eip3009::decode_uint256(&ret).expect("balanceOf answers a uint256")
    }

    /// `authorizationState(authorizer, nonce)`: whether the nonce is used (or canceled).
    pub async fn authorization_state(&self, authorizer: Address, nonce: B256) -> bool {
        let ret = self
            .read(
                "authorizationState",
                eip3009::authorization_state_calldata(authorizer, nonce),
            )
            .await;
        eip3009::decode_bool(&ret).expect("authorizationState answers a bool")
    }

    /// The token's EIP-712 domain (what `extra.name` / `extra.version` must say).
    pub fn domain(&self) -> Eip712Domain {
        eip3009::domain(&self.name, &self.version, self.chain_id, self.address)
    }

    /// `payer` signs a `TransferWithAuthorization` of `value` to `to`, valid from 0 until
    /// `valid_before` (Unix seconds), with a random nonce.
    pub fn authorize(
        &self,
        payer: &PrivateKeySigner,
        to: Address,
        value: U256,
        valid_before: u64,
    ) -> SignedAuthorization {
        let authorization = TransferWithAuthorization {
            from: payer.address(),
            to,
            value,
            validAfter: U256::ZERO,
            validBefore: U256::from(valid_before),
            nonce: B256::from(rand::random::<[u8; 32]>()),
        };
        self.sign(payer, authorization)
    }

    /// `payer` signs `authorization` under this token's domain.
    pub fn sign(
        &self,
        payer: &PrivateKeySigner,
        authorization: TransferWithAuthorization,
    ) -> SignedAuthorization {
        let signature = eip3009::sign_authorization(payer, &authorization, &self.domain())
            .expect("sign the authorization");
        SignedAuthorization {
            authorization,
            signature,
        }
    }

    async fn logs(&self, filter: Filter) -> Vec<alloy::rpc::types::Log> {
        self.rpc
            .inner
            .provider
            .get_logs(&filter.address(self.address))
            .await
            .unwrap_or_else(|e| panic!("eth_getLogs of token {}: {e}", self.address))
    }

    /// Every `Transfer` of the token in blocks `from_block..=latest` (mints included: they come
    /// from the zero address).
    pub async fn transfer_logs(&self, from_block: u64) -> Vec<TransferLog> {
        let filter = Filter::new()
            .from_block(from_block)
            .event_signature(eip3009::transfer_topic());
        self.logs(filter)
            .await
            .iter()
            .filter_map(to_transfer_log)
            .collect()
    }

    /// The transactions that used `authorizer`'s `nonce` (emitted `AuthorizationUsed`).
    pub async fn authorization_used_txs(&self, authorizer: Address, nonce: B256) -> Vec<B256> {
        let filter = Filter::new()
            .from_block(0u64)
            .event_signature(eip3009::authorization_used_topic())
            .topic1(authorizer.into_word())
            .topic2(nonce);
        self.logs(filter)
            .await
            .iter()
            .filter_map(|l| l.transaction_hash)
            .collect()
    }

    /// The `Transfer`s made under `authorizer`'s `nonce`: those of the transactions that emitted
    /// `AuthorizationUsed(authorizer, nonce)`. A settled payment has exactly one.
    pub async fn transfers_of_authorization(
        &self,
        authorizer: Address,
        nonce: B256,
    ) -> Vec<TransferLog> {
        let txs = self.authorization_used_txs(authorizer, nonce).await;
        if txs.is_empty() {
            return Vec::new();
        }
        self.transfer_logs(0)
            .await
            .into_iter()
            .filter(|t| txs.contains(&t.tx_hash))
            .collect()
    }
}

fn to_transfer_log(log: &alloy::rpc::types::Log) -> Option<TransferLog> {
    let (from, to, value) = eip3009::decode_transfer_log(log.topics(), &log.data().data)?;
    Some(TransferLog {
        from,
        to,
        value,
        tx_hash: log.transaction_hash?,
        block_number: log.block_number?,
        log_index: log.log_index?,
    })
}

// ---------------------------------------------------------------------------------------------
// The node's configuration.

/// The `[facilitator]` section for `networks` — `(network, v1_name, rpc_url, token)`, the token
/// listed as the one accepted asset — with every network's signer keys in the environment
/// variable `signer_keys_env`. Exactly what `node/src/config/facilitator.rs` parses.
pub fn facilitator_toml(
    networks: &[(&str, Option<&str>, &str, &DevToken)],
    signer_keys_env: &str,
) -> String {
    facilitator_toml_with(networks, signer_keys_env, "", "")
}

/// [`facilitator_toml`] with extra TOML lines: `facilitator_keys` inside `[facilitator]` (e.g.
/// `"settle_wait_ms = 5000"`), `network_keys` inside every `[[facilitator.networks]]` (e.g.
/// `"receipt_timeout_ms = 2000\nconfirmations = 2"`).
pub fn facilitator_toml_with(
    networks: &[(&str, Option<&str>, &str, &DevToken)],
    signer_keys_env: &str,
    facilitator_keys: &str,
    network_keys: &str,
) -> String {
    let mut out = String::from("[facilitator]\n");
    push_lines(&mut out, facilitator_keys);
    for (network, v1_name, rpc_url, token) in networks {
        out.push_str("\n[[facilitator.networks]]\n");
        out.push_str(&format!("network = {}\n", toml_str(network)));
        if let Some(name) = v1_name {
            out.push_str(&format!("v1_name = {}\n", toml_str(name)));
        }
        out.push_str(&format!("rpc_urls = [{}]\n", toml_str(rpc_url)));
        out.push_str(&format!(
            "signer_keys_env = {}\n",
            toml_str(signer_keys_env)
        ));
        push_lines(&mut out, network_keys);
        out.push_str("\n[[facilitator.networks.assets]]\n");
        out.push_str(&format!(
            "address = {}\n",
            toml_str(&token.address.to_checksum(None))
        ));
        out.push_str(&format!("name = {}\n", toml_str(&token.name)));
        out.push_str(&format!("version = {}\n", toml_str(&token.version)));
    }
    out
}

fn push_lines(out: &mut String, lines: &str) {
    let lines = lines.trim();
    if !lines.is_empty() {
        out.push_str(lines);
        out.push('\n');
    }
}

// ---------------------------------------------------------------------------------------------
// Everything at once.

/// anvil, TestUSDC deployed with [`DEFAULT_TOKEN_NAME`] / [`DEFAULT_TOKEN_VERSION`] and
/// [`PAYER_FUNDS`] minted to [`PAYER`]: the world an end-to-end payment test runs in.
pub struct DevChain {
    pub anvil: Anvil,
    pub token: DevToken,
}

impl DevChain {
    /// Starts anvil (automine) with `chain_id` and sets up the token.
    pub async fn start(chain_id: u64) -> DevChain {
        Self::start_with(AnvilOptions::new(chain_id)).await
    }

    /// Starts anvil with `options`, puts the canonical contracts in place
    /// ([`crate::canonical`]: Permit2, Multicall3) and sets up the token (mined by the helpers
    /// even with [`Mining::Manual`]).
    pub async fn start_with(options: AnvilOptions) -> DevChain {
        let anvil = Anvil::start_with(options).await;
        or_panic(crate::canonical::install(anvil.rpc()).await);
        let token = DevToken::deploy(&anvil, DEFAULT_TOKEN_NAME, DEFAULT_TOKEN_VERSION).await;
        token.mint(PAYER, U256::from(PAYER_FUNDS)).await;
        DevChain { anvil, token }
    }

    /// `eip155:<chain id>`.
    pub fn network(&self) -> String {
        self.anvil.network()
    }

    /// The v1 name of the chain in [`DevChain::facilitator_toml`] ([`default_v1_name`]).
    pub fn v1_name(&self) -> Option<String> {
        default_v1_name(self.anvil.chain_id())
    }

    /// The `[facilitator]` section for this chain, keys in [`SIGNER_KEYS_ENV`].
    pub fn facilitator_toml(&self) -> String {
        let network = self.network();
        let v1_name = self.v1_name();
        facilitator_toml(
            &[(&network, v1_name.as_deref(), self.anvil.url(), &self.token)],
            SIGNER_KEYS_ENV,
        )
    }

    pub fn payer(&self) -> PrivateKeySigner {
        key_signer(PAYER_KEY)
    }

    /// The terms of a test payment ([`PAYMENT_AMOUNT`] of the token to [`MERCHANT`]) for
    /// `resource`: x402 v2, or v1 under the chain's v1 name.
    pub fn payment_terms(&self, x402_version: u8, resource: &str) -> PaymentTerms {
        let token = &self.token;
        let chain_id = ChainId(token.chain_id);
        let (asset, pay_to) = (wire_address(token.address), wire_address(MERCHANT));
        let amount = x402::U256::from_u64(PAYMENT_AMOUNT);
        let mut terms = if x402_version == 1 {
            let name = self
                .v1_name()
                .unwrap_or_else(|| panic!("chain {} has no v1 name", token.chain_id));
            PaymentTerms::v1(&name, chain_id, asset, pay_to, amount)
        } else {
            PaymentTerms::v2(chain_id, asset, pay_to, amount)
        };
        terms.token_name = token.name.clone();
        terms.token_version = token.version.clone();
        terms.resource = resource.to_owned();
        terms
    }

    /// A payment of [`DevChain::payment_terms`] signed now by the dev payer, with a fresh
    /// random nonce.
    pub fn signed_payment(&self, x402_version: u8, resource: &str) -> FacilitatorRequest {
        PaymentBuilder::new(self.payment_terms(x402_version, resource))
            .expect("terms")
            .sign_now(&self.payer(), &mut rand::thread_rng())
            .expect("sign")
    }
}

/// What a test payment pays: base units (6 decimals) of the token.
pub const PAYMENT_AMOUNT: u64 = 10_000;

/// An alloy address as an x402 wire address.
pub fn wire_address(a: Address) -> x402::Address {
    x402::Address::from_bytes(a.into_array())
}
