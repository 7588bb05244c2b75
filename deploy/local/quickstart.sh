#!/usr/bin/env bash
# The whole thing on one machine, from a fresh clone: anvil with our EIP-3009 token, a 3-node
# x402-cluster settling on it, and one paid request made by the official x402 SDK — a resource
# server with @x402/express whose facilitator is our cluster, and a client paying with
# @x402/fetch. Prints the settlement's transaction hash. The world keeps running afterwards:
#
#   deploy/local/quickstart.sh [DIR]         # default DIR: .local/devnet
#   . DIR/env && x402ctl status && x402ctl pay --network "$X402_NETWORK" --asset "$X402_TOKEN" \
#       --pay-to "$X402_PAY_TO" --amount 10000
#   deploy/local/down.sh DIR --wipe
#
# X402_TLS=1 serves the nodes over https:// (a CA made under DIR/tls; the SDK trusts it through
# NODE_EXTRA_CA_CERTS). Needs only the Rust toolchain, node and npm: anvil comes from the npm package
# @foundry-rs/anvil-linux-amd64 (contracts/), the SDK from deploy/local/demo/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-.local/devnet}
if [ ! -x "$root/contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil" ]; then
  echo "installing anvil (npm ci in contracts/)" >&2
  (cd "$root/contracts" && npm ci --silent --no-audit --no-fund)
fi
if [ -f "$dir/pids" ]; then
  echo "$dir already holds a cluster; reusing it (stop it with deploy/local/down.sh $dir)" >&2
else
  "$root/deploy/local/devnet.sh" "$dir"
fi
# shellcheck disable=SC1091
. "$dir/env"
"$root/deploy/local/demo/demo.sh"
