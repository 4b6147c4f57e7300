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
cargo test -q -p "lossbench-$name" -p lossbench-registry
echo '{"loss": "scaffold-check", "features": [[1, 0]], "weights": [[1, 0], [0, 1]], "labels": [0]}' \
  | cargo run -q -p lossbench-cli -- probe --input - | grep -q '"loss"'
cargo run -q -p lossbench-cli -- losses | grep -qx "$name"
echo "scaffold check passed"
