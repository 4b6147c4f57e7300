#!/usr/bin/env bash
# CI check that `just new-loss` keeps working: scaffold a loss, build and test it with the
# registry and the probe, then remove it again (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
name=scaffold-check
lock_copy=$(mktemp)
cp Cargo.lock "$lock_copy"
trap 'python3 scripts/remove_loss.py "$name" >/dev/null; cp "$lock_copy" Cargo.lock' EXIT
python3 scripts/new_loss.py "$name"
# The whole workspace, as `just test` builds it: selecting packages would change the
# unified dependency features and rebuild burn.
cargo test -q --workspace 2>&1 | tail -n 3
bin="${CARGO_TARGET_DIR:-$HOME/.cache/lossbench-target}/debug/lossbench"
echo '{"loss": "scaffold-check", "features": [[1, 0]], "weights": [[1, 0], [0, 1]], "labels": [0]}' \
  | "$bin" probe --input - | grep -q '"loss"'
"$bin" losses | grep -qx "$name"
echo "scaffold check passed"
