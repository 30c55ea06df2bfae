#!/usr/bin/env bash
# Accelerator check (benchmarks/gpu_check.py): ResNet-18/50 bf16+fp32 train throughput,
# simulator throughput, compile times. Offline; installs nothing; < 5 minutes on one GPU.
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # JSON + Markdown to $OUT (default .)
#   bash benchmarks/gpu_check.sh --cpu-smoke              # tiny shapes on CPU
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=".${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py --out "${OUT:-.}" "$@"
