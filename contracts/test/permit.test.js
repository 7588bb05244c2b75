// End-to-end test of the committed TestPermitToken artifact (ERC-20 + EIP-2612, no EIP-3009)
// on a real anvil node. Run: cd contracts && npm ci && npm test
"use strict";

const { describe, it, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { ContractFactory, JsonRpcProvider, Signature, TypedDataEncoder, Wallet, id } = require("ethers");

const { startAnvil } = require("./anvil");
const artifact = require("../artifacts/TestPermitToken.json");

const PERMIT_TYPES = {
  Permit: [
    { name: "owner", type: "address" },
    { name: "spender", type: "address" },
    { name: "value", type: "uint256" },
    { name: "nonce", type: "uint256" },
    { name: "deadline", type: "uint256" },
  ],
};
const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;

/** Asserts that `promise` reverts with the custom error `name` (and `args`, when given). */
async function revertsWithError(token, promise, name, args) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.code, "CALL_EXCEPTION", `expected a revert, got ${err.code}: ${err.message}`);
    const parsed = token.interface.parseError(err.data);
    assert.equal(parsed?.name, name, `expected ${name}, got ${parsed?.name}`);
    if (args) assert.deepEqual([...parsed.args], args);
    return true;
  });
}

describe("TestPermitToken on anvil: ERC-20 with EIP-2612 permit and no EIP-3009", () => {
  let node, provider, deployer, spender, token, tokenAddr, domain;
  const owner = Wallet.createRandom(); // signs only; holds no ETH
  const merchant = Wallet.createRandom().address;

  before(async () => {
    node = await startAnvil({ chainId: 31337 });
    provider = new JsonRpcProvider(node.url, 31337, { staticNetwork: true, cacheTimeout: -1, pollingInterval: 50 });
    deployer = await provider.getSigner(0);
    spender = await provider.getSigner(1);
    const factory = new ContractFactory(artifact.abi, artifact.bytecode, deployer);
    token = await factory.deploy("Test Permit Token", "1");
    await token.waitForDeployment();
    tokenAddr = await token.getAddress();
    domain = { name: "Test Permit Token", version: "1", chainId: 31337, verifyingContract: tokenAddr };
    await (await token.mint(owner.address, 1_000_000n)).wait();
  });

  after(async () => {
    if (provider) provider.destroy();
    if (node) await node.stop();
  });

  async function deadlineIn(seconds) {
    return BigInt((await provider.getBlock("latest")).timestamp) + BigInt(seconds);
  }

  async function signPermit(signer, fields) {
    const nonce = fields.nonce ?? (await token.nonces(fields.owner));
    const message = { ...fields, nonce };
    return Signature.from(await signer.signTypedData(domain, PERMIT_TYPES, message));
  }

  it("has its metadata, the EIP-712 domain of its chain and the EIP-2612 type hash", async () => {
    assert.equal(await token.symbol(), "TPT");
    assert.equal(await token.decimals(), 6n);
    assert.equal(await token.DOMAIN_SEPARATOR(), TypedDataEncoder.hashDomain(domain));
    assert.equal(await token.PERMIT_TYPEHASH(), id(TypedDataEncoder.from(PERMIT_TYPES).encodeType("Permit")));
  });

  it("has no EIP-3009: transferWithAuthorization and authorizationState are not there", async () => {
    const selectors = ["transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)", "authorizationState(address,bytes32)"];
    for (const signature of selectors) {
      const data = id(signature).slice(0, 10) + "00".repeat(32 * 2);
      await assert.rejects(provider.call({ to: tokenAddr, data }), /revert/i, signature);
    }
  });

  it("permit sets the allowance once per nonce, and the spender can then transferFrom", async () => {
    const deadline = await deadlineIn(3600);
    const fields = { owner: owner.address, spender: await spender.getAddress(), value: 250_000n, deadline };
    const sig = await signPermit(owner, fields);
    const receipt = await (await token.permit(fields.owner, fields.spender, fields.value, deadline, sig.v, sig.r, sig.s)).wait();
    const approval = receipt.logs.map((l) => token.interface.parseLog(l)).find((l) => l?.name === "Approval");
    assert.deepEqual([...approval.args], [fields.owner, fields.spender, fields.value]);
    assert.equal(await token.allowance(fields.owner, fields.spender), 250_000n);
    assert.equal(await token.nonces(fields.owner), 1n);
    // The same signature again: the nonce moved on, so it recovers another signer.
    await revertsWithError(token, token.permit(fields.owner, fields.spender, fields.value, deadline, sig.v, sig.r, sig.s), "ERC2612InvalidSigner");
    const asSpender = token.connect(spender);
    await (await asSpender.transferFrom(owner.address, merchant, 100_000n)).wait();
    assert.equal(await token.balanceOf(merchant), 100_000n);
    assert.equal(await token.allowance(owner.address, fields.spender), 150_000n);
    await revertsWithError(token, asSpender.transferFrom(owner.address, merchant, 200_000n), "ERC20InsufficientAllowance", [fields.spender, 150_000n, 200_000n]);
  });

  it("refuses an expired permit, another signer, and a high-s signature", async () => {
    const spenderAddr = await spender.getAddress();
    const expired = { owner: owner.address, spender: spenderAddr, value: 1n, deadline: (await deadlineIn(0)) - 10n };
    const sig = await signPermit(owner, expired);
    await revertsWithError(token, token.permit(expired.owner, expired.spender, 1n, expired.deadline, sig.v, sig.r, sig.s), "ERC2612ExpiredSignature", [expired.deadline]);

    const fields = { owner: owner.address, spender: spenderAddr, value: 1n, deadline: await deadlineIn(3600) };
    const stranger = Wallet.createRandom();
    const forged = await signPermit(stranger, fields);
    await revertsWithError(token, token.permit(fields.owner, fields.spender, 1n, fields.deadline, forged.v, forged.r, forged.s), "ERC2612InvalidSigner");

    const good = await signPermit(owner, fields);
    const highS = "0x" + (SECP256K1_N - BigInt(good.s)).toString(16).padStart(64, "0");
    const flippedV = good.v === 27 ? 28 : 27;
    await revertsWithError(token, token.permit(fields.owner, fields.spender, 1n, fields.deadline, flippedV, good.r, highS), "ERC2612InvalidSigner");
    // The canonical form still works.
    await (await token.permit(fields.owner, fields.spender, 1n, fields.deadline, good.v, good.r, good.s)).wait();
    assert.equal(await token.allowance(owner.address, spenderAddr), 1n);
  });

  it("refuses transfers beyond the balance with OpenZeppelin's error", async () => {
    const poor = token.connect(spender);
    const spenderAddr = await spender.getAddress();
    await revertsWithError(token, poor.transfer(merchant, 1n), "ERC20InsufficientBalance", [spenderAddr, 0n, 1n]);
  });
});
