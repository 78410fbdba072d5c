#!/usr/bin/env bash
# Browser check of the configuration console: starts `infergate demo` (4
# simulated nodes, weighted round robin, weights 2/2/2/1) with a known admin
# token and the config written to a temp file, then drives headless Chromium
# (bench/console-check.mjs): enter the token in the console, set sim-0's
# weight to 5 through the form, watch the dashboard's shares follow, check
# the file, drain a node, read the audit log, show an inline validation
# error, and save a screenshot to docs/console.png.
# Installs Debian's chromium and playwright-core if missing, like
# bench/dashboard-check.sh.
# Usage: bench/console-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/demo-lib.sh
# A token known to this script only (never printed).
CONSOLE_TOKEN="check-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export CONSOLE_TOKEN INFERGATE_ADMIN_TOKEN="$CONSOLE_TOKEN"
start_demo --policy weighted_round_robin
echo "demo running, dashboard on $URL, config in $WORK/demo.toml"
fail=0
node bench/console-check.mjs "$URL" "$WORK/demo.toml" "${SCREENSHOT:-$PWD/docs/console.png}" || fail=1
if grep -q "$CONSOLE_TOKEN" "$WORK/demo.log" "$WORK/demo.toml"; then echo "FAIL: the token shows up in the log or the config file"; fail=1; fi
if [ $fail -eq 0 ]; then echo "console check passed; screenshot in ${SCREENSHOT:-docs/console.png}"; else echo "--- demo log (tail)"; tail -20 "$WORK/demo.log"; fi
exit $fail
