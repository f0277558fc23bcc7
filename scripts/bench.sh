#!/usr/bin/env bash
# Runs every criterion benchmark and prints each figure against its bound.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bastet/target}"
cargo bench -p bastet-benches "$@"

# The mixnode throughput harness (BENCHMARKS.md): one real mixnode process
# over TLS on 1 core, then on 2 when there are (on a 2-CPU machine the
# generator and sink then share the mixnode's cores; the report says so).
# Reports and plots go next to the build, not over the ones in docs/.
# Only on a full run: arguments select criterion benchmarks.
if [ "$#" -eq 0 ]; then
    cargo build --release --workspace --bins
    bench="$CARGO_TARGET_DIR/release/bastet-testnet"
    out="$CARGO_TARGET_DIR/bench-mixnode"
    mkdir -p "$out"
    uptime
    "$bench" bench mixnode --cores 1 --seconds 10 --plot "$out/1core.svg"
    if [ "$(nproc)" -ge 2 ]; then
        "$bench" bench mixnode --cores 2 --seconds 10 --plot "$out/2cores.svg"
    fi
fi
