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
bash bench/browser-setup.sh
cargo build -q
BIN=target/debug/infergate
WORK=$(mktemp -d)
cleanup() { [ -n "${DEMO:-}" ] && kill "$DEMO" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# A token known to this script only (never printed).
CONSOLE_TOKEN="check-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export CONSOLE_TOKEN
INFERGATE_ADMIN_TOKEN="$CONSOLE_TOKEN" RUST_LOG=warn $BIN demo --port 0 --admin-port "$PORT" --rate 30 \
  --policy weighted_round_robin --config-out "$WORK/demo.toml" >"$WORK/demo.log" 2>&1 &
DEMO=$!
up=0
for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
if [ $up -eq 0 ]; then echo "FAIL: the demo's admin listener did not come up"; cat "$WORK/demo.log"; exit 1; fi
URL="http://127.0.0.1:$PORT/"
echo "demo running, dashboard on $URL, config in $WORK/demo.toml"
fail=0
node bench/console-check.mjs "$URL" "$WORK/demo.toml" "${SCREENSHOT:-$PWD/docs/console.png}" || fail=1
if grep -q "$CONSOLE_TOKEN" "$WORK/demo.log" "$WORK/demo.toml"; then echo "FAIL: the token shows up in the log or the config file"; fail=1; fi
if [ $fail -eq 0 ]; then echo "console check passed; screenshot in ${SCREENSHOT:-docs/console.png}"; else echo "--- demo log (tail)"; tail -20 "$WORK/demo.log"; fi
exit $fail
