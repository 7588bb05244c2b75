#!/usr/bin/env bash
# Starts a local x402 world on 127.0.0.1: anvil with our EIP-3009 TestUSDC (the payer holds
# 1,000,000 tokens) and an N-node x402-cluster (default 3) that settles on it, data under DIR.
#
#   deploy/local/devnet.sh DIR [N]
#   . DIR/env && x402ctl status && curl -s localhost:7101/supported
#   deploy/local/down.sh DIR          # stops the nodes and anvil (--wipe also deletes DIR)
#
# This is `X402_DEVCHAIN=1 deploy/local/up.sh N DIR`: `x402-devchain start DIR/devchain` (anvil
# pid and log, devchain.env, facilitator.toml there), every node's config gets that
# [facilitator] section and the signer keys in X402_SIGNER_KEYS, and DIR/env holds x402ctl's
# exports plus the chain's: X402_RPC_URL, X402_CHAIN_ID, X402_NETWORK (eip155:<id>),
# X402_V1_NETWORK, X402_TOKEN, X402_TOKEN_NAME, X402_TOKEN_VERSION, X402_PAY_TO, X402_PAYER,
# X402_PAYER_KEY, X402_SIGNER_KEYS. Every key is one of anvil's public dev keys: test use only.
#
# Environment: as up.sh (X402_BASE_PORT, X402_BIN_DIR, X402_TLS, X402_NODE_ENV, X402_NODE_TOML — which must
# not hold a [facilitator] section of its own), plus X402_DEVCHAIN_PORT (anvil's port, default
# 8545) and X402_DEVCHAIN_CHAIN_ID (default 31337).
set -euo pipefail
usage() { echo "usage: $0 DIR [N]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
X402_DEVCHAIN=1 exec "$(dirname "$0")/up.sh" "${2:-3}" "$1"
