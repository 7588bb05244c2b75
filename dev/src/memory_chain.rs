//! [`MemoryChain`]: an in-memory EVM chain with our EIP-3009 token and ERC-1271 wallet, behind
//! the [`Chain`] trait.
//!
//! What it is for: fast tests of the facilitator's verify and settle code, and turmoil
//! simulations. It is deterministic: block timestamps come from the [`SharedClock`] it is given
//! (never the wall clock), nothing draws random numbers, and every collection is ordered
//! (`BTreeMap`), so the same calls in the same order give the same hashes, blocks and answers.
//!
//! What it models, as anvil running our contracts would show it through the [`Chain`] trait:
//!
//! - accounts with an ETH balance and a nonce ([`MemoryChain::fund`]);
//! - tokens with the behaviour of `contracts/src/TestUSDC.sol`, function by function: both
//!   `transferWithAuthorization` overloads (and `receiveWithAuthorization`,
//!   `cancelAuthorization`, `mint`, the ERC-20 functions and the views), the EIP-712 domain
//!   `(name, version, chainId, verifyingContract)`, the strict time window against the block
//!   timestamp, ERC-1271 for a `from` with code, the exact revert strings, `Panic(0x11)` on
//!   overflow, and the `AuthorizationUsed` / `Transfer` / `Approval` / `AuthorizationCanceled`
//!   logs with their real topics ([`MemoryChain::deploy_token`]);
//! - wallets with the behaviour of `contracts/src/TestWallet.sol` (`isValidSignature`, `owner`,
//!   `execute`) ([`MemoryChain::deploy_wallet`]);
//! - Solidity's calldata handling: an unknown selector, malformed arguments (short calldata,
//!   dirty address bits, a `uint8` above 255) or ETH sent to these non-payable contracts revert
//!   with empty data; a call to an address without code succeeds and returns nothing;
//! - a transaction pool like anvil's, with anvil's refusals (code and message: `nonce too low`,
//!   `Insufficient funds for gas * price + value`, `invalid chain id for signer`, `max fee per
//!   gas less than block base fee`, `replacement transaction underpriced`, …): EIP-2718
//!   decoding, sender recovery, transactions beyond a nonce gap held until the gap is filled,
//!   replacement of a pooled transaction only with a 10 % fee bump; the same bytes of a pooled
//!   transaction again are answered with its hash (geth's `already known`, which
//!   `AlloyChain` turns into the hash; anvil says `transaction already imported`);
//! - mining: automine (each executable transaction in its own block at once) or manual
//!   ([`MemoryChain::mine`]); block timestamps are `max(clock, previous + 1)` seconds; a
//!   reverted transaction consumes its nonce and its gas and has a receipt with status false and
//!   no logs;
//! - fault injection: the RPC unreachable, receipts hidden, the answer to a broadcast lost.
//!
//! What it does not model:
//!
//! - no EVM: contracts are Rust code, only the two above exist, and a contract-creation
//!   transaction is refused (deploy with [`MemoryChain::deploy_token`] instead);
//! - gas is a fixed figure per kind of call ([`TRANSFER_GAS`] to an address without code,
//!   [`CONTRACT_CALL_GAS`] to a contract, whatever it does): no calldata cost, no cold/warm
//!   storage, no refunds; a gas limit below that figure runs out of gas (status false, the whole
//!   limit used); [`Chain::estimate_gas`] answers that figure;
//! - the base fee stays where [`MemoryChain::set_base_fee`] puts it; tips go nowhere (no
//!   coinbase); blocks have no gas limit beyond refusing one transaction above
//!   [`BLOCK_GAS_LIMIT`];
//! - no reorgs, no logs queries, no block or transaction lookups beyond receipts, no blob or
//!   EIP-7702 transactions, no per-account pool limits (one global cap,
//!   [`MAX_POOL_TRANSACTIONS`]), no eviction of pooled transactions;
//! - `eth_call` and `eth_estimateGas` run on the latest state with the timestamp the next block
//!   would get (as anvil does), never at an older block;
//! - re-broadcasting a transaction that was already mined answers `nonce too low`, as anvil and
//!   geth do (only a transaction still in the pool is `already known`).
//!
//! The differential test in `dev/tests/memory_chain.rs` runs the same calls and transactions
//! against anvil with the real contracts and requires identical answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use alloy::consensus::{Transaction, TxEnvelope};
use alloy::eips::eip2718::Decodable2718;
use alloy::primitives::{keccak256, Bytes, FixedBytes, LogData, Signature};
use alloy::sol;
use alloy::sol_types::{
    ContractError, Eip712Domain, GenericRevertReason, Panic, PanicKind, Revert, SolCall, SolError,
    SolEvent, SolInterface, SolStruct, SolValue,
};

use x402_node::chain::{
    Address, CallRequest, Chain, ChainError, ChainFuture, Fees, Log, NonceTag, Receipt, B256, U256,
};
use x402_node::seams::SharedClock;
use x402_protocol::x402::eip3009::{self, TransferWithAuthorization};

/// Gas used by a transaction to an address without code (and what `eth_estimateGas` answers for
/// a call to one).
pub const TRANSFER_GAS: u64 = 21_000;
/// Gas used by any transaction to a contract, whether it succeeds or reverts (and what
/// `eth_estimateGas` answers for a call that succeeds). Close to what a first
/// `transferWithAuthorization` to a new payee costs on anvil.
pub const CONTRACT_CALL_GAS: u64 = 80_000;
/// A transaction with a larger gas limit is refused (`intrinsic gas too high`).
pub const BLOCK_GAS_LIMIT: u64 = 30_000_000;
/// The base fee a new chain starts with: 1 gwei.
pub const DEFAULT_BASE_FEE: u128 = 1_000_000_000;
/// The tip a new chain suggests (`eth_maxPriorityFeePerGas`): 1 gwei, as anvil.
pub const DEFAULT_PRIORITY_FEE: u128 = 1_000_000_000;
/// Transactions the pool holds at most; beyond it a broadcast is refused (`txpool is full`).
pub const MAX_POOL_TRANSACTIONS: usize = 4096;
/// Largest raw transaction accepted, in bytes (geth's 128 KiB; beyond it `oversized data`).
pub const MAX_RAW_TRANSACTION_BYTES: usize = 128 * 1024;
/// A replacement of a pooled transaction (same sender and nonce) must raise both its fee cap and
/// its tip by at least this many percent (geth's and anvil's default).
pub const REPLACEMENT_BUMP_PERCENT: u128 = 10;
/// JSON-RPC error code of the pool's refusals (`nonce too low`, `Insufficient funds …`,
/// `replacement transaction underpriced`, …): anvil's "transaction rejected" (geth uses -32000;
/// match on the message, not the code).
pub const REJECTED_CODE: i64 = -32003;
/// JSON-RPC error code of the gas-limit refusals (`intrinsic gas too low` / `too high`), as
/// anvil.
pub const GAS_REJECTED_CODE: i64 = -32000;
/// JSON-RPC error code of raw bytes that do not decode to a transaction, as anvil.
pub const UNDECODABLE_CODE: i64 = -32602;
/// Nested calls (a wallet's `execute` calling another contract) deeper than this fail, as they
/// would run out of gas long before the EVM's 1024 limit with [`CONTRACT_CALL_GAS`].
pub const MAX_CALL_DEPTH: usize = 16;

