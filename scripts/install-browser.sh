#!/usr/bin/env bash
# Debian packages for the report test: headless Chromium and its matching chromedriver, which Selenium
# drives through Snakemake's HTML report (tests/report_browser.py).
# Idempotent: installs only what is missing. Needs root and apt-get.
set -euo pipefail
exec bash "$(dirname "$0")/apt-install-missing.sh" chromium chromium-driver
