#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (seconds, default 60 each) and
# fails if any target found a crash (its input is in fuzz/artifacts/).
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz || exit 1
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/bastet/fuzz-target}"
failed=0
for t in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
  log="$(mktemp)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$secs" >"$log" 2>&1
  rc=$?
  runs=$(grep -Eo '^#[0-9]+' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    echo "$t: ${secs}s, ${runs#\#} executions, no crash"
  else
    echo "$t: FAILED (exit $rc), see $log"; tail -30 "$log"; failed=1
  fi
done
exit "$failed"