/// What `eth_getCode` answers for a token: a marker, not EVM bytecode (it starts with the
/// `INVALID` opcode, so nothing would mistake it for runnable code).
pub const TOKEN_CODE: &[u8] = b"\xfeMemoryChain:TestUSDC";
/// What `eth_getCode` answers for a wallet (see [`TOKEN_CODE`]).
pub const WALLET_CODE: &[u8] = b"\xfeMemoryChain:TestWallet";

sol! {
    /// The whole external interface of contracts/src/TestUSDC.sol.
    interface TestUsdc {
        function name() external view returns (string);
        function version() external view returns (string);
        function symbol() external view returns (string);
        function decimals() external view returns (uint8);
        function totalSupply() external view returns (uint256);
        function balanceOf(address account) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function TRANSFER_WITH_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
        function RECEIVE_WITH_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
        function CANCEL_AUTHORIZATION_TYPEHASH() external view returns (bytes32);
        function DOMAIN_SEPARATOR() external view returns (bytes32);
        function eip712Domain() external view returns (bytes1 fields, string name_, string version_, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);

        function mint(address to, uint256 amount) external;
        function transfer(address to, uint256 value) external returns (bool);
        function approve(address spender, uint256 value) external returns (bool);
        function transferFrom(address from, address to, uint256 value) external returns (bool);
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function receiveWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function receiveWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function cancelAuthorization(address authorizer, bytes32 nonce, bytes signature) external;

        event Transfer(address indexed from, address indexed to, uint256 value);
        event Approval(address indexed owner, address indexed spender, uint256 value);
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);
    }

    /// The whole external interface of contracts/src/TestWallet.sol.
    interface TestWallet {
        function owner() external view returns (address);
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
        function execute(address target, bytes data) external returns (bytes);
    }

    /// EIP-3009 `receiveWithAuthorization` typed data.
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }

    /// EIP-3009 `cancelAuthorization` typed data.
    struct CancelAuthorization {
        address authorizer;
        bytes32 nonce;
    }
}

/// One `Transfer` log of a mined transaction, for checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// The token that emitted it.
    pub token: Address,
    /// The payer; `Address::ZERO` for a mint.
    pub from: Address,
    /// The payee.
    pub to: Address,
    /// The amount, in the token's units.
    pub value: U256,
    /// The transaction that emitted it.
    pub tx_hash: B256,
    /// The block that transaction is in.
    pub block: u64,
}

/// An in-memory EVM chain with EIP-3009 tokens (see the module documentation for what it models
/// and what it does not). Shared as `Arc<MemoryChain>`, usable as a `SharedChain`.
///
/// The [`Chain`] methods answer at once (their futures are ready); the inherent methods set the
/// chain up, inject faults and let checkers look inside. One `std` mutex guards the state and is
/// never held across an `.await`.
pub struct MemoryChain {
    chain_id: u64,
    clock: SharedClock,
    state: Mutex<State>,
}

impl MemoryChain {
    /// A chain with id `chain_id` whose genesis block (number 0) is stamped with `clock`'s time;
    /// automine on, base fee [`DEFAULT_BASE_FEE`], tip [`DEFAULT_PRIORITY_FEE`], no accounts.
    pub fn new(chain_id: u64, clock: SharedClock) -> Arc<MemoryChain> {
        let now = now_secs(&clock);
        let genesis = Block {
            hash: keccak256(
                (
                    "x402-cluster MemoryChain genesis".to_owned(),
                    U256::from(chain_id),
                )
                    .abi_encode(),
            ),
            timestamp: now,
        };
        Arc::new(MemoryChain {
            chain_id,
            clock,
            state: Mutex::new(State {
                chain_id,
                automine: true,
                base_fee: DEFAULT_BASE_FEE,
                priority_fee: DEFAULT_PRIORITY_FEE,
                unavailable: false,
                hide_receipts: false,
                drop_send_responses: false,
                accounts: BTreeMap::new(),
                contracts: BTreeMap::new(),
                deployments: 0,
                blocks: vec![genesis],
                pool: BTreeMap::new(),
                pool_hashes: BTreeMap::new(),
                arrivals: 0,
                receipts: BTreeMap::new(),
                sent: BTreeMap::new(),
                transfers: Vec::new(),
                authorizations_used: BTreeMap::new(),
            }),
        })
    }

    // ---------------------------------------------------------------------------- set-up

    /// Adds `wei` to the ETH balance of `address` (saturating).
    pub fn fund(&self, address: Address, wei: U256) {
        let mut s = self.lock();
        let account = s.accounts.entry(address).or_default();
        account.balance = account.balance.saturating_add(wei);
    }

    /// Deploys a TestUSDC with EIP-712 domain name `name` and version `version` (its
    /// constructor arguments). The address is derived from a deployment counter, so the n-th
    /// contract of every chain has the same address.
    pub fn deploy_token(&self, name: &str, version: &str) -> Address {
        let mut s = self.lock();
        let address = s.next_contract_address();
        let domain = eip3009::domain(name, version, self.chain_id, address);
        s.contracts.insert(
            address,
            Contract::Token(Box::new(Token {
                name: name.to_owned(),
                version: version.to_owned(),
                domain,
                total_supply: U256::ZERO,
                balances: BTreeMap::new(),
                allowances: BTreeMap::new(),
                authorizations: BTreeSet::new(),
            })),
        );
        address
    }

    /// Deploys a TestWallet owned by `owner`: its `isValidSignature(hash, sig)` answers the
    /// ERC-1271 magic value iff `sig` is a strict 65-byte signature of `hash` by `owner`.
    /// Addresses as in [`MemoryChain::deploy_token`].
    pub fn deploy_wallet(&self, owner: Address) -> Address {
        let mut s = self.lock();
        let address = s.next_contract_address();
        s.contracts.insert(address, Contract::Wallet { owner });
        address
    }

    /// Mints `amount` of `token` to `to`, as the token's `mint` would (total supply included),
    /// without a transaction: no block, no receipt, not in [`MemoryChain::transfers`].
    ///
    /// # Panics
    ///
    /// When `token` is not a token of this chain, `to` is the zero address or the total supply
    /// would overflow (the token's own `mint` would revert): a mistake in the test's set-up.
    pub fn mint(&self, token: Address, to: Address, amount: U256) {
        assert!(to != Address::ZERO, "ERC20: mint to the zero address");
        let mut s = self.lock();
        let t = token_mut(&mut s, token);
        t.total_supply = t
            .total_supply
            .checked_add(amount)
            .expect("total supply overflows");
        let balance = t.balance(to) + amount; // cannot overflow: balance ≤ total supply
        t.balances.insert(to, balance);
    }

