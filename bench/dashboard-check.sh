#!/usr/bin/env bash
# Browser check of the admin dashboard: starts `infergate demo` (4 simulated
# nodes, gateway, workload) with the admin listener on a free port, loads
# the dashboard in headless Chromium (playwright-core), waits until the live
# numbers change over the event stream, then saves a screenshot to
# docs/dashboard.png.
# Installs Debian's chromium if missing (needs root and the Debian mirror).
# Usage: bench/dashboard-check.sh [seconds-of-traffic-before-screenshot=20]
set -euo pipefail
cd "$(dirname "$0")/.."
WARM=${1:-20}
source bench/demo-lib.sh
start_demo
echo "demo running, dashboard on $URL; $WARM s of traffic first"
sleep "$WARM"
fail=0
node bench/dashboard-check.mjs "$URL" "${SCREENSHOT:-$PWD/docs/dashboard.png}" || fail=1
curl -s "http://127.0.0.1:$PORT/metrics" | grep -c '^infergate_' | xargs echo "metric samples:"
[ $fail -eq 0 ] && echo "dashboard check passed; screenshot in ${SCREENSHOT:-docs/dashboard.png}"
exit $fail
