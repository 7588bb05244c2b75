#!/usr/bin/env bash
# Starts an N-node x402-cluster on 127.0.0.1 in the background, data under DIR, and returns once
# it has a leader that every node knows.
#
#   deploy/local/up.sh N DIR
#
# Writes DIR/urls (one node URL a line), DIR/pids (`node-id pid url` a line) and DIR/env (exports
# for x402ctl: X402_NODES, X402_ADMIN_TOKEN, PATH), all readable by their owner only (they hold
# the admin token and, with a dev chain, keys). Stop with deploy/local/down.sh DIR.
#
# Environment:
#   X402_BASE_PORT   first port (default 7101); node i listens on BASE_PORT + i - 1 for the API
#                    and on BASE_PORT + 100 + i - 1 for its peers
#   X402_BIN_DIR     where x402-node and x402ctl are (default: build them, release profile)
#   X402_NODE_ENV    extra KEY=VALUE settings for every node, space separated, e.g.
#                    "X402_RAFT__HEARTBEAT_MS=100 X402_LIMITS__PROPOSE_TIMEOUT_MS=5000"
#   X402_NODE_TOML   a TOML file added to every node's config.toml (after the node's own keys,
#                    before its [bootstrap] table), e.g. a [facilitator] section
#   X402_DEVCHAIN    1: first start a local chain with `x402-devchain start DIR/devchain` (anvil
#                    with our EIP-3009 TestUSDC, the payer funded; see deploy/local/devnet.sh), add
#                    its [facilitator] section to every node's config, give the nodes its signer
#                    keys (X402_SIGNER_KEYS) and add its exports to DIR/env. x402-devchain is
#                    built too, or taken from X402_BIN_DIR. anvil comes from X402_ANVIL or
#                    contracts/node_modules (`cd contracts && npm ci`).
#   X402_TLS         1: serve every node's API over TLS and peers over mutual TLS:
#                    `x402ctl tls init DIR/tls` makes a CA (DIR/tls/ca.pem, also every node's
#                    peer_ca_file) and node certificates for 127.0.0.1 and localhost, node
#                    URLs in DIR/urls and member URLs are https://, and DIR/env exports
#                    X402_CACERT (x402ctl) (demo.sh hands it to the official SDK's node
#                    processes).
#   X402_DEVCHAIN_PORT      anvil's port (default 8545)
#   X402_DEVCHAIN_CHAIN_ID  its chain id (default 31337)
set -euo pipefail

usage() { echo "usage: $0 N DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
n=$1
dir=$2
case "$n" in ''|*[!0-9]*) usage ;; esac
[ "$n" -ge 1 ] && [ "$n" -le 9 ] || { echo "N must be 1..9" >&2; exit 2; }

root=$(cd "$(dirname "$0")/../.." && pwd)
base_port=${X402_BASE_PORT:-7101}
devchain=${X402_DEVCHAIN:-}
case "$devchain" in ''|0) devchain="" ;; 1) ;; *) echo "X402_DEVCHAIN must be 0 or 1" >&2; exit 2 ;; esac
tls=${X402_TLS:-}
case "$tls" in ''|0) tls="" ;; 1) ;; *) echo "X402_TLS must be 0 or 1" >&2; exit 2 ;; esac
scheme=http
[ -n "$tls" ] && scheme=https
node_toml=${X402_NODE_TOML:-}
if [ -n "$node_toml" ] && [ ! -f "$node_toml" ]; then
  echo "X402_NODE_TOML: no file $node_toml" >&2; exit 1
fi
if [ -z "${X402_BIN_DIR:-}" ]; then
  (cd "$root" && cargo build --release --quiet -p x402-node -p x402-client)
  if [ -n "$devchain" ]; then
    (cd "$root" && cargo build --release --quiet -p x402-dev --bin x402-devchain)
  fi
  bin_dir="$root/target/release"
else
  bin_dir=$X402_BIN_DIR
fi
[ -x "$bin_dir/x402-node" ] && [ -x "$bin_dir/x402ctl" ] || {
  echo "x402-node or x402ctl missing in $bin_dir" >&2; exit 1; }
if [ -n "$devchain" ] && [ ! -x "$bin_dir/x402-devchain" ]; then
  echo "x402-devchain missing in $bin_dir (cargo build -p x402-dev --bin x402-devchain)" >&2
  exit 1
fi

if [ -f "$dir/pids" ]; then
  echo "$dir already holds a cluster (stop it with deploy/local/down.sh $dir)" >&2
  exit 1
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

random_secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
# Everything written from here on is for this user only.
umask 077
[ -f "$dir/cluster-secret" ] || random_secret > "$dir/cluster-secret"
[ -f "$dir/admin-token" ] || random_secret > "$dir/admin-token"