    // ---------------------------------------------------------------------- configuration

    /// Automine on (the default): every executable transaction is executed at once, each in its
    /// own block. Off: transactions wait in the pool until [`MemoryChain::mine`]. Turning it on
    /// executes what is executable at once.
    pub fn set_automine(&self, on: bool) {
        let now = self.now();
        let mut s = self.lock();
        s.automine = on;
        if on {
            s.automine_ready(now);
        }
    }

    /// Mines one block (even an empty one) with every executable pooled transaction, in the
    /// order they arrived (each sender's in nonce order); the new block's number.
    pub fn mine(&self) -> u64 {
        let now = self.now();
        let mut s = self.lock();
        s.mine_block(now, None)
    }

    /// Sets the base fee of every later block, in wei. Pooled transactions whose fee cap is
    /// below it stay in the pool (and hold back their sender's later ones) until it drops.
    pub fn set_base_fee(&self, wei: u128) {
        self.lock().base_fee = wei;
    }

    /// Sets the tip [`Chain::fees`] suggests, in wei.
    pub fn set_priority_fee(&self, wei: u128) {
        self.lock().priority_fee = wei;
    }

    // -------------------------------------------------------------------- fault injection

    /// While on, every [`Chain`] method answers [`ChainError::Unavailable`] and changes nothing
    /// (the RPC is unreachable). The inherent methods keep working.
    pub fn set_unavailable(&self, on: bool) {
        self.lock().unavailable = on;
    }

    /// While on, [`Chain::receipt`] answers `None` for every transaction, even executed ones (a
    /// slow RPC, or a node that died between the broadcast and the receipt).
    pub fn set_hide_receipts(&self, on: bool) {
        self.lock().hide_receipts = on;
    }

    /// While on, [`Chain::send_raw_transaction`] processes the transaction as usual (it may be
    /// pooled and executed) and then answers [`ChainError::Unavailable`]: the answer was lost
    /// on the way back.
    pub fn set_drop_send_responses(&self, on: bool) {
        self.lock().drop_send_responses = on;
    }

    // ------------------------------------------------------------------------- inspection

    /// The ETH balance of `address`, in wei.
    pub fn eth_balance(&self, address: Address) -> U256 {
        self.lock().account(address).balance
    }

    /// `balanceOf(owner)` of `token`.
    ///
    /// # Panics
    ///
    /// When `token` is not a token of this chain.
    pub fn balance_of(&self, token: Address, owner: Address) -> U256 {
        token_ref(&self.lock(), token).balance(owner)
    }

    /// `authorizationState(authorizer, nonce)` of `token`: whether the nonce is used or
    /// canceled.
    ///
    /// # Panics
    ///
    /// When `token` is not a token of this chain.
    pub fn authorization_state(&self, token: Address, authorizer: Address, nonce: B256) -> bool {
        token_ref(&self.lock(), token)
            .authorizations
            .contains(&(authorizer, nonce))
    }

    /// The latest block: `(number, timestamp in seconds)`.
    pub fn latest_block(&self) -> (u64, u64) {
        let s = self.lock();
        (s.latest_number(), s.latest_timestamp())
    }

    /// How many transactions wait in the pool (beyond a nonce gap, under the base fee, or
    /// because automine is off).
    pub fn pending_count(&self) -> usize {
        self.lock().pool.len()
    }

    /// Every `Transfer` log of every mined transaction, in chain order (mints by transaction
    /// included, with `from` zero; set-up mints by [`MemoryChain::mint`] are not transactions).
    pub fn transfers(&self) -> Vec<TransferRecord> {
        self.lock().transfers.clone()
    }

    /// The mined transactions sent by `address`, in nonce order: `(nonce, hash, status)`.
    pub fn sent_by(&self, address: Address) -> Vec<(u64, B256, bool)> {
        self.lock()
            .sent
            .range((address, 0)..=(address, u64::MAX))
            .map(|(&(_, nonce), &(hash, status))| (nonce, hash, status))
            .collect()
    }

    /// How many `AuthorizationUsed(from, nonce)` logs `token` emitted in mined transactions (a
    /// checker's proof that an authorization settled at most once).
    pub fn authorization_used_count(&self, token: Address, from: Address, nonce: B256) -> usize {
        self.lock()
            .authorizations_used
            .get(&(token, from, nonce))
            .copied()
            .unwrap_or(0)
    }

    // --------------------------------------------------------------------------- internals

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        now_secs(&self.clock)
    }

    /// Runs one RPC method: unavailable → error, otherwise `f` on the state.
    fn rpc<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State, u64) -> Result<T, ChainError>,
    ) -> ChainFuture<'static, T> {
        let now = self.now();
        let mut s = self.lock();
        let result = if s.unavailable {
            Err(unavailable())
        } else {
            f(&mut s, now)
        };
        drop(s);
        Box::pin(std::future::ready(result))
    }
}

impl Chain for MemoryChain {
    fn chain_id(&self) -> ChainFuture<'_, u64> {
        self.rpc(|s, _| Ok(s.chain_id))
    }

    fn block_number(&self) -> ChainFuture<'_, u64> {
        self.rpc(|s, _| Ok(s.latest_number()))
    }

    fn code_at(&self, address: Address) -> ChainFuture<'_, Vec<u8>> {
        self.rpc(move |s, _| {
            Ok(match s.contracts.get(&address) {
                Some(Contract::Token(_)) => TOKEN_CODE.to_vec(),
                Some(Contract::Wallet { .. }) => WALLET_CODE.to_vec(),
                None => Vec::new(),
            })
        })
    }

    fn eth_call(&self, call: CallRequest) -> ChainFuture<'_, Vec<u8>> {
        self.rpc(move |s, now| s.simulate(&call, now).map(|(ret, _)| ret))
    }

    fn estimate_gas(&self, call: CallRequest) -> ChainFuture<'_, u64> {
        self.rpc(move |s, now| s.simulate(&call, now).map(|(_, gas)| gas))
    }

    fn nonce(&self, address: Address, tag: NonceTag) -> ChainFuture<'_, u64> {
        self.rpc(move |s, _| {
            let latest = s.account(address).nonce;
            Ok(match tag {
                NonceTag::Latest => latest,
                NonceTag::Pending => {
                    let mut next = latest;
                    while s.pool.contains_key(&(address, next)) {
                        next += 1;
                    }
                    next
                }
            })
        })
    }

    fn fees(&self) -> ChainFuture<'_, Fees> {
        self.rpc(|s, _| {
            Ok(Fees {
                base_fee_per_gas: s.base_fee,
                max_priority_fee_per_gas: s.priority_fee,
            })
        })
    }

    fn send_raw_transaction(&self, raw: Vec<u8>) -> ChainFuture<'_, B256> {
        self.rpc(move |s, now| {
            let result = s.admit(&raw, now);
            if s.drop_send_responses {
                return Err(ChainError::Unavailable(
                    "MemoryChain: the answer to eth_sendRawTransaction was lost".to_owned(),
                ));
            }
            result
        })
    }

    fn receipt(&self, tx_hash: B256) -> ChainFuture<'_, Option<Receipt>> {
        self.rpc(move |s, _| {
            if s.hide_receipts {
                return Ok(None);
            }
            Ok(s.receipts.get(&tx_hash).cloned())
        })
    }
}

