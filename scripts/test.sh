#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): unit, integration and the
# end-to-end tests, which start real node processes on 127.0.0.1 from the
# binaries built first. One dev profile for everything; no --release.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bastet/target}"

cargo build --workspace --bins
cargo test --workspace
echo "test.sh: all tests passed in ${SECONDS} s (build dir ${CARGO_TARGET_DIR})"
