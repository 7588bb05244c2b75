// End-to-end test of the committed TestUSDC / TestWallet artifacts on a real anvil node.
// Run: cd contracts && npm ci && npm test
"use strict";

const { describe, it, before, after } = require("node:test");
const assert = require("node:assert/strict");
const {
  ContractFactory,
  JsonRpcProvider,
  Signature,
  TypedDataEncoder,
  Wallet,
  hexlify,
  id,
  randomBytes,
  toBeHex,
} = require("ethers");

const { startAnvil } = require("./anvil");
const usdcArtifact = require("../artifacts/TestUSDC.json");
const walletArtifact = require("../artifacts/TestWallet.json");

const TWA_VRS = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)";
const TWA_BYTES = "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)";
const RWA_VRS = "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)";
const RWA_BYTES = "receiveWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)";
const CANCEL_VRS = "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)";
const CANCEL_BYTES = "cancelAuthorization(address,bytes32,bytes)";

const ERR = {
  signature: "FiatTokenV2: invalid signature",
  notYetValid: "FiatTokenV2: authorization is not yet valid",
  expired: "FiatTokenV2: authorization is expired",
  used: "FiatTokenV2: authorization is used or canceled",
  payee: "FiatTokenV2: caller must be the payee",
  balance: "ERC20: transfer amount exceeds balance",
};

const AUTH_FIELDS = [
  { name: "from", type: "address" },
  { name: "to", type: "address" },
  { name: "value", type: "uint256" },
  { name: "validAfter", type: "uint256" },
  { name: "validBefore", type: "uint256" },
  { name: "nonce", type: "bytes32" },
];
const TRANSFER_TYPES = { TransferWithAuthorization: AUTH_FIELDS };
const RECEIVE_TYPES = { ReceiveWithAuthorization: AUTH_FIELDS };
const CANCEL_TYPES = {
  CancelAuthorization: [
    { name: "authorizer", type: "address" },
    { name: "nonce", type: "bytes32" },
  ],
};

const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

/** Asserts that `promise` rejects with exactly the revert string `reason`. */
async function revertsWith(promise, reason) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.code, "CALL_EXCEPTION", `expected a revert, got ${err.code}: ${err.message}`);
    assert.equal(err.reason, reason);
    return true;
  });
}

const newNonce = () => hexlify(randomBytes(32));
const usd = (n) => BigInt(Math.round(n * 1e6)); // 6 decimals

// One run of the whole suite per (chain id, EIP-712 name, version).
const CONFIGS = [
  { chainId: 31337, name: "USD Coin", version: "2" }, // local anvil; the name real USDC uses on Ethereum/Base
  { chainId: 84532, name: "USDC", version: "2" }, // emulates Base Sepolia USDC's domain
];

