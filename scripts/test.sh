#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, lints, unit and property tests, the
# openraft storage suites, kill -9 crash tests, turmoil simulations, end-to-end tests with real
# node processes, and the test token's tests on anvil. Ends with nextest's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

# The EIP-3009 test token: its artifact is reproducible and it behaves on a real anvil.
(cd contracts && npm ci --silent --no-audit --no-fund && npm test --silent)
# The official x402 SDK (@x402/express, @x402/fetch) for tests/tests/official_middleware.rs.
(cd deploy/local/demo && npm ci --silent --no-audit --no-fund)

# The three-host test (tests/tests/three_hosts.rs) makes network namespaces with iproute2's `ip`
# (as root, as CI runs); without it that test fails and says so.
if ! command -v ip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# End-to-end tests start these binaries as real processes.
cargo build --quiet -p x402-node -p x402-client --bins
export X402_BIN_DIR="$PWD/target/debug"
cargo nextest run --workspace --no-fail-fast "$@"
