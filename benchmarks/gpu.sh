#!/usr/bin/env bash
# The suite's base-size rows on a CUDA machine, within about 8 minutes; writes the table and JSON.
#
#   bash benchmarks/gpu.sh [OUT_DIR]      (default: $OUT when set, else ./bench-gpu)
#
# Needs python3 with torch (CUDA), transformers, tokenizers, safetensors, numpy, tqdm and matplotlib:
# the lent GPU machines' image has them, and nothing can be fetched there, so nothing is installed:
# lmzoo runs from this checkout (PYTHONPATH), and a missing package is named before anything runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench-gpu}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
"$py" - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "tokenizers", "safetensors", "numpy", "tqdm", "matplotlib")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: missing Python packages: {' '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("error: no CUDA device visible to torch")
print(torch.cuda.get_device_name(), "torch", torch.__version__)
PY
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
# bf16 eager then compiled: the MFU targets are bf16 with --compile; fp32 rows are the suite's CPU business
timeout 240 "$py" benchmarks/suite.py --device cuda --precisions bf16 --json "$out/suite-bf16.json" \
  | tee "$out/suite-bf16.txt"
timeout 240 "$py" benchmarks/suite.py --device cuda --precisions bf16 --compile --skip decode \
  --only bert gpt2 --json "$out/suite-bf16-compile.json" | tee "$out/suite-bf16-compile.txt"
