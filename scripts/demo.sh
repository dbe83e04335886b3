#!/usr/bin/env bash
# The main job on the embedded default: install, then run the whole DAG to its final targets.
# Extra arguments go to snakemake (e.g. a target, -n for a dry run, --cores 4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/snakemake --cores "${CORES:-2}" "$@"