fn unavailable() -> ChainError {
    ChainError::Unavailable("MemoryChain: set unavailable".to_owned())
}

fn rejected(message: &str) -> ChainError {
    ChainError::Rejected {
        code: REJECTED_CODE,
        message: message.to_owned(),
    }
}

fn now_secs(clock: &SharedClock) -> u64 {
    clock.now_ms() / 1000
}

/// The address of the deployer behind [`MemoryChain::deploy_token`] and
/// [`MemoryChain::deploy_wallet`] (nobody holds its key).
fn deployer() -> Address {
    Address::from_word(keccak256(b"x402-cluster MemoryChain deployer"))
}

/// The sender of a legacy, EIP-2930 or EIP-1559 transaction, with the EIP-2 rule (low `s`) a
/// node applies. (alloy's own `recover_signer` needs a feature of `alloy-consensus` the workspace
/// does not enable.)
fn recover_sender(envelope: &TxEnvelope) -> Result<Address, ChainError> {
    let (signature, sighash) = match envelope {
        TxEnvelope::Legacy(t) => (*t.signature(), t.signature_hash()),
        TxEnvelope::Eip2930(t) => (*t.signature(), t.signature_hash()),
        TxEnvelope::Eip1559(t) => (*t.signature(), t.signature_hash()),
        _ => return Err(rejected("transaction type not supported")),
    };
    if signature.s() > eip3009::SECP256K1_HALF_N {
        return Err(rejected("invalid transaction v, r, s values"));
    }
    signature
        .recover_address_from_prehash(&sighash)
        .map_err(|_| rejected("invalid sender"))
}

fn token_ref(s: &State, token: Address) -> &Token {
    match s.contracts.get(&token) {
        Some(Contract::Token(t)) => t,
        _ => panic!("{token} is not a token of this MemoryChain"),
    }
}

fn token_mut(s: &mut State, token: Address) -> &mut Token {
    match s.contracts.get_mut(&token) {
        Some(Contract::Token(t)) => t,
        _ => panic!("{token} is not a token of this MemoryChain"),
    }
}

// ------------------------------------------------------------------------------------ state

struct State {
    chain_id: u64,
    automine: bool,
    base_fee: u128,
    priority_fee: u128,
    unavailable: bool,
    hide_receipts: bool,
    drop_send_responses: bool,
    accounts: BTreeMap<Address, Account>,
    contracts: BTreeMap<Address, Contract>,
    /// Contracts deployed so far (the next deployment's address nonce).
    deployments: u64,
    /// `blocks[n]` is block `n`; block 0 is genesis.
    blocks: Vec<Block>,
    /// Pooled transactions by `(sender, nonce)`.
    pool: BTreeMap<(Address, u64), PooledTx>,
    /// Hashes of pooled transactions.
    pool_hashes: BTreeMap<B256, (Address, u64)>,
    /// Transactions admitted so far (the next one's arrival number).
    arrivals: u64,
    receipts: BTreeMap<B256, Receipt>,
    /// Mined transactions by `(sender, nonce)`: `(hash, status)`.
    sent: BTreeMap<(Address, u64), (B256, bool)>,
    transfers: Vec<TransferRecord>,
    /// `(token, authorizer, nonce)` → `AuthorizationUsed` logs mined.
    authorizations_used: BTreeMap<(Address, Address, B256), usize>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Account {
    balance: U256,
    nonce: u64,
}

struct Block {
    hash: B256,
    timestamp: u64,
}

enum Contract {
    Token(Box<Token>),
    Wallet { owner: Address },
}

struct Token {
    name: String,
    version: String,
    domain: Eip712Domain,
    total_supply: U256,
    balances: BTreeMap<Address, U256>,
    /// `(owner, spender)` → allowance.
    allowances: BTreeMap<(Address, Address), U256>,
    /// `(authorizer, nonce)` used or canceled.
    authorizations: BTreeSet<(Address, B256)>,
}

impl Token {
    fn balance(&self, owner: Address) -> U256 {
        self.balances.get(&owner).copied().unwrap_or(U256::ZERO)
    }
}

/// A transaction in the pool, with what execution needs taken out of its envelope.
struct PooledTx {
    hash: B256,
    sender: Address,
    nonce: u64,
    arrival: u64,
    gas_limit: u64,
    /// `maxFeePerGas` (the gas price of a legacy or EIP-2930 transaction).
    max_fee: u128,
    /// `maxPriorityFeePerGas`; `None` for legacy and EIP-2930 transactions.
    tip: Option<u128>,
    to: Address,
    value: U256,
    input: Vec<u8>,
}

impl PooledTx {
    fn effective_gas_price(&self, base_fee: u128) -> u128 {
        match self.tip {
            Some(tip) => self.max_fee.min(base_fee.saturating_add(tip)),
            None => self.max_fee,
        }
    }

    /// `gas_limit × max_fee + value`, what the sender must hold; `None` beyond `U256`.
    fn max_cost(&self) -> Option<U256> {
        U256::from(self.gas_limit)
            .checked_mul(U256::from(self.max_fee))?
            .checked_add(self.value)
    }
}

/// A transaction executed in a block being mined.
struct Executed {
    hash: B256,
    sender: Address,
    nonce: u64,
    status: bool,
    gas_used: u64,
    logs: Vec<Log>,
}

impl State {
    fn account(&self, address: Address) -> Account {
        self.accounts.get(&address).copied().unwrap_or_default()
    }

    fn latest_number(&self) -> u64 {
        self.blocks.len() as u64 - 1
    }

    fn latest_timestamp(&self) -> u64 {
        self.blocks.last().map(|b| b.timestamp).unwrap_or(0)
    }

    fn latest_hash(&self) -> B256 {
        self.blocks.last().map(|b| b.hash).unwrap_or_default()
    }

    /// The next block's timestamp: the clock, but always after the latest block.
    fn next_timestamp(&self, now: u64) -> u64 {
        now.max(self.latest_timestamp().saturating_add(1))
    }

    fn next_contract_address(&mut self) -> Address {
        let address = deployer().create(self.deployments);
        self.deployments += 1;
        address
    }

    /// `eth_call` / `eth_estimateGas`: the return data and the gas, or the revert.
    fn simulate(&self, call: &CallRequest, now: u64) -> Result<(Vec<u8>, u64), ChainError> {
        if !self.contracts.contains_key(&call.to) {
            return Ok((Vec::new(), TRANSFER_GAS));
        }
        let ctx = Ctx {
            sender: call.from.unwrap_or(Address::ZERO),
            value: U256::ZERO,
            timestamp: self.next_timestamp(now),
        };
        match run_call(self, &ctx, call.to, &call.data, 0) {
            Ok((ret, _)) => Ok((ret, CONTRACT_CALL_GAS)),
            Err(failure) => Err(failure.into_error()),
        }
    }

