#!/usr/bin/env bash
# Benchmarks of the replicated core, each on a fresh local 3-node cluster of release binaries.
# Numbers come from here (and x402ctl bench), never from timed assertions in tests.
#
#   scripts/bench.sh claims   [SECS]   durable replicated nonce claims, 128 connections
#   scripts/bench.sh failover [SECS]   the same, with the leader kill -9ed a third of the way in
#   scripts/bench.sh rolling  [SECS]   the same, while every node in turn (followers first, the
#                                      leader last) is stopped with SIGTERM and started again:
#                                      failed requests (must be 0), failovers, longest stall
#   scripts/bench.sh million           1,000,000 live claims: RSS of each node, then the time a
#                                      fresh learner needs to install the snapshot and catch up
#   scripts/bench.sh verify   [SECS]   POST /verify with pre-signed payments, on-chain reads off
#                                      (facilitator.onchain_checks = false): signature + claim
#   scripts/bench.sh verify-chain [SECS]  the same with on-chain reads on, against anvil
#   scripts/bench.sh settle   [SECS]   POST /settle against anvil (automine), 2 signer keys
#   scripts/bench.sh verify-limited [SECS]  as verify, with rate limits per client IP, per payer
#                                      and per route configured (high enough never to be hit)
#   scripts/bench.sh supported [SECS]  GET /supported under a per-client-IP limit (leased quota):
#                                      prints Raft entries committed per request
#
# Environment: CONCURRENCY (default 128), X402_BASE_PORT (default 7101), BENCH_DIR (default
# .local/bench, wiped first), X402_BIN_DIR (binaries to run instead of a fresh release build),
# X402_TLS=1 (the nodes serve their API over TLS, the load generator speaks https: compare it
# with a plaintext run, alternated).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-claims}
secs=${2:-15}
concurrency=${CONCURRENCY:-128}
dir=${BENCH_DIR:-.local/bench}
case $dir in /*) ;; *) dir="$PWD/$dir" ;; esac

# X402_BIN_DIR set: run those binaries as they are (to compare two builds side by side).
if [ -z "${X402_BIN_DIR:-}" ]; then
  cargo build --release --quiet -p x402-node -p x402-client --bins
  export X402_BIN_DIR="$PWD/target/release"
fi
[ -f "$dir/pids" ] && deploy/local/down.sh "$dir" >/dev/null || true
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
trap 'deploy/local/down.sh "$dir" >/dev/null 2>&1 || true' EXIT
no_chain_toml='[facilitator]
onchain_checks = false

[[facilitator.networks]]
network = "eip155:31337"
rpc_urls = ["http://127.0.0.1:9"]
'
# Limits far above what the benchmark reaches: every request is counted, none refused.
limits_toml='
[[rate_limits]]
name = "per-ip"
per = "client_ip"
limit = 4000000000
window_ms = 60000

[[rate_limits]]
name = "per-route"
per = "route"
limit = 4000000000
window_ms = 60000
'
payer_limit_toml='
[[rate_limits]]
name = "per-payer"
per = "payer"
limit = 4000000000
window_ms = 60000
routes = ["/verify", "/settle"]
'
case "$what" in
  verify|verify-limited|supported)
    toml="$no_chain_toml"
    [ "$what" = verify-limited ] && toml="$toml$limits_toml$payer_limit_toml"
    [ "$what" = supported ] && toml="$toml$limits_toml"
    printf '%s' "$toml" > "$dir.facilitator.toml"
    X402_NODE_TOML="$dir.facilitator.toml" deploy/local/up.sh 3 "$dir" >/dev/null
    ;;
  verify-chain|settle)
    cargo build --release --quiet -p x402-dev --bin x402-devchain
    X402_DEVCHAIN=1 deploy/local/up.sh 3 "$dir" >/dev/null
    ;;
  *)
    deploy/local/up.sh 3 "$dir" >/dev/null
    ;;
esac
# shellcheck disable=SC1091
. "$dir/env"
nodes=$(paste -sd, "$dir/urls")

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)" >&2

leader_pid() {
  local id
  id=$(x402ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print([n["id"] for n in s["nodes"] if n["role"]=="leader"][0])')
  awk -v id="$id" '$1 == id {print $2}' "$dir/pids"
}

# What each payment pays for (the dev chain's token and merchant when there is one).
terms=(--network "${X402_NETWORK:-eip155:31337}"
  --asset "${X402_TOKEN:-0x5FbDB2315678afecb367f032d93F642f64180aa3}"
  --pay-to "${X402_PAY_TO:-0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65}" --amount 10000
  --token-name "${X402_TOKEN_NAME:-USD Coin}" --token-version "${X402_TOKEN_VERSION:-2}")

# The highest Raft term any node reports: its growth over a run counts the elections in it.
term() {
  x402ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(max(n["term"] for n in s["nodes"] if n.get("term") is not None))'
}

# Raft entries committed so far (the leader's committed index).
committed() {
  x402ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(max(n["committed"] or 0 for n in s["nodes"]))'
}

case "$what" in
  supported)
    before=$(committed)
    x402ctl bench supported --nodes "$nodes" --concurrency "$concurrency" --duration "$secs" --json | tee "$dir.supported.json"
    after=$(committed)
    python3 - "$before" "$after" "$dir.supported.json" <<'PY'
import json, sys
before, after, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
r = json.load(open(path)); ops = r["ops"] + r["errors"]
print(f"raft entries committed: {after - before} for {ops} requests: {(after - before) / max(ops, 1):.5f} per request", file=sys.stderr)
PY
    ;;
  verify|verify-chain|verify-limited)
    x402ctl bench verify "${terms[@]}" --nodes "$nodes" --concurrency "$concurrency" --duration "$secs" --json
    ;;
  settle)
    x402ctl bench settle "${terms[@]}" --nodes "$nodes" --concurrency "${SETTLE_CONCURRENCY:-64}" --duration "$secs" --json
    ;;
  claims)
    # Elections under full load are stalls no client asked for: there must be none.
    before=$(term)
    x402ctl bench claims --nodes "$nodes" --concurrency "$concurrency" --duration "$secs" --json
    echo "elections during the run: $(( $(term) - before ))" >&2
    ;;
  failover)
    pid=$(leader_pid)
    before=$(term)
    ( sleep "$(python3 -c "print($secs/3)")"; kill -9 "$pid"; echo "killed leader pid $pid" >&2 ) &
    x402ctl bench claims --nodes "$nodes" --concurrency "$concurrency" --duration "$secs" --json
    wait
    # One election replaces the killed leader; more are spurious (a heartbeat lost under load).
    echo "elections during the run: $(( $(term) - before ))" >&2
    ;;
  rolling)
    before=$(term)
    leader=$(x402ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print([n["id"] for n in s["nodes"] if n["role"]=="leader"][0])')
    order="$(awk -v l="$leader" '$1 != l {print $1}' "$dir/pids") $leader"
    (
      sleep "$(python3 -c "print($secs/5)")"
      for id in $order; do
        pid=$(awk -v id="$id" '$1 == id {print $2}' "$dir/pids")
        url=$(awk -v id="$id" '$1 == id {print $3}' "$dir/pids")
        t0=$(date +%s.%N)
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
        t1=$(date +%s.%N)
        env -u X402_TLS ${X402_NODE_ENV:-} nohup "$X402_BIN_DIR/x402-node" --config "$dir/node$id/config.toml" \
          >> "$dir/node$id/node.log" 2>&1 < /dev/null &
        sed -i "s|^$id $pid |$id $! |" "$dir/pids"
        until python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/readyz', timeout=1)" "$url" 2>/dev/null; do
          sleep 0.05
        done
        t2=$(date +%s.%N)
        python3 -c "print('node $id: stopped in %.0f ms, ready again %.0f ms after it was started' % (($t1 - $t0) * 1000, ($t2 - $t1) * 1000))" >&2
        sleep 1
      done
    ) &
    x402ctl bench claims --nodes "$nodes" --concurrency "$concurrency" --duration "$secs" --json
    wait
    grep -h "leadership handed off" "$dir"/node*/node.log >&2 || echo "no leadership hand-off logged" >&2
    echo "elections during the run: $(( $(term) - before ))" >&2
    ;;
  million)
    target=1000000
    while :; do
      claims=$(x402ctl status --json | python3 -c 'import json,sys; print(max(n["claims"] for n in json.load(sys.stdin)["nodes"]))')
      [ "$claims" -ge "$target" ] && break
      x402ctl bench claims --nodes "$nodes" --concurrency "$concurrency" --duration 20 --json >&2
    done
    echo "live claims: $claims" >&2
    while read -r id pid url; do
      echo "node $id RSS: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")"
    done < "$dir/pids"
    x402ctl snapshot >&2
    while read -r id pid url; do
      echo "node $id RSS right after the snapshot: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")"
    done < "$dir/pids"
    sleep 5
    while read -r id pid url; do
      echo "node $id RSS 5 s later: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$pid/status")"
    done < "$dir/pids"
    # A fresh fourth node, added as a learner: it can only catch up by installing the snapshot.
    port=$(( ${X402_BASE_PORT:-7101} + 3 ))
    peer_port=$(( ${X402_BASE_PORT:-7101} + 103 ))
    mkdir -p "$dir/node4"
    sed -e 's/^node_id = 1$/node_id = 4/' -e "s/:$(( ${X402_BASE_PORT:-7101} ))\"/:$port\"/g" \
        -e "s/:$(( ${X402_BASE_PORT:-7101} + 100 ))\"/:$peer_port\"/g" \
        -e "s#$dir/node1#$dir/node4#; s#node1/data#node4/data#" "$dir/node1/config.toml" \
      | sed '/^\[bootstrap\]/,$d' > "$dir/node4/config.toml"
    "$X402_BIN_DIR/x402-node" --config "$dir/node4/config.toml" >> "$dir/node4/node.log" 2>&1 &
    echo "4 $! http://127.0.0.1:$port" >> "$dir/pids"
    sleep 1
    leader_applied=$(x402ctl status --json | python3 -c 'import json,sys; print(max(n["applied"] or 0 for n in json.load(sys.stdin)["nodes"]))')
    start=$(date +%s.%N)
    x402ctl members add 4 "http://127.0.0.1:$peer_port" >&2
    until [ "$(X402_NODES=http://127.0.0.1:$port x402ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["nodes"]; print(s[0]["applied"] or 0 if s else 0)')" -ge "$leader_applied" ]; do
      sleep 0.1
    done
    end=$(date +%s.%N)
    python3 -c "print('learner caught up (snapshot install) in %.2f s' % ($end - $start))"
    echo "node 4 RSS: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$(awk '$1==4 {print $2}' "$dir/pids")/status")"
    ;;
  *)
    echo "usage: $0 claims|failover|rolling|million|verify|verify-chain|verify-limited|settle|supported [SECS]" >&2
    exit 2
    ;;
esac
