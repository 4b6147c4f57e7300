# lossbench — `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

# One cargo target folder outside the clone, shared by every checkout and CI run.
export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", env_var("HOME") / ".cache/lossbench-target")

# The binary built with the same feature set as the tests (`--all-targets`): building the
# package alone would unify dependency features differently and rebuild burn from scratch.
lossbench := CARGO_TARGET_DIR / "debug/lossbench"

# List the recipes
default:
    @just --list

# Build the lossbench binary (and the tests: one feature set, one build)
build:
    cargo build --locked --workspace --all-targets

# Fetch the data if missing, run every (loss, seed) — resuming finished or interrupted runs — and write the report
reproduce experiment="experiments/cifar100-resnet50-blog.toml" *args="": build
    {{lossbench}} run {{experiment}} --fetch --resume {{args}}
    {{lossbench}} report {{experiment}}

# The synthetic end-to-end demo: every loss, 2 seeds, report included (3–9 minutes on 2 cores)
demo results="results" report="reports/demo" *args="": build
    {{lossbench}} run experiments/demo.toml --resume --backend flex --results {{results}} {{args}}
    {{lossbench}} report {{results}}/demo --out {{report}}

# Your own images: a generated folder of PNG and JPEG files, closed set and open set (retrieval), reports included
demo-folder results="results" report="reports" *args="": build
    test -f data/demo-folder/lossbench-synthetic.json || {{lossbench}} data synth --format folder --image-format mixed --side 32 --classes 12 --train-per-class 50 --test-per-class 20 --out data/demo-folder
    {{lossbench}} run experiments/demo-folder.toml --resume --backend flex --results {{results}} {{args}}
    {{lossbench}} report {{results}}/demo-folder --out {{report}}/demo-folder
    {{lossbench}} run experiments/demo-folder-open.toml --resume --backend flex --results {{results}} {{args}}
    {{lossbench}} report {{results}}/demo-folder-open --out {{report}}/demo-folder-open

# The binary's own parity checks on a backend (heads vs float64, a training step and two epochs vs flex)
selfcheck backend="auto": build
    {{lossbench}} selfcheck --backend {{backend}}

# Rebuild the report of an experiment from results/ (an experiment file or results/<name>)
report experiment: build
    {{lossbench}} report {{experiment}}

# Run the test suite
test:
    cargo test --locked --workspace

# The slow tests: crash safety (SIGKILL / SIGTERM + resume), wgpu parity and training end to end
test-slow:
    cargo test --locked --workspace -- --ignored

# Clippy with warnings as errors, and the format check
lint:
    cargo clippy --locked --workspace --all-targets -- -D warnings
    cargo fmt --all -- --check

# Format the code
fmt:
    cargo fmt --all

# Benchmarks: loss heads, training steps and the data path (writes bench/results.json)
bench *args="": build
    {{lossbench}} bench --out bench/results.json {{args}}

# Benchmarks beside PyTorch in one run (installs torch into ~/.cache/lossbench-torch-venv on first use)
bench-pytorch *args="": build
    test -x "$HOME/.cache/lossbench-torch-venv/bin/python" || python3 -m venv "$HOME/.cache/lossbench-torch-venv"
    "$HOME/.cache/lossbench-torch-venv/bin/python" -c "import torch, torchvision" 2>/dev/null || "$HOME/.cache/lossbench-torch-venv/bin/pip" install torch torchvision
    {{lossbench}} bench --out bench/results.json --pytorch "$HOME/.cache/lossbench-torch-venv/bin/python" {{args}}

# The Slurm exporter on a real one-node Slurm on this machine (root; installs slurm-wlm + munge)
slurm-check: build
    bash scripts/slurm-check.sh {{lossbench}}

# The binary for a GPU machine without Rust (scripts/gpu-check.sh runs it): release, stripped,
# CUDA (NVRTC at run time, no LLVM download) and wgpu, with burn's autotune (cleared by the
# parity checks on lavapipe; fusion is not: README). gpu-bin/lossbench.xz is what travels.
gpu-binary:
    cargo build --locked --profile gpu -p lossbench-cli --features cuda,autotune
    mkdir -p gpu-bin
    cp "{{CARGO_TARGET_DIR}}/gpu/lossbench" gpu-bin/lossbench
    xz -T0 -6 -k -f gpu-bin/lossbench
    ls -la gpu-bin

# Scaffold a new loss crate NAME (NormFace maths, registry line, test-kit test)
new-loss name:
    python3 scripts/new_loss.py {{name}}

# Exactly what CI runs
ci:
    bash .ci/run