    /// `eth_sendRawTransaction`: checks and pools the transaction (and executes it under
    /// automine).
    fn admit(&mut self, raw: &[u8], now: u64) -> Result<B256, ChainError> {
        if raw.len() > MAX_RAW_TRANSACTION_BYTES {
            return Err(rejected("oversized data"));
        }
        let envelope = TxEnvelope::decode_2718_exact(raw).map_err(|_| ChainError::Rejected {
            code: UNDECODABLE_CODE,
            message: "Failed to decode transaction".to_owned(),
        })?;
        let hash = *envelope.tx_hash();
        if self.pool_hashes.contains_key(&hash) {
            return Ok(hash); // already known: the same transaction again
        }
        if envelope.is_eip4844() || envelope.is_eip7702() {
            return Err(rejected("transaction type not supported"));
        }
        // A legacy transaction without a chain id (pre-EIP-155) is accepted, as anvil does.
        if envelope.chain_id().is_some_and(|id| id != self.chain_id) {
            return Err(rejected("invalid chain id for signer"));
        }
        let sender = recover_sender(&envelope)?;
        let Some(to) = envelope.to() else {
            return Err(rejected(
                "MemoryChain does not model contract creation (use deploy_token)",
            ));
        };
        let tx = PooledTx {
            hash,
            sender,
            nonce: envelope.nonce(),
            arrival: self.arrivals,
            gas_limit: envelope.gas_limit(),
            max_fee: envelope.max_fee_per_gas(),
            tip: envelope.max_priority_fee_per_gas(),
            to,
            value: envelope.value(),
            input: envelope.input().to_vec(),
        };
        if tx.gas_limit > BLOCK_GAS_LIMIT {
            return Err(ChainError::Rejected {
                code: GAS_REJECTED_CODE,
                message: "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit".to_owned(),
            });
        }
        if tx.gas_limit < TRANSFER_GAS {
            return Err(ChainError::Rejected {
                code: GAS_REJECTED_CODE,
                message: "intrinsic gas too low".to_owned(),
            });
        }
        if tx.tip.is_some_and(|tip| tip > tx.max_fee) {
            return Err(rejected(
                "max priority fee per gas higher than max fee per gas",
            ));
        }
        if tx.nonce < self.account(sender).nonce {
            return Err(rejected("nonce too low"));
        }
        if tx.max_fee < self.base_fee {
            return Err(rejected("max fee per gas less than block base fee"));
        }
        if tx
            .max_cost()
            .is_none_or(|cost| cost > self.account(sender).balance)
        {
            return Err(rejected("Insufficient funds for gas * price + value"));
        }
        let key = (sender, tx.nonce);
        if let Some(old) = self.pool.get(&key) {
            let bumped = |new: u128, old: u128| {
                new.saturating_mul(100) >= old.saturating_mul(100 + REPLACEMENT_BUMP_PERCENT)
            };
            if !bumped(tx.max_fee, old.max_fee)
                || !bumped(tx.tip.unwrap_or(tx.max_fee), old.tip.unwrap_or(old.max_fee))
            {
                return Err(rejected("replacement transaction underpriced"));
            }
            let old_hash = old.hash;
            self.pool_hashes.remove(&old_hash);
        } else if self.pool.len() >= MAX_POOL_TRANSACTIONS {
            return Err(rejected("txpool is full"));
        }
        self.arrivals += 1;
        self.pool_hashes.insert(hash, key);
        self.pool.insert(key, tx);
        if self.automine {
            self.automine_ready(now);
        }
        Ok(hash)
    }

    /// Whether the pooled transaction at `key` can be executed now.
    fn executable(&self, key: &(Address, u64)) -> Option<u64> {
        let tx = self.pool.get(key)?;
        (tx.nonce == self.account(tx.sender).nonce && tx.max_fee >= self.base_fee)
            .then_some(tx.arrival)
    }

    /// The executable pooled transactions, by arrival: each sender's next one.
    fn ready(&self) -> BTreeMap<u64, (Address, u64)> {
        let senders: BTreeSet<Address> = self.pool.keys().map(|(sender, _)| *sender).collect();
        senders
            .into_iter()
            .filter_map(|sender| {
                let key = (sender, self.account(sender).nonce);
                self.executable(&key).map(|arrival| (arrival, key))
            })
            .collect()
    }

    /// Automine: one block per executable transaction until none is left.
    fn automine_ready(&mut self, now: u64) {
        while !self.ready().is_empty() {
            self.mine_block(now, Some(1));
        }
    }

    /// Mines one block with up to `max_txs` executable transactions (all of them if `None`);
    /// the block's number.
    fn mine_block(&mut self, now: u64, max_txs: Option<usize>) -> u64 {
        let number = self.latest_number() + 1;
        let timestamp = self.next_timestamp(now);
        let mut ready = self.ready();
        let mut executed = Vec::new();
        while let Some((_, key)) = ready.pop_first() {
            if max_txs.is_some_and(|max| executed.len() >= max) {
                break;
            }
            let Some(tx) = self.pool.remove(&key) else {
                continue;
            };
            self.pool_hashes.remove(&tx.hash);
            let Some(done) = self.execute(&tx, timestamp) else {
                continue; // dropped: the sender can no longer pay for it
            };
            executed.push(done);
            let next = (key.0, key.1 + 1);
            if let Some(arrival) = self.executable(&next) {
                ready.insert(arrival, next);
            }
        }

        let mut header = (
            U256::from(self.chain_id),
            U256::from(number),
            self.latest_hash(),
            U256::from(timestamp),
        )
            .abi_encode();
        for e in &executed {
            header.extend_from_slice(e.hash.as_slice());
        }
        let block_hash = keccak256(&header);
        self.blocks.push(Block {
            hash: block_hash,
            timestamp,
        });

        for e in executed {
            for log in &e.logs {
                if let Some((from, to, value)) =
                    eip3009::decode_transfer_log(&log.topics, &log.data)
                {
                    self.transfers.push(TransferRecord {
                        token: log.address,
                        from,
                        to,
                        value,
                        tx_hash: e.hash,
                        block: number,
                    });
                }
                if let Some((authorizer, nonce)) =
                    eip3009::decode_authorization_used_log(&log.topics, &log.data)
                {
                    *self
                        .authorizations_used
                        .entry((log.address, authorizer, nonce))
                        .or_default() += 1;
                }
            }
            self.sent.insert((e.sender, e.nonce), (e.hash, e.status));
            self.receipts.insert(
                e.hash,
                Receipt {
                    transaction_hash: e.hash,
                    status: e.status,
                    block_number: Some(number),
                    block_hash: Some(block_hash),
                    gas_used: e.gas_used,
                    logs: e.logs,
                },
            );
        }
        number
    }

