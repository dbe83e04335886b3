#!/usr/bin/env bash
# Debian packages for the report test: headless Chromium and its matching chromedriver, which Selenium
# drives through Snakemake's HTML report (tests/report_browser.py).
# Idempotent: installs only what is missing. Needs root and apt-get.
set -euo pipefail

packages=(chromium chromium-driver)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps out desktop extras; headless rendering needs none of them.
apt-get install -y -qq --no-install-recommends "${missing[@]}"
