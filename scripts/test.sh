#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): unit, integration and the
# end-to-end tests, which start real node processes on 127.0.0.1 from the
# binaries built first. One dev profile for everything; no --release.
# With the live devices (feature bastet-testnet/live: microphone, speaker
# and camera in the bastet client), so that their tests run too.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bastet/target}"

cargo build --workspace --bins --features bastet-testnet/live
cargo test --workspace --features bastet-testnet/live
echo "test.sh: all tests passed in ${SECONDS} s (build dir ${CARGO_TARGET_DIR})"
