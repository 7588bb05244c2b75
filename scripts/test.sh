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

# Debian's tools some tests run: iproute2's `ip` for the three-host test (network namespaces,
# as root, as CI runs), systemd's `systemd-analyze` for the unit in deploy/systemd. Without them
# those tests fail and say so.
missing=""
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# kubernetes-validate from PyPI (the Kubernetes JSON schemas inside, so no network at test time)
# for the manifests in deploy/kubernetes.
python3 -c "import kubernetes_validate" 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# End-to-end tests start these binaries as real processes.
cargo build --quiet -p x402-node -p x402-client --bins
export X402_BIN_DIR="$PWD/target/debug"
cargo nextest run --workspace --no-fail-fast "$@"
