#!/usr/bin/env bash
# Stops a cluster started by deploy/local/up.sh: SIGTERM, then SIGKILL after 10 s.
#
#   deploy/local/down.sh DIR [--wipe]     (--wipe also deletes DIR)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DIR [--wipe]" >&2; exit 2; }
dir=$1
[ -f "$dir/pids" ] || { echo "no cluster in $dir" >&2; exit 1; }
pids=$(awk '{print $2}' "$dir/pids")
# shellcheck disable=SC2086
kill $pids 2>/dev/null || true
for _ in $(seq 1 100); do
  alive=""
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
  [ -z "$alive" ] && break
  sleep 0.1
done
for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
rm -f "$dir/pids"
if [ "${2:-}" = "--wipe" ]; then rm -rf "$dir"; fi
echo "stopped"
