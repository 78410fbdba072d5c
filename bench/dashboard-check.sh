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
bash bench/browser-setup.sh
cargo build -q
BIN=target/debug/infergate
WORK=$(mktemp -d)
cleanup() { [ -n "${DEMO:-}" ] && kill "$DEMO" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn $BIN demo --port 0 --admin-port "$PORT" --rate 30 --config-out "$WORK/demo.toml" >"$WORK/demo.log" 2>&1 &
DEMO=$!
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.1
done
URL="http://127.0.0.1:$PORT/"
echo "demo running, dashboard on $URL; $WARM s of traffic first"
sleep "$WARM"
fail=0
node bench/dashboard-check.mjs "$URL" "${SCREENSHOT:-$PWD/docs/dashboard.png}" || fail=1
curl -s "http://127.0.0.1:$PORT/metrics" | grep -c '^infergate_' | xargs echo "metric samples:"
[ $fail -eq 0 ] && echo "dashboard check passed; screenshot in ${SCREENSHOT:-docs/dashboard.png}"
exit $fail
