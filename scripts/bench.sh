#!/usr/bin/env bash
# Runs every criterion benchmark and prints each figure against its bound.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bastet/target}"
cargo bench -p bastet-benches "$@"
