#!/usr/bin/env bash
# The prepared GPU check, for one NVIDIA GPU, in under 8 minutes. The GPU machine needs no
# Rust: it runs a lossbench binary built elsewhere (`just gpu-binary` writes a stripped one to
# gpu-bin/lossbench and the copy that travels, gpu-bin/lossbench.xz, unpacked here on arrival)
# and the PyTorch installed there. It prints, and writes to a Markdown file:
#   1. `lossbench devices`, then `lossbench selfcheck` on cuda (and, quick, on wgpu): the
#      numbers of every loss head, a training step and two epochs of every loss against
#      float64 / flex, before anything is timed;
#   2. CIFAR ResNet-18 and ResNet-50 training-step throughput (batch 64 and 128) on cuda and
#      on wgpu (Vulkan), beside PyTorch eager fp32 on the same GPU, in one run;
#   3. a 2-epoch run of the demo experiment on cuda, with its report.
#
# Usage: scripts/gpu-check.sh [BINARY] [OUT_DIR]    (defaults: gpu-bin/lossbench, gpu-check)
# Vulkan: if the machine has no libvulkan, unpack the loader first (see the device notes:
# `for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig`); without it the wgpu rows are
# skipped and the file says so.
set -uo pipefail
cd "$(dirname "$0")/.."

bin=${1:-gpu-bin/lossbench}
out=${2:-gpu-check}
mkdir -p "$out"
md="$out/gpu-check.md"
start=$(date +%s)
python=${PYTHON:-python3}

# The binary travels compressed (the tree sent to a GPU machine is limited to 64 MiB).
if [ ! -x "$bin" ] && [ -f "$bin.xz" ]; then
  if command -v xz >/dev/null 2>&1; then
    xz -d -k -c "$bin.xz" >"$bin.tmp"
  else
    "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin.xz" "$bin.tmp"
  fi && chmod +x "$bin.tmp" && mv "$bin.tmp" "$bin"
fi
if [ ! -x "$bin" ]; then
  echo "error: no lossbench binary at $bin (build one with \`just gpu-binary\`)" >&2
  exit 2
fi

# NVRTC compiles cubecl's CUDA kernels at run time: use the one PyTorch ships when the system
# has none on its library path.
if ! ldconfig -p | grep -q 'libnvrtc\.so'; then
  nvrtc=$(find / -name 'libnvrtc.so*' -not -path '*/proc/*' 2>/dev/null | head -n 1)
  if [ -n "$nvrtc" ]; then
    export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # cudarc looks for libnvrtc.so and libnvrtc.so.12/.13; pip wheels may only have the
    # versioned name.
    if [ ! -e "$(dirname "$nvrtc")/libnvrtc.so" ]; then
      mkdir -p /tmp/lossbench-nvrtc && ln -sf "$nvrtc" /tmp/lossbench-nvrtc/libnvrtc.so
      export LD_LIBRARY_PATH="/tmp/lossbench-nvrtc:$LD_LIBRARY_PATH"
    fi
  fi
fi
# The autotune cache of this check stays with it.
export LOSSBENCH_KERNEL_CACHE="$out/kernel-cache"

section() { printf '\n## %s\n\n' "$1" | tee -a "$md"; }
elapsed() { echo $(( $(date +%s) - start )); }

{
  echo "# lossbench GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- binary: \`$("$bin" --version)\`, $(du -h "$bin" | cut -f1)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi unavailable')"
  echo "- PyTorch: $("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())' 2>&1 | tail -n 1)"
  echo "- NVRTC: ${nvrtc:-from the system library path}"
} | tee "$md"

section "lossbench devices"
{ echo '```'; timeout 120 "$bin" devices 2>&1; echo '```'; } | tee -a "$md"

backends=cuda
if "$bin" devices 2>/dev/null | grep -E '^wgpu ' | grep -q 'GPU'; then
  backends=cuda,wgpu
else
  echo "wgpu: no Vulkan GPU adapter here, wgpu rows skipped" | tee -a "$md"
fi

section "Selfcheck on cuda (elapsed $(elapsed) s)"
{ echo '```'; timeout 120 "$bin" selfcheck --backend cuda 2>&1 | tail -n 80; echo "exit code: ${PIPESTATUS[0]}"; echo '```'; } | tee -a "$md"
if [ "$backends" = cuda,wgpu ]; then
  section "Selfcheck on wgpu, quick (elapsed $(elapsed) s)"
  { echo '```'; timeout 60 "$bin" selfcheck --backend wgpu --quick 2>&1 | tail -n 50; echo "exit code: ${PIPESTATUS[0]}"; echo '```'; } | tee -a "$md"
fi

section "Training-step throughput, side by side (elapsed $(elapsed) s)"
echo "lossbench on $backends (warm-up 5 steps, median of 20; autotune on, fusion off: README) and PyTorch eager fp32 on the same GPU (its defaults: cuDNN may use TF32 for convolutions). Ratio = lossbench time / PyTorch time (< 1: lossbench faster)." | tee -a "$md"
echo | tee -a "$md"
timeout 240 "$bin" bench --only train_step --backends "$backends" \
  --pytorch "$python" --pytorch-device cuda --out "$out/bench.json" \
  >"$out/bench.md" 2>"$out/bench.log"
status=$?
if [ "$status" -ne 0 ]; then
  echo "bench failed or timed out (exit $status); log tail:" | tee -a "$md"
  { echo '```'; tail -n 30 "$out/bench.log"; echo '```'; } | tee -a "$md"
else
  tee -a "$md" <"$out/bench.md"
fi

section "Demo experiment, 2 epochs on cuda (elapsed $(elapsed) s)"
remaining=$(( 470 - $(elapsed) ))
if [ "$remaining" -lt 60 ]; then
  echo "skipped: too little of the 8 minutes left" | tee -a "$md"
else
  timeout "$remaining" "$bin" run experiments/demo.toml --backend cuda --epochs 2 \
    --results "$out/results" >"$out/demo.log" 2>&1
  status=$?
  { echo '```'; grep -E 'epoch 2/2|^[a-z-]+ +[0-9]+  ' "$out/demo.log" | tail -n 40; echo '```'; } | tee -a "$md"
  echo "run exit code: $status" | tee -a "$md"
  "$bin" report "$out/results/demo" --out "$out/report" >>"$out/demo.log" 2>&1 &&
    echo "report: $out/report/index.html" | tee -a "$md"
fi
echo | tee -a "$md"
echo "total: $(elapsed) s" | tee -a "$md"
