#!/usr/bin/env bash
# Debian packages for the SLURM tests: a single-node slurmctld + slurmd with munge authentication.
# Idempotent: installs only what is missing. Needs root and apt-get.
set -euo pipefail
exec bash "$(dirname "$0")/apt-install-missing.sh" slurm-wlm munge
