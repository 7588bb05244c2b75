#!/usr/bin/env bash
# Starts server.mjs (a resource server behind the official @x402/express middleware, with our
# cluster as facilitator) in the background, then pays for GET /paid once with pay.mjs.
#
#   deploy/local/demo/demo.sh
#
# Environment: X402_NETWORK, X402_TOKEN, X402_TOKEN_NAME, X402_TOKEN_VERSION, X402_PAY_TO,
# X402_PAYER_KEY, and X402_FACILITATOR_URL or X402_NODES (comma-separated node URLs; the server
# uses the first and fails over to the others). Optional: X402_RPC_URL (pay.mjs then checks the
# receipt on chain), PORT (default 4021), X402_PRICE (default 10000 atomic units), X402_CACERT
# (the CA of https:// node URLs; added to node's NODE_EXTRA_CA_CERTS).
# Exits with pay.mjs's status: 0 when the payment settled.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

command -v node >/dev/null || { echo "demo: node is not installed" >&2; exit 2; }
command -v npm >/dev/null || { echo "demo: npm is not installed" >&2; exit 2; }

: "${X402_FACILITATOR_URL:=${X402_NODES:-}}"
export X402_FACILITATOR_URL
missing=()
for v in X402_NETWORK X402_TOKEN X402_TOKEN_NAME X402_TOKEN_VERSION X402_PAY_TO X402_PAYER_KEY X402_FACILITATOR_URL; do
  [ -n "${!v:-}" ] || missing+=("$v")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "demo: not set: ${missing[*]} (X402_FACILITATOR_URL may come from X402_NODES)" >&2
  exit 2
fi

# Install the pinned dependencies when node_modules is missing or was installed from another lock.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -d node_modules ] || [ "$(cat node_modules/.demo-lock-sha256 2>/dev/null || true)" != "$lock_sum" ]; then
  echo "demo: npm ci"
  npm ci --silent --no-audit --no-fund
  echo "$lock_sum" > node_modules/.demo-lock-sha256
fi

export PORT=${PORT:-4021}
export X402_SERVER_URL=${X402_SERVER_URL:-http://127.0.0.1:$PORT/paid}
startup_s=${X402_STARTUP_TIMEOUT_S:-60}
export X402_STARTUP_TIMEOUT_S=$startup_s

log=$(mktemp "${TMPDIR:-/tmp}/x402-demo-server.XXXXXX")
bundle=""
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -f "$log" ${bundle:+"$bundle"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# node reads extra CAs from one file named at start-up: the cluster's CA, plus whatever the
# environment already named there (many machines set NODE_EXTRA_CA_CERTS for a proxy).
if [ -n "${X402_CACERT:-}" ]; then
  if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ "$NODE_EXTRA_CA_CERTS" != "$X402_CACERT" ]; then
    bundle=$(mktemp "${TMPDIR:-/tmp}/x402-demo-ca.XXXXXX")
    cat "$NODE_EXTRA_CA_CERTS" "$X402_CACERT" > "$bundle"
    export NODE_EXTRA_CA_CERTS=$bundle
  else
    export NODE_EXTRA_CA_CERTS=$X402_CACERT
  fi
fi

node server.mjs > "$log" 2>&1 &
server_pid=$!

# Wait for the ready line (printed once GET /supported has answered with our network).
deadline=$((SECONDS + startup_s + 10))
until grep -q '^server: ready' "$log"; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "demo: server.mjs exited before it was ready:" >&2
    sed 's/^/  /' "$log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "demo: server.mjs not ready after $((startup_s + 10))s:" >&2
    sed 's/^/  /' "$log" >&2
    exit 1
  fi
  sleep 0.2
done
grep '^server: ready' "$log"

status=0
node pay.mjs || status=$?
if [ "$status" -ne 0 ]; then
  echo "demo: pay.mjs failed (exit $status); server log:" >&2
  sed 's/^/  /' "$log" >&2
fi
exit "$status"
