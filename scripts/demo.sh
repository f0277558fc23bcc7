#!/usr/bin/env bash
# Builds Bastet in release mode and runs the local demo: a whole network on
# 127.0.0.1 and messages crossing it. Arguments go to `bastet-testnet demo`
# (e.g. --messages 5 --json --keep; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bastet/target}"

cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/bastet-testnet" demo "$@"
