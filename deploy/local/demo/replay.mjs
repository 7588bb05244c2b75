// Signs ONE payment with the official client and sends it in several requests at once, spread
// over resource servers (each with its own facilitator node): what a payer trying to buy many
// resources with one payment would do. A facilitator that keeps "one payment buys one
// resource" lets exactly one request through; the others get 402.
//
// The 402 of the first server decides the version: v2 (PAYMENT-REQUIRED header; signed with
// @x402/core and @x402/evm) or v1 (body with x402Version 1; signed with x402 1.2).
//
// Environment:
//   X402_SERVER_URLS  resource URLs, comma separated; request i goes to URL i mod n (required)
//   X402_PAYER_KEY    the payer's private key (required; never printed)
//   X402_COPIES       requests sent at once (default 5)
//   X402_TOKEN        the token the client agrees to pay with (v2 spend controls)
//   X402_MAX_AMOUNT   most the client pays (default 1000000)
//
// Prints one JSON line: {"version", "nonce", "answers": [{"url", "status", "settle", "error"}]}.
import { x402Client, x402HTTPClient } from "@x402/core/client";
import { decodePaymentResponseHeader } from "@x402/core/http";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";
import { createPaymentHeader } from "x402/client";
import { createSigner } from "x402/types";

function env(name, fallback) {
  const v = process.env[name];
  if (v !== undefined && v !== "") return v;
  if (fallback !== undefined) return fallback;
  console.error(`replay: ${name} is not set`);
  process.exit(2);
}

const urls = env("X402_SERVER_URLS").split(",").map((s) => s.trim()).filter(Boolean);
const key = env("X402_PAYER_KEY");
const copies = Number(env("X402_COPIES", "5"));
const token = process.env.X402_TOKEN;
const maxAmount = env("X402_MAX_AMOUNT", "1000000");

const first = await fetch(urls[0]);
if (first.status !== 402) {
  console.error(`replay: expected 402 from ${urls[0]}, got ${first.status}`);
  process.exit(1);
}
const requiredBody = await first.json().catch(() => null);
let version;
let headers;
let nonce;
if (first.headers.get("payment-required")) {
  version = 2;
  const client = new x402Client().register("eip155:*", new ExactEvmScheme(privateKeyToAccount(key)));
  client.setSpendControls(
    token
      ? { allowedAssets: [{ network: "eip155:*", asset: token, maxAmountPerPayment: maxAmount }] }
      : { allowedAssets: true },
  );
  const http = new x402HTTPClient(client);
  const required = http.getPaymentRequiredResponse((name) => first.headers.get(name), requiredBody);
  const payload = await http.createPaymentPayload(required);
  headers = http.encodePaymentSignatureHeader(payload);
  nonce = payload.payload.authorization.nonce;
} else if (requiredBody?.x402Version === 1) {
  version = 1;
  const requirements = requiredBody.accepts[0];
  const signer = await createSigner(requirements.network, key);
  const header = await createPaymentHeader(signer, 1, requirements);
  headers = { "X-PAYMENT": header };
  nonce = JSON.parse(Buffer.from(header, "base64").toString()).payload.authorization.nonce;
} else {
  console.error(`replay: not an x402 402 answer: ${JSON.stringify(requiredBody)}`);
  process.exit(1);
}

const answers = await Promise.all(
  Array.from({ length: copies }, async (_, i) => {
    const url = urls[i % urls.length];
    try {
      const res = await fetch(url, { headers });
      const text = await res.text();
      const receipt = res.headers.get("payment-response") || res.headers.get("x-payment-response");
      let settle = null;
      if (receipt) {
        try {
          settle = decodePaymentResponseHeader(receipt);
        } catch {
          settle = { undecodable: receipt };
        }
      }
      let error = null;
      if (res.status !== 200) {
        try {
          error = JSON.parse(text).error ?? text.slice(0, 300);
        } catch {
          error = text.slice(0, 300);
        }
        const required = res.headers.get("payment-required");
        if (required) {
          try {
            error = JSON.parse(Buffer.from(required, "base64").toString()).error ?? error;
          } catch {}
        }
      }
      return { url, status: res.status, settle, error };
    } catch (err) {
      return { url, status: 0, settle: null, error: String(err?.message ?? err) };
    }
  }),
);
console.log(JSON.stringify({ version, nonce, answers }));
