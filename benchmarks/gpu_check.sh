#!/usr/bin/env bash
# One-command GPU check (about 8 minutes on one H100/H200): the XXL training step and its MFU, DnD-XXL vs
# 1D-XXL sampling at batch 256 with guidance against their memory/FLOP floors, DDP/FSDP over the GPUs
# present, the tokenizer's images/s. Prints one Markdown table (benchmarks/gpu_check.py explains each row).
#
#   bash benchmarks/gpu_check.sh                  install requirements.txt into .venv (scripts/install.sh), run
#   DND_PYTHON=python3 bash benchmarks/gpu_check.sh   use an environment that already has torch with CUDA
#   bash benchmarks/gpu_check.sh --rows sample     extra arguments go to gpu_check.py
#
# Nothing is downloaded besides the packages of requirements.txt: every model has random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${DND_PYTHON:-}" ]]; then
    python=$DND_PYTHON
else
    bash scripts/install.sh
    python=.venv/bin/python
fi
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: $python sees no CUDA device (torch.cuda.is_available() is False); nothing measured" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$python" benchmarks/gpu_check.py "$@"
