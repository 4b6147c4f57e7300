#!/usr/bin/env python3
"""Undo scripts/new_loss.py NAME: remove the crate, its workspace and registry lines."""
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    name = sys.argv[1]
    ident = name.replace("-", "_")
    shutil.rmtree(ROOT / "crates" / "losses" / name, ignore_errors=True)
    for path, pattern in [
        (ROOT / "Cargo.toml", rf'^lossbench-{re.escape(name)} = {{ path = "crates/losses/{re.escape(name)}" }}\n'),
        (ROOT / "crates" / "registry" / "Cargo.toml", rf"^lossbench-{re.escape(name)}\.workspace = true\n"),
        (ROOT / "crates" / "registry" / "src" / "lib.rs", rf"^    \w+ => lossbench_{re.escape(ident)}::\w+,\n"),
    ]:
        path.write_text(re.sub(pattern, "", path.read_text(), flags=re.M))
    print(f"removed the loss `{name}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
