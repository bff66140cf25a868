#!/usr/bin/env bash
# One prepared GPU check for the Triton VQ kernels (issue #4), < 5 minutes on an H100/H200:
#   bash bench/gpu_check.sh            # on the GPU machine: checks + timings vs cuBLAS fp16
#   bash bench/gpu_check.sh --dry-run  # on a CPU machine: TRITON_INTERPRET=1, tiny shapes
# Needs python with torch (CUDA build) and triton; installs them with pip only if missing.
# vq_kernels is used from the source tree (PYTHONPATH), so no project install is needed.
# Output: progress lines, then one JSON line (also written to $OUT/lut_gpu.json when $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ "${1:-}" == "--dry-run" && -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch, triton" 2>/dev/null; then
  echo "installing torch + triton with pip" >&2
  "$PY" -m pip install -q torch triton
fi
export PYTHONPATH="$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${1:-}" != "--dry-run" ]]; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
log="$(mktemp)"
timeout 290 "$PY" bench/lut_gpu.py "$@" | tee "$log"
if [[ -n "${OUT:-}" ]]; then tail -n 1 "$log" > "$OUT/lut_gpu.json"; fi
rm -f "$log"
