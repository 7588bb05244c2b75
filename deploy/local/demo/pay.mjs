// Pays for GET /paid on server.mjs with the official x402 fetch wrapper (@x402/fetch) and an
// EIP-3009 signature from X402_PAYER_KEY, and prints the settlement transaction.
//
// Environment (see README.md):
//   X402_PAYER_KEY    the payer's private key, 0x-prefixed hex (required; never printed)
//   X402_SERVER_URL   the resource URL (default http://127.0.0.1:$PORT/paid, PORT default 4021)
//   X402_NETWORK      CAIP-2 network to sign for (default: any eip155 chain)
//   X402_TOKEN        the token the client agrees to pay with (default: any token)
//   X402_MAX_AMOUNT   most the client pays per request, in atomic units (default 1000000)
//   X402_RPC_URL      optional: when set, the transaction's receipt is checked on chain
//
// Exits 0 after a paid HTTP 200 whose PAYMENT-RESPONSE says success, 1 otherwise.
import { wrapFetchWithPayment, x402Client, decodePaymentResponseHeader } from "@x402/fetch";
import { decodePaymentRequiredHeader } from "@x402/core/http";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";
import { createPublicClient, http, parseEventLogs, parseAbi, getAddress } from "viem";

const key = process.env.X402_PAYER_KEY;
if (!key || !/^0x[0-9a-fA-F]{64}$/.test(key)) {
  console.error("pay: X402_PAYER_KEY must be set to a 0x-prefixed 32-byte hex private key");
  process.exit(2);
}
const url = process.env.X402_SERVER_URL || `http://127.0.0.1:${process.env.PORT || 4021}/paid`;
const network = process.env.X402_NETWORK || "eip155:*";
const token = process.env.X402_TOKEN;
const maxAmount = process.env.X402_MAX_AMOUNT || "1000000";
const rpcUrl = process.env.X402_RPC_URL;

const account = privateKeyToAccount(key);
const client = new x402Client().register(network, new ExactEvmScheme(account));
// The SDK's default spend controls (2.2x) only pay in the networks' well-known assets (USDC on
// Base, ...) and cap a payment at $1. Our token is unknown to it, so allow it explicitly.
client.setSpendControls(
  token
    ? { allowedAssets: [{ network, asset: token, maxAmountPerPayment: maxAmount }] }
    : { allowedAssets: true },
);
const paidFetch = wrapFetchWithPayment(fetch, client);

function decodeOrNull(decode, value) {
  if (!value) return null;
  try {
    return decode(value);
  } catch (err) {
    return { undecodable: value, error: err.message };
  }
}

async function fail(res, why) {
  const body = await res.text().catch(() => "");
  console.error(`pay: FAILED (${why}): HTTP ${res.status} from ${url}`);
  if (body) console.error(`pay: body: ${body.slice(0, 2000)}`);
  const required = decodeOrNull(decodePaymentRequiredHeader, res.headers.get("payment-required"));
  if (required) {
    console.error(`pay: PAYMENT-REQUIRED error: ${required.error ?? "(none)"}`);
    console.error(`pay: PAYMENT-REQUIRED: ${JSON.stringify(required)}`);
  }
  const settle = decodeOrNull(decodePaymentResponseHeader, res.headers.get("payment-response"));
  if (settle) console.error(`pay: PAYMENT-RESPONSE: ${JSON.stringify(settle)}`);
  process.exit(1);
}

let res;
try {
  res = await paidFetch(url, { method: "GET" });
} catch (err) {
  // Signing or policy errors, or the server being unreachable. Never includes the key.
  console.error(`pay: FAILED: ${err?.message ?? err}`);
  if (err?.cause?.message) console.error(`pay: cause: ${err.cause.message}`);
  process.exit(1);
}

if (res.status !== 200) await fail(res, "expected HTTP 200");
const settle = decodeOrNull(decodePaymentResponseHeader, res.headers.get("payment-response"));
if (!settle || settle.undecodable) await fail(res, "no decodable PAYMENT-RESPONSE header");
if (!settle.success || !/^0x[0-9a-fA-F]{64}$/.test(settle.transaction ?? "")) {
  await fail(res, `settlement not successful: ${JSON.stringify(settle)}`);
}
const body = await res.text();

if (rpcUrl) {
  // Independent check: the transaction is mined, succeeded and moved the token to someone.
  const chain = Number(settle.network.split(":")[1]);
  const pc = createPublicClient({ transport: http(rpcUrl) });
  const receipt = await pc.getTransactionReceipt({ hash: settle.transaction }).catch((err) => {
    console.error(`pay: FAILED: no receipt for ${settle.transaction} on ${rpcUrl}: ${err.shortMessage ?? err.message}`);
    process.exit(1);
  });
  const transfers = parseEventLogs({
    abi: parseAbi(["event Transfer(address indexed from, address indexed to, uint256 value)"]),
    logs: receipt.logs,
  }).filter((l) => getAddress(l.args.from) === account.address && (!token || getAddress(l.address) === getAddress(token)));
  if (receipt.status !== "success" || transfers.length !== 1) {
    console.error(`pay: FAILED: receipt status ${receipt.status}, ${transfers.length} Transfer log(s) from the payer (chain ${chain})`);
    process.exit(1);
  }
  const t = transfers[0].args;
  console.log(`pay: on chain: block ${receipt.blockNumber}, Transfer ${t.from} -> ${t.to} value ${t.value}`);
}

console.log(`pay: body: ${body}`);
console.log(`paid: tx ${settle.transaction} on ${settle.network}`);
