#!/usr/bin/env bash
# Debian packages for the SLURM tests: a single-node slurmctld + slurmd with munge authentication.
# Idempotent: installs only what is missing. Needs root and apt-get.
set -euo pipefail

packages=(slurm-wlm munge)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps out mail and X11 extras; the daemons and client commands are all here.
apt-get install -y -qq --no-install-recommends "${missing[@]}"