    /// Executes `tx` at `timestamp`; `None` when it is no longer valid (the sender cannot pay
    /// for it) and is dropped.
    fn execute(&mut self, tx: &PooledTx, timestamp: u64) -> Option<Executed> {
        let price = tx.effective_gas_price(self.base_fee);
        let sender = self.account(tx.sender);
        if tx.max_cost().is_none_or(|cost| cost > sender.balance) {
            return None;
        }
        self.accounts.entry(tx.sender).or_default().nonce += 1;

        let (status, gas_used, logs) = if !self.contracts.contains_key(&tx.to) {
            self.move_eth(tx.sender, tx.to, tx.value);
            (true, TRANSFER_GAS, Vec::new())
        } else if tx.gas_limit < CONTRACT_CALL_GAS {
            (false, tx.gas_limit, Vec::new()) // out of gas
        } else {
            let ctx = Ctx {
                sender: tx.sender,
                value: tx.value,
                timestamp,
            };
            match run_call(self, &ctx, tx.to, &tx.input, 0) {
                Ok((_, effects)) => {
                    let logs = self.apply(effects);
                    self.move_eth(tx.sender, tx.to, tx.value);
                    (true, CONTRACT_CALL_GAS, logs)
                }
                Err(_) => (false, CONTRACT_CALL_GAS, Vec::new()),
            }
        };

        let fee = U256::from(gas_used).saturating_mul(U256::from(price));
        let account = self.accounts.entry(tx.sender).or_default();
        account.balance = account.balance.saturating_sub(fee);
        Some(Executed {
            hash: tx.hash,
            sender: tx.sender,
            nonce: tx.nonce,
            status,
            gas_used,
            logs,
        })
    }

    fn move_eth(&mut self, from: Address, to: Address, value: U256) {
        if value.is_zero() {
            return;
        }
        let account = self.accounts.entry(from).or_default();
        account.balance = account.balance.saturating_sub(value);
        let account = self.accounts.entry(to).or_default();
        account.balance = account.balance.saturating_add(value);
    }

    /// Commits the writes of a successful call; its logs.
    fn apply(&mut self, effects: Effects) -> Vec<Log> {
        let Effects {
            token,
            balances,
            allowances,
            authorizations,
            total_supply,
            logs,
        } = effects;
        if let Some(Contract::Token(t)) = token.and_then(|a| self.contracts.get_mut(&a)) {
            for (owner, balance) in balances {
                if balance.is_zero() {
                    t.balances.remove(&owner);
                } else {
                    t.balances.insert(owner, balance);
                }
            }
            t.allowances.extend(allowances);
            t.authorizations.extend(authorizations);
            if let Some(supply) = total_supply {
                t.total_supply = supply;
            }
        }
        logs
    }
}

// ------------------------------------------------------------------------------- execution

/// The context of one call frame.
struct Ctx {
    /// `msg.sender`.
    sender: Address,
    /// `msg.value`.
    value: U256,
    /// `block.timestamp`.
    timestamp: u64,
}

/// The writes of a call in progress, kept apart from the state until the call succeeds. Only
/// one contract of a call tree can write (a token; wallets hold no state), so one token's worth.
#[derive(Default)]
struct Effects {
    token: Option<Address>,
    balances: BTreeMap<Address, U256>,
    allowances: BTreeMap<(Address, Address), U256>,
    authorizations: BTreeSet<(Address, B256)>,
    total_supply: Option<U256>,
    logs: Vec<Log>,
}

/// Why a call reverted: its raw revert data.
struct Failure(Vec<u8>);

impl Failure {
    /// `revert()` with no data (what Solidity does for an unknown selector or bad calldata).
    fn empty() -> Failure {
        Failure(Vec::new())
    }

    /// `require(…, reason)`: `Error(string)`.
    fn reason(reason: &str) -> Failure {
        Failure(Revert::from(reason).abi_encode())
    }

    /// Checked arithmetic failing: `Panic(0x11)`.
    fn overflow() -> Failure {
        Failure(Panic::from(PanicKind::UnderOverflow).abi_encode())
    }

    /// The [`ChainError`] an RPC node's answer would become (as `AlloyChain` decodes it).
    fn into_error(self) -> ChainError {
        let reason = GenericRevertReason::decode(&self.0)
            .map(|r| match r {
                GenericRevertReason::ContractError(ContractError::Revert(r)) => r.reason,
                other => other.to_string(),
            })
            .filter(|r| !r.is_empty());
        ChainError::Reverted {
            reason,
            data: self.0,
        }
    }
}

type CallResult = Result<(Vec<u8>, Effects), Failure>;

/// Calls `to` with `data` in `ctx` against `state` (never modified; writes come back as
/// [`Effects`]). An address without code succeeds with no return data.
fn run_call(state: &State, ctx: &Ctx, to: Address, data: &[u8], depth: usize) -> CallResult {
    if depth > MAX_CALL_DEPTH {
        return Err(Failure::empty());
    }
    match state.contracts.get(&to) {
        None => Ok((Vec::new(), Effects::default())),
        Some(Contract::Token(token)) => TokenCall {
            state,
            address: to,
            token,
            ctx,
            depth,
            fx: Effects {
                token: Some(to),
                ..Effects::default()
            },
        }
        .run(data),
        Some(Contract::Wallet { owner }) => wallet_call(state, ctx, to, *owner, data, depth),
    }
}

/// contracts/src/TestWallet.sol.
fn wallet_call(
    state: &State,
    ctx: &Ctx,
    address: Address,
    owner: Address,
    data: &[u8],
    depth: usize,
) -> CallResult {
    use TestWallet::TestWalletCalls as C;
    if !ctx.value.is_zero() {
        return Err(Failure::empty()); // non-payable, no receive()
    }
    let call = C::abi_decode_validate(data).map_err(|_| Failure::empty())?;
    let ret = match call {
        C::owner(_) => TestWallet::ownerCall::abi_encode_returns(&owner),
        C::isValidSignature(c) => {
            let valid = ecrecover_strict(c.hash, &c.signature).is_some_and(|s| s == owner);
            let answer = if valid {
                eip3009::ERC1271_MAGIC_VALUE
            } else {
                [0xff; 4]
            };
            TestWallet::isValidSignatureCall::abi_encode_returns(&FixedBytes(answer))
        }
        C::execute(c) => {
            if ctx.sender != owner {
                return Err(Failure::reason("TestWallet: caller is not the owner"));
            }
            let inner = Ctx {
                sender: address,
                value: U256::ZERO,
                timestamp: ctx.timestamp,
            };
            // A failed call's revert data is bubbled up as is.
            let (ret, effects) = run_call(state, &inner, c.target, &c.data, depth + 1)?;
            return Ok((
                TestWallet::executeCall::abi_encode_returns(&Bytes::from(ret)),
                effects,
            ));
        }
    };
    Ok((ret, Effects::default()))
}

/// `ecrecover` with the token's strict rules (65 bytes, low s, v ∈ {27, 28}); `None` where the
/// Solidity code gets `address(0)`.
fn ecrecover_strict(digest: B256, signature: &[u8]) -> Option<Address> {
    let (v, r, s) = eip3009::split_signature(signature).ok()?;
    let signature = Signature::from_scalars_and_parity(r, s, v == 28);
    signature
        .recover_address_from_prehash(&digest)
        .ok()
        .filter(|a| *a != Address::ZERO)
}

/// `abi.encodePacked(r, s, v)`.
fn packed_signature(v: u8, r: B256, s: B256) -> Vec<u8> {
    let mut signature = Vec::with_capacity(eip3009::SIGNATURE_LEN);
    signature.extend_from_slice(r.as_slice());
    signature.extend_from_slice(s.as_slice());
    signature.push(v);
    signature
}

/// The fields of a transfer or receive authorization.
struct Authorization {
    from: Address,
    to: Address,
    value: U256,
    valid_after: U256,
    valid_before: U256,
    nonce: B256,
}

/// Which EIP-712 type an authorization was signed as.
#[derive(Clone, Copy)]
enum AuthorizationKind {
    Transfer,
    Receive,
}

/// One call into a token (contracts/src/TestUSDC.sol), reading through its own writes.
struct TokenCall<'a> {
    state: &'a State,
    address: Address,
    token: &'a Token,
    ctx: &'a Ctx,
    depth: usize,
    fx: Effects,
}

