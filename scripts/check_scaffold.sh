#!/usr/bin/env bash
# CI check that `just new-loss` keeps working: scaffold a loss, build and test it with the
# registry and the probe, then remove it again (also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
name=scaffold-check
target="${CARGO_TARGET_DIR:-$HOME/.cache/lossbench-target}"
deps="$target/debug/deps"
# Test executables of the workspace (0.1-0.2 GB each; 0.9 GB while the dependencies kept
# their line tables): a new loss crate gives every crate above the registry a new hash, so
# the whole set would be linked a second time beside the first (CI once ran out of disk
# here). The first set is removed before (the next `just test` links it again), the
# scaffold's own after. The binary itself (lossbench-<hash>) stays.
remove_test_executables() {
  [ -d "$deps" ] || return 0
  find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' ! -name 'lossbench-[0-9a-f]*' "$@" -delete
}
lock_copy=$(mktemp)
marker=$(mktemp)
cp Cargo.lock "$lock_copy"
trap 'python3 scripts/remove_loss.py "$name" >/dev/null; cp "$lock_copy" Cargo.lock; remove_test_executables -newer "$marker"; rm -f "$marker" "$lock_copy"' EXIT
remove_test_executables
python3 scripts/new_loss.py "$name"
# The whole workspace, as `just test` builds it: selecting packages would change the
# unified dependency features and rebuild burn.
cargo test -q --workspace 2>&1 | grep -v '^test \|^$\|^running \|^test result: ok' | tail -n 40
bin="$target/debug/lossbench"
echo '{"loss": "scaffold-check", "features": [[1, 0]], "weights": [[1, 0], [0, 1]], "labels": [0]}' \
  | "$bin" probe --input - | grep -q '"loss"'
"$bin" losses | grep -qx "$name"
echo "scaffold check passed"
