#!/usr/bin/env python3
"""Scaffold a new loss crate: `just new-loss NAME`.

Creates crates/losses/NAME (a NormFace head to edit, with the conformance test kit wired
in), adds it to the workspace dependencies and to the registry (one line), and prints what
to do next. Undo with scripts/remove_loss.py NAME.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "    // new losses go above this line"


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name))


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: new_loss.py NAME", file=sys.stderr)
        return 2
    name = sys.argv[1]
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        print(f"error: loss name `{name}` must be lower-case letters and digits, words joined by '-'", file=sys.stderr)
        return 2
    crate_dir = ROOT / "crates" / "losses" / name
    if crate_dir.exists():
        print(f"error: {crate_dir.relative_to(ROOT)} already exists", file=sys.stderr)
        return 2
    registry = ROOT / "crates" / "registry" / "src" / "lib.rs"
    text = registry.read_text()
    if MARKER not in text:
        print(f"error: {registry} lost its marker line `{MARKER.strip()}`", file=sys.stderr)
        return 1
    head, ident = camel(name) + "Head", name.replace("-", "_")
    template = (ROOT / "scripts" / "loss_template.rs").read_text()
    (crate_dir / "src").mkdir(parents=True)
    (crate_dir / "src" / "lib.rs").write_text(template.replace("__HEAD__", head).replace("__NAME__", name))
    (crate_dir / "Cargo.toml").write_text(
        f'''[package]
name = "lossbench-{name}"
description = "The {name} loss head."
version.workspace = true
edition.workspace = true
license.workspace = true
rust-version.workspace = true
publish = false

[lints]
workspace = true

[dependencies]
burn.workspace = true
lossbench-head.workspace = true
'''
    )
    cargo = ROOT / "Cargo.toml"
    ws = cargo.read_text()
    ws = ws.replace(
        'lossbench-arcface = { path = "crates/losses/arcface" }\n',
        f'lossbench-arcface = {{ path = "crates/losses/arcface" }}\nlossbench-{name} = {{ path = "crates/losses/{name}" }}\n',
    )
    cargo.write_text(ws)
    reg_cargo = ROOT / "crates" / "registry" / "Cargo.toml"
    rc = reg_cargo.read_text()
    reg_cargo.write_text(rc.replace("lossbench-arcface.workspace = true\n", f"lossbench-arcface.workspace = true\nlossbench-{name}.workspace = true\n"))
    registry.write_text(text.replace(MARKER, f"    {camel(name)} => lossbench_{ident}::{head},\n{MARKER}"))
    print(f"created crates/losses/{name} ({head}, NormFace maths) and registered it as `{name}`")
    print(f"next: edit crates/losses/{name}/src/lib.rs, then `just test` (the whole workspace: testing one package alone re-resolves dependency features and rebuilds burn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
