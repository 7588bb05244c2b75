// A resource server that sells GET /paid through the official x402 express middleware
// (@x402/express), with an x402-cluster node as its facilitator.
//
// Environment (see README.md):
//   X402_NETWORK          CAIP-2 network, e.g. eip155:31337                      (required)
//   X402_TOKEN            EIP-3009 token address                                  (required)
//   X402_TOKEN_NAME       the token's EIP-712 domain name, e.g. "USD Coin"        (required)
//   X402_TOKEN_VERSION    the token's EIP-712 domain version, e.g. "2"            (required)
//   X402_PAY_TO           merchant address that receives the payment              (required)
//   X402_FACILITATOR_URL  facilitator URL(s), comma separated; defaults to X402_NODES
//   X402_NODES            cluster node URLs, comma separated (used when X402_FACILITATOR_URL is unset)
//   X402_PRICE            price in the token's atomic units (default 10000 = 0.01 of a 6-decimal token)
//   X402_FACILITATOR_TIMEOUT_MS  per-request timeout towards the facilitator (default 30000)
//   X402_STARTUP_TIMEOUT_S       how long to keep retrying GET /supported at start (default 60)
//   PORT, HOST            where to listen (default 4021 on 127.0.0.1)
//
// With several facilitator URLs the server talks to one node and moves to the next one when a
// node cannot be reached, times out, or answers 5xx/429 without a protocol body. A node's
// protocol answer (isValid:false, success:false, settlement_pending, ...) is never retried
// elsewhere by this wrapper; the SDK itself re-settles once on settlement_pending.
import express from "express";
import { paymentMiddlewareFromHTTPServer, x402HTTPResourceServer, x402ResourceServer } from "@x402/express";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { FacilitatorTimeoutError } from "@x402/core/types";
import { ExactEvmScheme } from "@x402/evm/exact/server";

function env(name, fallback) {
  const v = process.env[name];
  if (v !== undefined && v !== "") return v;
  if (fallback !== undefined) return fallback;
  console.error(`server: ${name} is not set`);
  process.exit(2);
}

const network = env("X402_NETWORK");
const token = env("X402_TOKEN");
const tokenName = env("X402_TOKEN_NAME");
const tokenVersion = env("X402_TOKEN_VERSION");
const payTo = env("X402_PAY_TO");
const price = env("X402_PRICE", "10000");
const facilitatorUrls = env("X402_FACILITATOR_URL", process.env.X402_NODES || "")
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
if (facilitatorUrls.length === 0) {
  console.error("server: set X402_FACILITATOR_URL or X402_NODES");
  process.exit(2);
}
const timeoutMs = Number(env("X402_FACILITATOR_TIMEOUT_MS", "30000"));
const startupTimeoutS = Number(env("X402_STARTUP_TIMEOUT_S", "60"));
const port = Number(env("PORT", "4021"));
const host = env("HOST", "127.0.0.1");

// Errors after which trying another node is right: the node did not give a protocol answer.
function isNodeUnavailable(err) {
  if (err instanceof FacilitatorTimeoutError) return true;
  if (err instanceof TypeError) return true; // fetch() itself failed: refused, reset, DNS
  const m = /^Facilitator (?:verify|settle|getSupported) failed \((\d{3})\)/.exec(err?.message ?? "");
  return !!m && (m[1] === "429" || m[1].startsWith("5"));
}

// Same interface as HTTPFacilitatorClient (getSupported/verify/settle), over several nodes.
class FailoverFacilitatorClient {
  constructor(urls, options) {
    this.urls = urls;
    this.clients = urls.map((url) => new HTTPFacilitatorClient({ url, ...options }));
    this.current = 0;
  }
  async call(op, args) {
    let lastErr;
    for (let i = 0; i < this.clients.length; i++) {
      const idx = (this.current + i) % this.clients.length;
      try {
        const result = await this.clients[idx][op](...args);
        if (idx !== this.current) {
          console.log(`server: facilitator is now ${this.urls[idx]}`);
          this.current = idx;
        }
        return result;
      } catch (err) {
        if (!isNodeUnavailable(err)) throw err;
        lastErr = err;
        console.warn(`server: ${op} on ${this.urls[idx]} failed (${err.message}); trying the next node`);
      }
    }
    throw lastErr;
  }
  getSupported() { return this.call("getSupported", []); }
  verify(payload, requirements) { return this.call("verify", [payload, requirements]); }
  settle(payload, requirements) { return this.call("settle", [payload, requirements]); }
}

const facilitator =
  facilitatorUrls.length === 1
    ? new HTTPFacilitatorClient({ url: facilitatorUrls[0], timeoutMs })
    : new FailoverFacilitatorClient(facilitatorUrls, { timeoutMs });

const resourceServer = new x402ResourceServer(facilitator).register(network, new ExactEvmScheme());

const routes = {
  "GET /paid": {
    accepts: {
      scheme: "exact",
      network,
      payTo,
      // An AssetAmount: a Money price ("$0.01") would need a default asset for the network,
      // which the SDK does not have for arbitrary chains such as eip155:31337.
      price: { amount: price, asset: token, extra: { name: tokenName, version: tokenVersion } },
      maxTimeoutSeconds: 60,
    },
    description: "x402-cluster demo resource",
    mimeType: "application/json",
  },
};

const httpServer = new x402HTTPResourceServer(resourceServer, routes);

// Calls GET /supported on the facilitator and checks that it offers exact on our network.
// The middleware would do this lazily on the first paid request; doing it here first means the
// ready line below is only printed once the facilitator is usable.
const deadline = Date.now() + startupTimeoutS * 1000;
for (let attempt = 1; ; attempt++) {
  try {
    await httpServer.initialize();
    break;
  } catch (err) {
    const detail = err?.cause?.message ? `${err.message}: ${err.cause.message}` : err?.message;
    if (Date.now() >= deadline) {
      console.error(`server: facilitator not usable after ${startupTimeoutS}s: ${detail}`);
      process.exit(1);
    }
    if (attempt === 1 || attempt % 10 === 0) {
      console.warn(`server: waiting for the facilitator (${detail})`);
    }
    await new Promise((r) => setTimeout(r, Math.min(2000, 250 * 2 ** attempt)));
  }
}

const app = express();
app.get("/healthz", (_req, res) => res.json({ ok: true }));
// syncFacilitatorOnStart=false: initialize() has already run above.
app.use(paymentMiddlewareFromHTTPServer(httpServer, undefined, undefined, false));
app.get("/paid", (_req, res) => {
  res.json({ ok: true, message: "paid content", at: new Date().toISOString() });
});

const server = app.listen(port, host, () => {
  console.log(
    `server: ready on http://${host}:${port}/paid (${network}, price ${price} of ${token}, ` +
      `facilitator ${facilitatorUrls.join(",")})`,
  );
});
server.on("error", (err) => {
  console.error(`server: ${err.message}`);
  process.exit(1);
});
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => process.exit(0));
}
