#!/usr/bin/env bash
# Runs many simulation seeds locally, optimized: `scripts/simulate.sh 5000` runs seeds 1..5000
# (`scripts/simulate.sh 5000 10001` starts at 10001) in 8 shards over every core. A failing seed
# prints its violations and the command that replays it; add it to simulations/regressions.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export SIM_SEEDS="${1:-2000}"
export SIM_FIRST_SEED="${2:-1}"
exec cargo nextest run --release --no-fail-fast -p x402-simulations --test vopr shard