impl TokenCall<'_> {
    fn run(mut self, data: &[u8]) -> CallResult {
        use TestUsdc::TestUsdcCalls as C;
        if !self.ctx.value.is_zero() {
            return Err(Failure::empty()); // every function is non-payable
        }
        let call = C::abi_decode_validate(data).map_err(|_| Failure::empty())?;
        let sender = self.ctx.sender;
        let ret = match call {
            C::name(_) => TestUsdc::nameCall::abi_encode_returns(&self.token.name),
            C::version(_) => TestUsdc::versionCall::abi_encode_returns(&self.token.version),
            C::symbol(_) => TestUsdc::symbolCall::abi_encode_returns(&"USDC".to_owned()),
            C::decimals(_) => TestUsdc::decimalsCall::abi_encode_returns(&6u8),
            C::totalSupply(_) => {
                TestUsdc::totalSupplyCall::abi_encode_returns(&self.total_supply())
            }
            C::balanceOf(c) => {
                TestUsdc::balanceOfCall::abi_encode_returns(&self.balance(c.account))
            }
            C::allowance(c) => {
                TestUsdc::allowanceCall::abi_encode_returns(&self.allowance(c.owner, c.spender))
            }
            C::TRANSFER_WITH_AUTHORIZATION_TYPEHASH(_) => {
                TestUsdc::TRANSFER_WITH_AUTHORIZATION_TYPEHASHCall::abi_encode_returns(&keccak256(
                    TransferWithAuthorization::eip712_encode_type().as_bytes(),
                ))
            }
            C::RECEIVE_WITH_AUTHORIZATION_TYPEHASH(_) => {
                TestUsdc::RECEIVE_WITH_AUTHORIZATION_TYPEHASHCall::abi_encode_returns(&keccak256(
                    ReceiveWithAuthorization::eip712_encode_type().as_bytes(),
                ))
            }
            C::CANCEL_AUTHORIZATION_TYPEHASH(_) => {
                TestUsdc::CANCEL_AUTHORIZATION_TYPEHASHCall::abi_encode_returns(&keccak256(
                    CancelAuthorization::eip712_encode_type().as_bytes(),
                ))
            }
            C::DOMAIN_SEPARATOR(_) => {
                TestUsdc::DOMAIN_SEPARATORCall::abi_encode_returns(&self.token.domain.separator())
            }
            C::eip712Domain(_) => {
                TestUsdc::eip712DomainCall::abi_encode_returns(&TestUsdc::eip712DomainReturn {
                    fields: FixedBytes([0x0f]),
                    name_: self.token.name.clone(),
                    version_: self.token.version.clone(),
                    chainId: U256::from(self.state.chain_id),
                    verifyingContract: self.address,
                    salt: B256::ZERO,
                    extensions: Vec::new(),
                })
            }
            C::authorizationState(c) => TestUsdc::authorizationStateCall::abi_encode_returns(
                &self.used(c.authorizer, c.nonce),
            ),
            C::mint(c) => {
                if c.to == Address::ZERO {
                    return Err(Failure::reason("ERC20: mint to the zero address"));
                }
                let supply = self
                    .total_supply()
                    .checked_add(c.amount)
                    .ok_or_else(Failure::overflow)?;
                self.fx.total_supply = Some(supply);
                let balance = self
                    .balance(c.to)
                    .checked_add(c.amount)
                    .ok_or_else(Failure::overflow)?;
                self.fx.balances.insert(c.to, balance);
                self.emit(
                    TestUsdc::Transfer {
                        from: Address::ZERO,
                        to: c.to,
                        value: c.amount,
                    }
                    .encode_log_data(),
                );
                Vec::new()
            }
            C::transfer(c) => {
                self.transfer(sender, c.to, c.value)?;
                TestUsdc::transferCall::abi_encode_returns(&true)
            }
            C::approve(c) => {
                self.approve(sender, c.spender, c.value)?;
                TestUsdc::approveCall::abi_encode_returns(&true)
            }
            C::transferFrom(c) => {
                let allowed = self.allowance(c.from, sender);
                if c.value > allowed {
                    return Err(Failure::reason("ERC20: transfer amount exceeds allowance"));
                }
                if allowed != U256::MAX {
                    self.approve(c.from, sender, allowed - c.value)?;
                }
                self.transfer(c.from, c.to, c.value)?;
                TestUsdc::transferFromCall::abi_encode_returns(&true)
            }
            C::transferWithAuthorization_0(c) => {
                let signature = packed_signature(c.v, c.r, c.s);
                self.transfer_with_authorization(
                    AuthorizationKind::Transfer,
                    Authorization {
                        from: c.from,
                        to: c.to,
                        value: c.value,
                        valid_after: c.validAfter,
                        valid_before: c.validBefore,
                        nonce: c.nonce,
                    },
                    &signature,
                )?;
                Vec::new()
            }
            C::transferWithAuthorization_1(c) => {
                self.transfer_with_authorization(
                    AuthorizationKind::Transfer,
                    Authorization {
                        from: c.from,
                        to: c.to,
                        value: c.value,
                        valid_after: c.validAfter,
                        valid_before: c.validBefore,
                        nonce: c.nonce,
                    },
                    &c.signature,
                )?;
                Vec::new()
            }
            C::receiveWithAuthorization_0(c) => {
                if c.to != sender {
                    return Err(Failure::reason("FiatTokenV2: caller must be the payee"));
                }
                let signature = packed_signature(c.v, c.r, c.s);
                self.transfer_with_authorization(
                    AuthorizationKind::Receive,
                    Authorization {
                        from: c.from,
                        to: c.to,
                        value: c.value,
                        valid_after: c.validAfter,
                        valid_before: c.validBefore,
                        nonce: c.nonce,
                    },
                    &signature,
                )?;
                Vec::new()
            }
            C::receiveWithAuthorization_1(c) => {
                if c.to != sender {
                    return Err(Failure::reason("FiatTokenV2: caller must be the payee"));
                }
                self.transfer_with_authorization(
                    AuthorizationKind::Receive,
                    Authorization {
                        from: c.from,
                        to: c.to,
                        value: c.value,
                        valid_after: c.validAfter,
                        valid_before: c.validBefore,
                        nonce: c.nonce,
                    },
                    &c.signature,
                )?;
                Vec::new()
            }
            C::cancelAuthorization_0(c) => {
                let signature = packed_signature(c.v, c.r, c.s);
                self.cancel_authorization(c.authorizer, c.nonce, &signature)?;
                Vec::new()
            }
            C::cancelAuthorization_1(c) => {
                self.cancel_authorization(c.authorizer, c.nonce, &c.signature)?;
                Vec::new()
            }
        };
        Ok((ret, self.fx))
    }

    fn balance(&self, owner: Address) -> U256 {
        self.fx
            .balances
            .get(&owner)
            .copied()
            .unwrap_or_else(|| self.token.balance(owner))
    }

    fn allowance(&self, owner: Address, spender: Address) -> U256 {
        let key = (owner, spender);
        self.fx
            .allowances
            .get(&key)
            .or_else(|| self.token.allowances.get(&key))
            .copied()
            .unwrap_or(U256::ZERO)
    }

    fn total_supply(&self) -> U256 {
        self.fx.total_supply.unwrap_or(self.token.total_supply)
    }

    fn used(&self, authorizer: Address, nonce: B256) -> bool {
        let key = (authorizer, nonce);
        self.fx.authorizations.contains(&key) || self.token.authorizations.contains(&key)
    }

    fn emit(&mut self, log: LogData) {
        self.fx.logs.push(Log {
            address: self.address,
            topics: log.topics().to_vec(),
            data: log.data.to_vec(),
        });
    }

    /// `_transferWithAuthorization`: time window, nonce, signature, then the transfer.
    fn transfer_with_authorization(
        &mut self,
        kind: AuthorizationKind,
        a: Authorization,
        signature: &[u8],
    ) -> Result<(), Failure> {
        let now = U256::from(self.ctx.timestamp);
        if now <= a.valid_after {
            return Err(Failure::reason(
                "FiatTokenV2: authorization is not yet valid",
            ));
        }
        if now >= a.valid_before {
            return Err(Failure::reason("FiatTokenV2: authorization is expired"));
        }
        if self.used(a.from, a.nonce) {
            return Err(Failure::reason(
                "FiatTokenV2: authorization is used or canceled",
            ));
        }
        let domain = &self.token.domain;
        let digest = match kind {
            AuthorizationKind::Transfer => TransferWithAuthorization {
                from: a.from,
                to: a.to,
                value: a.value,
                validAfter: a.valid_after,
                validBefore: a.valid_before,
                nonce: a.nonce,
            }
            .eip712_signing_hash(domain),
            AuthorizationKind::Receive => ReceiveWithAuthorization {
                from: a.from,
                to: a.to,
                value: a.value,
                validAfter: a.valid_after,
                validBefore: a.valid_before,
                nonce: a.nonce,
            }
            .eip712_signing_hash(domain),
        };
        if !self.signature_valid(a.from, digest, signature) {
            return Err(Failure::reason("FiatTokenV2: invalid signature"));
        }
        self.fx.authorizations.insert((a.from, a.nonce));
        self.emit(
            TestUsdc::AuthorizationUsed {
                authorizer: a.from,
                nonce: a.nonce,
            }
            .encode_log_data(),
        );
        self.transfer(a.from, a.to, a.value)
    }

    /// `_cancelAuthorization`.
    fn cancel_authorization(
        &mut self,
        authorizer: Address,
        nonce: B256,
        signature: &[u8],
    ) -> Result<(), Failure> {
        if self.used(authorizer, nonce) {
            return Err(Failure::reason(
                "FiatTokenV2: authorization is used or canceled",
            ));
        }
        let digest =
            CancelAuthorization { authorizer, nonce }.eip712_signing_hash(&self.token.domain);
        if !self.signature_valid(authorizer, digest, signature) {
            return Err(Failure::reason("FiatTokenV2: invalid signature"));
        }
        self.fx.authorizations.insert((authorizer, nonce));
        self.emit(TestUsdc::AuthorizationCanceled { authorizer, nonce }.encode_log_data());
        Ok(())
    }

    /// `_isValidSignature`: ERC-1271 (a static call) when `signer` has code, strict ECDSA
    /// otherwise.
    fn signature_valid(&self, signer: Address, digest: B256, signature: &[u8]) -> bool {
        if self.state.contracts.contains_key(&signer) {
            let ctx = Ctx {
                sender: self.address,
                value: U256::ZERO,
                timestamp: self.ctx.timestamp,
            };
            let data = eip3009::is_valid_signature_calldata(digest, signature);
            return match run_call(self.state, &ctx, signer, &data, self.depth + 1) {
                Ok((ret, _)) => eip3009::is_erc1271_magic(&ret),
                Err(_) => false,
            };
        }
        ecrecover_strict(digest, signature) == Some(signer)
    }

    /// `_transfer`.
    fn transfer(&mut self, from: Address, to: Address, value: U256) -> Result<(), Failure> {
        if from == Address::ZERO {
            return Err(Failure::reason("ERC20: transfer from the zero address"));
        }
        if to == Address::ZERO {
            return Err(Failure::reason("ERC20: transfer to the zero address"));
        }
        let from_balance = self.balance(from);
        if value > from_balance {
            return Err(Failure::reason("ERC20: transfer amount exceeds balance"));
        }
        self.fx.balances.insert(from, from_balance - value);
        let to_balance = self
            .balance(to)
            .checked_add(value)
            .ok_or_else(Failure::overflow)?;
        self.fx.balances.insert(to, to_balance);
        self.emit(TestUsdc::Transfer { from, to, value }.encode_log_data());
        Ok(())
    }

    /// `_approve`.
    fn approve(&mut self, owner: Address, spender: Address, value: U256) -> Result<(), Failure> {
        if owner == Address::ZERO {
            return Err(Failure::reason("ERC20: approve from the zero address"));
        }
        if spender == Address::ZERO {
            return Err(Failure::reason("ERC20: approve to the zero address"));
        }
        self.fx.allowances.insert((owner, spender), value);
        self.emit(
            TestUsdc::Approval {
                owner,
                spender,
                value,
            }
            .encode_log_data(),
        );
        Ok(())
    }
}
