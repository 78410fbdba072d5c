#!/usr/bin/env bash
# Make headless Chromium and playwright-core available for the browser
# checks (bench/dashboard-check.sh, bench/console-check.sh): Debian's
# chromium package and the playwright-core npm package (no browser
# download). Exits non-zero when they cannot be installed here.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null; then
  if ! command -v apt-get >/dev/null || [ "$(id -u)" -ne 0 ]; then
    echo "browser-setup: chromium is missing and cannot be installed here (needs apt-get as root)" >&2
    exit 1
  fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || {
    echo "browser-setup: apt-get install chromium failed" >&2
    exit 1
  }
fi
if [ ! -d node_modules/playwright-core ]; then
  command -v npm >/dev/null || { echo "browser-setup: npm is missing" >&2; exit 1; }
  npm install --no-save --no-audit --no-fund --silent playwright-core@1 >/dev/null 2>&1 || {
    echo "browser-setup: npm install playwright-core failed" >&2
    exit 1
  }
fi
