#!/usr/bin/env bash
# Real HTTP/1.1 servers and a real client through the gateway: two
# FastAPI/uvicorn nodes (h11: chunked SSE streams, content-length JSON, a
# ~100 KB embeddings answer) and the `openai` SDK, sync and async, all from
# PyPI into a venv. Checks what the gateway's own node-side HTTP/1.1
# (src/proxy/h1) must get right against a server it did not write: framing,
# connection reuse, and nodes closing idle kept connections (uvicorn's
# --timeout-keep-alive), including requests arriving just as they close.
# Exits 1 when a check fails.
# Usage: bench/real-http.sh   (INFERGATE_BIN=path runs another build, NO_BUILD=1 target/release as it is;
#                              KEEP_ALIVE=seconds the nodes' keep-alive timeout, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$HOME/.cache/infergate-real-http/venv}
KEEP_ALIVE=${KEEP_ALIVE:-2}
if [ ! -x "$VENV/bin/uvicorn" ] || ! "$VENV/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check openai fastapi uvicorn >/dev/null
fi
[ -n "${NO_BUILD:-}${INFERGATE_BIN:-}" ] || cargo build --release -q
BIN=${INFERGATE_BIN:-target/release/infergate}
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export NO_PROXY=127.0.0.1 no_proxy=127.0.0.1
for port in 19300 19301; do
  (cd bench/real_http && exec "$VENV/bin/uvicorn" app:app --host 127.0.0.1 --port $port \
    --timeout-keep-alive "$KEEP_ALIVE" --log-level warning) >"$WORK/node$port.log" 2>&1 &
done
printf '[listener]\naddr = "127.0.0.1:19380"\n[admin]\naddr = "127.0.0.1:19381"\n[[pools]]\nname = "p"\n' > "$WORK/gw.toml"
for port in 19300 19301; do printf '[[pools.nodes]]\nname = "n%s"\naddr = "127.0.0.1:%s"\n' $port $port >> "$WORK/gw.toml"; done
printf '[[routes]]\nname = "r"\npool = "p"\npolicy = "least_outstanding"\n' >> "$WORK/gw.toml"
RUST_LOG=warn $BIN serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
for port in 19300 19301 19380; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
rc=0
"$VENV/bin/python" bench/real_http/client.py http://127.0.0.1:19380/v1 "$KEEP_ALIVE" || rc=$?
echo "gateway warnings: $(grep -c WARN "$WORK/gw.log" || true)"
grep WARN "$WORK/gw.log" | grep -v fd_limit | tail -5 || true
exit $rc