if [ -n "$tls" ] && [ ! -f "$dir/tls/ca.pem" ]; then
  "$bin_dir/x402ctl" tls init "$dir/tls" --nodes "$n" --host 127.0.0.1 --host localhost >/dev/null
fi

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bootstrap=""
: > "$dir/urls"
for i in $(seq 1 "$n"); do
  port=$((base_port + i - 1))
  peer_port=$((base_port + 100 + i - 1))
  for p in "$port" "$peer_port"; do
    if port_in_use "$p"; then
      echo "port $p is in use; set X402_BASE_PORT" >&2
      exit 1
    fi
  done
  # Members know each other by their peer URLs.
  bootstrap="$bootstrap$i = \"$scheme://127.0.0.1:$peer_port\"\n"
  echo "$scheme://127.0.0.1:$port" >> "$dir/urls"
done

# What goes into every config between the node's own keys and [bootstrap]: X402_NODE_TOML, then
# the dev chain's [facilitator] section. (The trailing "." keeps the blank line $(...) would cut.)
extra_toml=""
if [ -n "$node_toml" ]; then
  extra_toml=$(cat "$node_toml"; printf '\n\n.'); extra_toml=${extra_toml%.}
fi
if [ -n "$devchain" ]; then
  "$bin_dir/x402-devchain" start "$dir/devchain" \
    --port "${X402_DEVCHAIN_PORT:-8545}" --chain-id "${X402_DEVCHAIN_CHAIN_ID:-31337}"
  fragment=$(cat "$dir/devchain/facilitator.toml"; printf '\n\n.'); fragment=${fragment%.}
  extra_toml="$extra_toml$fragment"
  # The nodes' signer keys (anvil's public dev keys #1 and #2), inherited by every node.
  X402_SIGNER_KEYS=$(. "$dir/devchain/devchain.env" && printf '%s' "$X402_SIGNER_KEYS")
  export X402_SIGNER_KEYS
fi

: > "$dir/pids"
for i in $(seq 1 "$n"); do
  port=$((base_port + i - 1))
  peer_port=$((base_port + 100 + i - 1))
  node_dir="$dir/node$i"
  mkdir -p "$node_dir"
  tls_toml=""
  if [ -n "$tls" ]; then
    tls_toml="[tls]
cert_file = \"$dir/tls/node$i.pem\"
key_file = \"$dir/tls/node$i.key\"
peer_ca_file = \"$dir/tls/ca.pem\"

"
  fi
  cat > "$node_dir/config.toml" <<TOML
node_id = $i
listen = "127.0.0.1:$port"
advertise_url = "$scheme://127.0.0.1:$port"
peer_listen = "127.0.0.1:$peer_port"
data_dir = "$node_dir/data"
cluster_secret_file = "$dir/cluster-secret"
admin_token_file = "$dir/admin-token"

${extra_toml}${tls_toml}[bootstrap]
$(printf "$bootstrap")
TOML
  # shellcheck disable=SC2086
  # X402_TLS is this script's switch, not the node's [tls] section (X402_ names config keys).
  env -u X402_TLS ${X402_NODE_ENV:-} nohup "$bin_dir/x402-node" --config "$node_dir/config.toml" \
    >> "$node_dir/node.log" 2>&1 < /dev/null &
  echo "$i $! $scheme://127.0.0.1:$port" >> "$dir/pids"
done

cat > "$dir/env" <<ENV
export X402_NODES=$(paste -sd, "$dir/urls")
export X402_ADMIN_TOKEN=$(cat "$dir/admin-token")
export PATH="$bin_dir:\$PATH"
ENV
if [ -n "$tls" ]; then
  printf 'export X402_CACERT=%s\n' "$dir/tls/ca.pem" >> "$dir/env"
fi
if [ -n "$devchain" ]; then cat "$dir/devchain/devchain.env" >> "$dir/env"; fi

# Wait until every node answers and names the same leader.
cacert=""
[ -n "$tls" ] && cacert="$dir/tls/ca.pem"
if env X402_NODES="$(paste -sd, "$dir/urls")" X402_ADMIN_TOKEN="$(cat "$dir/admin-token")" \
  ${cacert:+X402_CACERT="$cacert"} "$bin_dir/x402ctl" wait-leader --wait 30 >/dev/null; then
  echo "x402-cluster of $n nodes is up; data in $dir"
  echo "  . $dir/env && x402ctl status"
  if [ -n "$devchain" ]; then
    echo "  settles on $(. "$dir/devchain/devchain.env" && echo "$X402_NETWORK at $X402_RPC_URL, token $X402_TOKEN")"
  fi
  exit 0
fi
echo "the cluster did not elect a leader within 30 s; logs: $dir/node*/node.log" >&2
exit 1
