#!/usr/bin/env bash
# Stops a cluster started by deploy/local/up.sh: SIGTERM, then SIGKILL after 10 s. Then stops the
# local chain (anvil) of DIR/devchain, if up.sh or devnet.sh started one (X402_DEVCHAIN=1), or of
# DIR itself if it is an `x402-devchain start` directory; its chain state is gone with it.
#
#   deploy/local/down.sh DIR [--wipe]     (--wipe also deletes DIR)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [--wipe]" >&2; exit 2; }
dir=$1

# SIGTERMs the given pids, then SIGKILLs whatever still runs after the given tenths of a second.
stop_pids() {
  local pids=$1 tenths=$2 alive p
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  for _ in $(seq 1 "$tenths"); do
    alive=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && ! is_zombie "$p" && alive="$alive $p"; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
}

# A zombie (nobody reaped it, e.g. a detached anvil in a container) counts as stopped.
is_zombie() {
  [ "$(awk '{sub(/.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null)" = "Z" ]
}

stopped=""
if [ -f "$dir/pids" ]; then
  stop_pids "$(awk '{print $2}' "$dir/pids")" 100
  rm -f "$dir/pids"
  stopped="the cluster"
fi
for chain_dir in "$dir/devchain" "$dir"; do
  [ -f "$chain_dir/anvil.pid" ] || continue
  pid=$(cat "$chain_dir/anvil.pid")
  # Only if that pid is still an anvil (the file may be stale and the pid reused).
  if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | awk '{print $1}' | grep -q anvil; then
    stop_pids "$pid" 50
  fi
  rm -f "$chain_dir/anvil.pid"
  stopped="${stopped:+$stopped and }the dev chain"
done
[ -n "$stopped" ] || { echo "no cluster in $dir" >&2; exit 1; }
if [ "${2:-}" = "--wipe" ]; then rm -rf "$dir"; fi
echo "stopped $stopped"