for (const cfg of CONFIGS) {
  describe(`TestUSDC on anvil, chain ${cfg.chainId}, domain ("${cfg.name}", "${cfg.version}")`, () => {
    let node, provider, facilitator, payee, token, tokenAddr, domain;
    const buyer = Wallet.createRandom(); // signs only; holds no ETH
    const walletOwner = Wallet.createRandom();
    const stranger = Wallet.createRandom();
    const merchant = Wallet.createRandom().address;

    before(async () => {
      node = await startAnvil({ chainId: cfg.chainId });
      provider = new JsonRpcProvider(node.url, cfg.chainId, { staticNetwork: true, cacheTimeout: -1, pollingInterval: 50 });
      facilitator = await provider.getSigner(0); // anvil's unlocked, funded dev accounts
      payee = await provider.getSigner(1);
      const factory = new ContractFactory(usdcArtifact.abi, usdcArtifact.bytecode, facilitator);
      token = await factory.deploy(cfg.name, cfg.version);
      await token.waitForDeployment();
      tokenAddr = await token.getAddress();
      domain = { name: cfg.name, version: cfg.version, chainId: cfg.chainId, verifyingContract: tokenAddr };
    });

    after(async () => {
      if (provider) provider.destroy();
      if (node) await node.stop();
    });

    async function now() {
      return BigInt((await provider.getBlock("latest")).timestamp);
    }

    /** A fresh authorization valid from the past until an hour from the latest block. */
    async function authorization(overrides = {}) {
      const t = await now();
      return { from: buyer.address, to: merchant, value: usd(1), validAfter: 0n, validBefore: t + 3600n, nonce: newNonce(), ...overrides };
    }

    const args = (a) => [a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce];

    async function send(fn, ...callArgs) {
      const tx = await token[fn](...callArgs);
      return tx.wait();
    }

    function parsedLogs(receipt) {
      return receipt.logs
        .filter((l) => l.address.toLowerCase() === tokenAddr.toLowerCase())
        .map((l) => token.interface.parseLog(l));
    }

    it("has the USDC-shaped metadata and a correct EIP-712 domain", async () => {
      assert.equal(await token.name(), cfg.name);
      assert.equal(await token.version(), cfg.version);
      assert.equal(await token.symbol(), "USDC");
      assert.equal(await token.decimals(), 6n);
      assert.equal(await token.DOMAIN_SEPARATOR(), TypedDataEncoder.hashDomain(domain));
      const d = await token.eip712Domain();
      assert.equal(d.fields, "0x0f");
      assert.deepEqual([d.name_, d.version_, d.chainId, d.verifyingContract], [cfg.name, cfg.version, BigInt(cfg.chainId), tokenAddr]);
      const typeHash = (types, primary) => id(TypedDataEncoder.from(types).encodeType(primary));
      assert.equal(await token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), typeHash(TRANSFER_TYPES, "TransferWithAuthorization"));
      assert.equal(await token.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(), typeHash(RECEIVE_TYPES, "ReceiveWithAuthorization"));
      assert.equal(await token.CANCEL_AUTHORIZATION_TYPEHASH(), typeHash(CANCEL_TYPES, "CancelAuthorization"));
    });

    it("mints to anyone, from any caller, with a Transfer from the zero address", async () => {
      const r = await send("mint", buyer.address, usd(100));
      const [ev] = parsedLogs(r);
      assert.equal(ev.name, "Transfer");
      assert.deepEqual([ev.args.from, ev.args.to, ev.args.value], ["0x0000000000000000000000000000000000000000", buyer.address, usd(100)]);
      // a second, unrelated account may mint too
      await (await token.connect(payee).mint(buyer.address, usd(50))).wait();
      assert.equal(await token.balanceOf(buyer.address), usd(150));
      assert.equal(await token.totalSupply(), usd(150));
    });

    it("transferWithAuthorization (v, r, s) moves funds, emits AuthorizationUsed then Transfer, marks the nonce", async () => {
      const a = await authorization({ value: usd(2.5) });
      const sig = Signature.from(await buyer.signTypedData(domain, TRANSFER_TYPES, a));
      const before = await token.balanceOf(buyer.address);
      assert.equal(await token.authorizationState(buyer.address, a.nonce), false);

      const r = await send(TWA_VRS, ...args(a), sig.v, sig.r, sig.s);

      assert.equal(r.status, 1);
      assert.equal(await token.balanceOf(buyer.address), before - usd(2.5));
      assert.equal(await token.balanceOf(merchant), usd(2.5));
      assert.equal(await token.authorizationState(buyer.address, a.nonce), true);
      const logs = parsedLogs(r);
      assert.deepEqual(logs.map((l) => l.name), ["AuthorizationUsed", "Transfer"]);
      assert.deepEqual([logs[0].args.authorizer, logs[0].args.nonce], [buyer.address, a.nonce]);
      assert.deepEqual([logs[1].args.from, logs[1].args.to, logs[1].args.value], [buyer.address, merchant, usd(2.5)]);
      // replay of the same signed authorization
      await revertsWith(token[TWA_VRS](...args(a), sig.v, sig.r, sig.s), ERR.used);
      await revertsWith(token[TWA_BYTES](...args(a), sig.serialized), ERR.used);
    });

    it("transferWithAuthorization (bytes signature) works for an EOA and rejects replays", async () => {
      const a = await authorization({ value: usd(1.25) });
      const signature = await buyer.signTypedData(domain, TRANSFER_TYPES, a);
      const merchantBefore = await token.balanceOf(merchant);

      const r = await send(TWA_BYTES, ...args(a), signature);

      assert.equal(await token.balanceOf(merchant), merchantBefore + usd(1.25));
      assert.equal(await token.authorizationState(buyer.address, a.nonce), true);
      assert.deepEqual(parsedLogs(r).map((l) => l.name), ["AuthorizationUsed", "Transfer"]);
      await revertsWith(token[TWA_BYTES](...args(a), signature), ERR.used);
      await revertsWith(token[TWA_BYTES].staticCall(...args(a), signature), ERR.used); // what a facilitator's eth_call sees
    });

    it("rejects expired and not-yet-valid authorizations, exactly at the boundaries too", async () => {
      const t = await now();
      let a = await authorization({ validBefore: t - 1n });
      await revertsWith(token[TWA_BYTES](...args(a), await buyer.signTypedData(domain, TRANSFER_TYPES, a)), ERR.expired);
      a = await authorization({ validAfter: t + 3600n, validBefore: t + 7200n });
      await revertsWith(token[TWA_BYTES](...args(a), await buyer.signTypedData(domain, TRANSFER_TYPES, a)), ERR.notYetValid);

      // Boundaries, with eth_call at an overridden block time: valid iff validAfter < time < validBefore.
      const b = await authorization({ validAfter: t + 1000n, validBefore: t + 2000n });
      const data = token.interface.encodeFunctionData(TWA_BYTES, [...args(b), await buyer.signTypedData(domain, TRANSFER_TYPES, b)]);
      const callAt = async (time) => {
        try {
          await provider.send("eth_call", [{ to: tokenAddr, data }, "latest", {}, { time: toBeHex(time) }]);
          return "ok";
        } catch (err) {
          assert.equal(err.code, "CALL_EXCEPTION", err.message);
          return err.reason;
        }
      };
      assert.equal(await callAt(b.validAfter - 1n), ERR.notYetValid);
      assert.equal(await callAt(b.validAfter), ERR.notYetValid);
      assert.equal(await callAt(b.validAfter + 1n), "ok");
      assert.equal(await callAt(b.validBefore - 1n), "ok");
      assert.equal(await callAt(b.validBefore), ERR.expired);

      // The same in mined blocks (the gas limit is given so ethers sends without estimating).
      const mineAt = async (auth, time) => {
        await provider.send("evm_setNextBlockTimestamp", [Number(time)]);
        const sig = await buyer.signTypedData(domain, TRANSFER_TYPES, auth);
        const tx = await token[TWA_BYTES](...args(auth), sig, { gasLimit: 300_000 });
        try {
          return (await tx.wait()).status;
        } catch (err) {
          assert.equal(err.code, "CALL_EXCEPTION", err.message);
          return err.receipt.status;
        }
      };
      const base = t + 100n;
      const early = await authorization({ validAfter: base, validBefore: base + 10n });
      assert.equal(await mineAt(early, base), 0); // block.timestamp == validAfter
      const late = await authorization({ validAfter: 0n, validBefore: base + 1n });
      assert.equal(await mineAt(late, base + 1n), 0); // block.timestamp == validBefore
      assert.equal(await token.authorizationState(buyer.address, early.nonce), false);
      assert.equal(await token.authorizationState(buyer.address, late.nonce), false);
      const inside = await authorization({ validAfter: base + 1n, validBefore: base + 3n });
      assert.equal(await mineAt(inside, base + 2n), 1);
      assert.equal(await token.authorizationState(buyer.address, inside.nonce), true);
    });

    it("rejects a wrong signer, a wrong domain, a tampered message and a high-s signature", async () => {
      const a = await authorization();
      // signed by someone else
      const bySomeoneElse = await stranger.signTypedData(domain, TRANSFER_TYPES, a);
      await revertsWith(token[TWA_BYTES](...args(a), bySomeoneElse), ERR.signature);
      const s2 = Signature.from(bySomeoneElse);
      await revertsWith(token[TWA_VRS](...args(a), s2.v, s2.r, s2.s), ERR.signature);
      // wrong EIP-712 version / name / chain id (the x402 "wrong extra" cases)
      for (const d of [
        { ...domain, version: "1" },
        { ...domain, name: cfg.name === "USDC" ? "USD Coin" : "USDC" },
        { ...domain, chainId: cfg.chainId + 1 },
      ]) {
        await revertsWith(token[TWA_BYTES](...args(a), await buyer.signTypedData(d, TRANSFER_TYPES, a)), ERR.signature);
      }
      const good = await buyer.signTypedData(domain, TRANSFER_TYPES, a);
      // the signature does not cover a different value or recipient
      await revertsWith(token[TWA_BYTES](a.from, a.to, a.value + 1n, a.validAfter, a.validBefore, a.nonce, good), ERR.signature);
      await revertsWith(token[TWA_BYTES](a.from, stranger.address, a.value, a.validAfter, a.validBefore, a.nonce, good), ERR.signature);
      // signed as ReceiveWithAuthorization but submitted as a transfer (typehash separation)
      await revertsWith(token[TWA_BYTES](...args(a), await buyer.signTypedData(domain, RECEIVE_TYPES, a)), ERR.signature);
      // malleated (high-s) twin of a valid signature: ecrecover would accept it, the token must not
      const sig = Signature.from(good);
      const highS = toBeHex(SECP256K1_N - BigInt(sig.s), 32);
      const flippedV = sig.v === 27 ? 28 : 27;
      await revertsWith(token[TWA_VRS](...args(a), flippedV, sig.r, highS), ERR.signature);
      // bad v, wrong lengths
      await revertsWith(token[TWA_VRS](...args(a), 29, sig.r, sig.s), ERR.signature);
      await revertsWith(token[TWA_BYTES](...args(a), "0x"), ERR.signature);
      await revertsWith(token[TWA_BYTES](...args(a), good + "00"), ERR.signature);
      // none of the failures consumed the nonce; the good signature still works
      assert.equal(await token.authorizationState(buyer.address, a.nonce), false);
      const r = await send(TWA_VRS, ...args(a), sig.v, sig.r, sig.s);
      assert.equal(r.status, 1);
    });

    it("rejects an authorization for more than the balance with the ERC20 message, leaving the nonce unused", async () => {
      const balance = await token.balanceOf(buyer.address);
      const a = await authorization({ value: balance + 1n });
      const signature = await buyer.signTypedData(domain, TRANSFER_TYPES, a);
      await revertsWith(token[TWA_BYTES](...args(a), signature), ERR.balance);
      const s = Signature.from(signature);
      await revertsWith(token[TWA_VRS](...args(a), s.v, s.r, s.s), ERR.balance);
      assert.equal(await token.authorizationState(buyer.address, a.nonce), false);
      assert.equal(await token.balanceOf(buyer.address), balance);
    });

    it("cancelAuthorization burns an unused nonce; the authorization then fails as used or canceled", async () => {
      const a = await authorization();
      const transferSig = await buyer.signTypedData(domain, TRANSFER_TYPES, a);
      // a cancel signed by someone else is refused
      const badCancel = Signature.from(await stranger.signTypedData(domain, CANCEL_TYPES, { authorizer: buyer.address, nonce: a.nonce }));
      await revertsWith(token[CANCEL_VRS](buyer.address, a.nonce, badCancel.v, badCancel.r, badCancel.s), ERR.signature);

      const cancel = Signature.from(await buyer.signTypedData(domain, CANCEL_TYPES, { authorizer: buyer.address, nonce: a.nonce }));
      const r = await send(CANCEL_VRS, buyer.address, a.nonce, cancel.v, cancel.r, cancel.s);
      const logs = parsedLogs(r);
      assert.deepEqual(logs.map((l) => l.name), ["AuthorizationCanceled"]);
      assert.deepEqual([logs[0].args.authorizer, logs[0].args.nonce], [buyer.address, a.nonce]);
      assert.equal(await token.authorizationState(buyer.address, a.nonce), true);

      await revertsWith(token[TWA_BYTES](...args(a), transferSig), ERR.used);
      await revertsWith(token[CANCEL_BYTES](buyer.address, a.nonce, cancel.serialized), ERR.used);

      // a used nonce cannot be canceled either
      const b = await authorization();
      await send(TWA_BYTES, ...args(b), await buyer.signTypedData(domain, TRANSFER_TYPES, b));
      const late = await buyer.signTypedData(domain, CANCEL_TYPES, { authorizer: buyer.address, nonce: b.nonce });
      await revertsWith(token[CANCEL_BYTES](buyer.address, b.nonce, late), ERR.used);
    });

    it("receiveWithAuthorization must be submitted by the payee", async () => {
      const payeeAddr = await payee.getAddress();
      const a = await authorization({ to: payeeAddr, value: usd(3) });
      const sig = Signature.from(await buyer.signTypedData(domain, RECEIVE_TYPES, a));
      // the facilitator (not the payee) may not submit it, with either overload
      await revertsWith(token[RWA_VRS](...args(a), sig.v, sig.r, sig.s), ERR.payee);
      await revertsWith(token[RWA_BYTES](...args(a), sig.serialized), ERR.payee);
      // a TransferWithAuthorization signature is not a ReceiveWithAuthorization signature
      const wrongType = Signature.from(await buyer.signTypedData(domain, TRANSFER_TYPES, a));
      await revertsWith(token.connect(payee)[RWA_VRS](...args(a), wrongType.v, wrongType.r, wrongType.s), ERR.signature);

      const before = await token.balanceOf(payeeAddr);
      const r = await (await token.connect(payee)[RWA_VRS](...args(a), sig.v, sig.r, sig.s)).wait();
      assert.deepEqual(parsedLogs(r).map((l) => l.name), ["AuthorizationUsed", "Transfer"]);
      assert.equal(await token.balanceOf(payeeAddr), before + usd(3));
      assert.equal(await token.authorizationState(buyer.address, a.nonce), true);
      await revertsWith(token.connect(payee)[RWA_BYTES](...args(a), sig.serialized), ERR.used);

      // bytes overload, by the payee
      const b = await authorization({ to: payeeAddr, value: usd(1) });
      await (await token.connect(payee)[RWA_BYTES](...args(b), await buyer.signTypedData(domain, RECEIVE_TYPES, b))).wait();
      assert.equal(await token.balanceOf(payeeAddr), before + usd(4));
    });

    it("ERC-1271: a smart wallet pays with its owner's signature through the bytes overload", async () => {
      const wf = new ContractFactory(walletArtifact.abi, walletArtifact.bytecode, facilitator);
      const wallet = await wf.deploy(walletOwner.address);
      await wallet.waitForDeployment();
      const walletAddr = await wallet.getAddress();
      assert.equal(await wallet.owner(), walletOwner.address);
      await send("mint", walletAddr, usd(10));

      const a = await authorization({ from: walletAddr, value: usd(4) });
      const signature = await walletOwner.signTypedData(domain, TRANSFER_TYPES, a);
      // the wallet itself answers the ERC-1271 question for the token's digest
      const digest = TypedDataEncoder.hash(domain, TRANSFER_TYPES, a);
      assert.equal(await wallet.isValidSignature(digest, signature), "0x1626ba7e");
      assert.equal(await wallet.isValidSignature(digest, await stranger.signTypedData(domain, TRANSFER_TYPES, a)), "0xffffffff");

      // not the owner's signature -> invalid
      await revertsWith(token[TWA_BYTES](...args(a), await stranger.signTypedData(domain, TRANSFER_TYPES, a)), ERR.signature);
      await revertsWith(token[TWA_BYTES](...args(a), "0x"), ERR.signature);

      const merchantBefore = await token.balanceOf(merchant);
      const r = await send(TWA_BYTES, ...args(a), signature);
      const logs = parsedLogs(r);
      assert.deepEqual(logs.map((l) => l.name), ["AuthorizationUsed", "Transfer"]);
      assert.equal(logs[0].args.authorizer, walletAddr);
      assert.deepEqual([logs[1].args.from, logs[1].args.to, logs[1].args.value], [walletAddr, merchant, usd(4)]);
      assert.equal(await token.balanceOf(walletAddr), usd(6));
      assert.equal(await token.balanceOf(merchant), merchantBefore + usd(4));
      assert.equal(await token.authorizationState(walletAddr, a.nonce), true);
      await revertsWith(token[TWA_BYTES](...args(a), signature), ERR.used);

      // like FiatToken v2.2, the v,r,s overload also goes through ERC-1271 when `from` has code
      const b = await authorization({ from: walletAddr, value: usd(1) });
      const sb = Signature.from(await walletOwner.signTypedData(domain, TRANSFER_TYPES, b));
      await send(TWA_VRS, ...args(b), sb.v, sb.r, sb.s);
      assert.equal(await token.balanceOf(walletAddr), usd(5));

      // the wallet's owner can cancel on its behalf (bytes overload, ERC-1271)
      const c = await authorization({ from: walletAddr });
      await send(CANCEL_BYTES, walletAddr, c.nonce, await walletOwner.signTypedData(domain, CANCEL_TYPES, { authorizer: walletAddr, nonce: c.nonce }));
      assert.equal(await token.authorizationState(walletAddr, c.nonce), true);

      // an ECDSA signature by the wallet's own address can never exist; a wallet with no funds fails on balance
      const d = await authorization({ from: walletAddr, value: usd(6) });
      await revertsWith(token[TWA_BYTES](...args(d), await walletOwner.signTypedData(domain, TRANSFER_TYPES, d)), ERR.balance);
    });

    it("DOMAIN_SEPARATOR follows a chain id change", async () => {
      const other = cfg.chainId + 1000;
      await provider.send("anvil_setChainId", [other]);
      try {
        assert.equal(await token.DOMAIN_SEPARATOR(), TypedDataEncoder.hashDomain({ ...domain, chainId: other }));
        assert.notEqual(await token.DOMAIN_SEPARATOR(), TypedDataEncoder.hashDomain(domain));
      } finally {
        await provider.send("anvil_setChainId", [cfg.chainId]);
      }
      assert.equal(await token.DOMAIN_SEPARATOR(), TypedDataEncoder.hashDomain(domain));
    });
  });
}
