#!/usr/bin/env bash
# The main job on the embedded default: install, run the whole DAG to its final targets, write the report.
# Extra arguments go to snakemake (e.g. a target, -n for a dry run, --cores 4); the report is written
# after a plain run (no arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/snakemake --cores "${CORES:-2}" "$@"
if [[ $# -eq 0 ]]; then
    .venv/bin/snakemake --cores "${CORES:-2}" --report results/report.html
    echo "report: results/report.html"
fi
