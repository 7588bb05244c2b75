// A resource server that sells GET /paid through the official x402 v1 express middleware
// (x402-express 1.2), with one x402-cluster node as its facilitator. The v1 twin of
// server.mjs: v1 names its networks (base-sepolia is chain 84532) and sends X-PAYMENT.
//
// Environment:
//   X402_V1_NETWORK       v1 network name, e.g. base-sepolia                       (required)
//   X402_TOKEN            EIP-3009 token address on that chain                     (required)
//   X402_TOKEN_NAME       the token's EIP-712 domain name                          (required)
//   X402_TOKEN_VERSION    the token's EIP-712 domain version                       (required)
//   X402_TOKEN_DECIMALS   the token's decimals (default 6)
//   X402_PAY_TO           merchant address                                         (required)
//   X402_FACILITATOR_URL  one facilitator URL                                      (required)
//   X402_PRICE            price in atomic units (default 10000)
//   X402_RESOURCE         the resource URL the requirements name (default: this server's URL)
//   PORT, HOST            where to listen (default 4022 on 127.0.0.1)
import express from "express";
import { paymentMiddleware } from "x402-express";

function env(name, fallback) {
  const v = process.env[name];
  if (v !== undefined && v !== "") return v;
  if (fallback !== undefined) return fallback;
  console.error(`server-v1: ${name} is not set`);
  process.exit(2);
}

const network = env("X402_V1_NETWORK");
const token = env("X402_TOKEN");
const payTo = env("X402_PAY_TO");
const facilitatorUrl = env("X402_FACILITATOR_URL");
const port = Number(env("PORT", "4022"));
const host = env("HOST", "127.0.0.1");
const price = {
  amount: env("X402_PRICE", "10000"),
  asset: {
    address: token,
    decimals: Number(env("X402_TOKEN_DECIMALS", "6")),
    eip712: { name: env("X402_TOKEN_NAME"), version: env("X402_TOKEN_VERSION") },
  },
};

const app = express();
app.get("/healthz", (_req, res) => res.json({ ok: true }));
app.use(
  paymentMiddleware(
    payTo,
    {
      "GET /paid": {
        price,
        network,
        config: {
          description: "x402-cluster demo resource (v1)",
          resource: process.env.X402_RESOURCE || undefined,
        },
      },
    },
    { url: facilitatorUrl },
  ),
);
app.get("/paid", (_req, res) => {
  res.json({ ok: true, message: "paid content", at: new Date().toISOString() });
});

const server = app.listen(port, host, () => {
  console.log(`server: ready on http://${host}:${port}/paid (${network}, v1, facilitator ${facilitatorUrl})`);
});
server.on("error", (err) => {
  console.error(`server-v1: ${err.message}`);
  process.exit(1);
});
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => process.exit(0));
}
