#!/usr/bin/env bash
# Install the Debian packages named as arguments that are not installed yet (idempotent).
# Needs root and apt-get. --no-install-recommends keeps out mail, X11 and desktop extras: the
# packages' daemons, client commands and headless binaries are all in the packages themselves.
set -euo pipefail

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
