#!/usr/bin/env bash
# What one proxied small chat POST costs infergate, for A/B comparisons of
# builds on a shared machine (issue #11):
#
#   cpu        the gateway's own CPU (utime + stime from /proc) per request
#              over N requests from `h2load --h1 -c32`, each build in turn,
#              ROUNDS times, so slow spells of the machine hit every build;
#   callgrind  user-space instructions per request under valgrind's
#              callgrind (N requests after a warm-up), the same whatever else
#              runs; the profile is kept in PROFILE_DIR (default /tmp)
#              for callgrind_annotate --inclusive=no.
#
# The upstreams are 4 nginx `return 200` ports with a small chat completion,
# as in bench/e2e.sh. Installs nginx, h2load and valgrind with apt when
# missing.
# Usage: bench/request-cost.sh cpu|callgrind BINARY [BINARY ...]
#        (N=150000 ROUNDS=3 for cpu; N=5000 for callgrind)
set -euo pipefail
MODE=${1:?cpu or callgrind}
shift
[ $# -ge 1 ] || { echo "give one or more infergate binaries" >&2; exit 2; }
need() { command -v "$1" >/dev/null || { (apt-get update -qq && apt-get install -y -qq "$2") >/dev/null; }; }
need nginx nginx; need h2load nghttp2-client
[ "$MODE" = callgrind ] && need valgrind valgrind
W=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

UP=19400; GW=19480
CHAT='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":14,"completion_tokens":1,"total_tokens":15}}'
mkdir -p "$W/up"
{
  printf 'worker_processes 1; pid %s/up.pid; error_log %s/up/error.log;\n' "$W" "$W"
  printf 'events { worker_connections 8192; }\n'
  printf 'http { access_log off; keepalive_requests 1000000; client_body_temp_path %s/up;\n server {' "$W"
  for i in 0 1 2 3; do printf ' listen 127.0.0.1:%s;' $((UP + i)); done
  printf "\n  location / { default_type application/json; return 200 '%s'; } } }\n" "$CHAT"
} > "$W/up.conf"
nginx -c "$W/up.conf" -g 'daemon off;' &
{
  printf '[listener]\naddr = "127.0.0.1:%s"\n[admin]\naddr = "127.0.0.1:%s"\n[[pools]]\nname = "p"\n' $GW $((GW + 1))
  for i in 0 1 2 3; do printf '[[pools.nodes]]\nname = "n%s"\naddr = "127.0.0.1:%s"\n' $i $((UP + i)); done
  printf '[[routes]]\nname = "r"\npool = "p"\npolicy = "least_outstanding"\n'
} > "$W/gw.toml"
printf '%s' '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hi in one word."}],"max_tokens":1}' > "$W/body.json"
load() { h2load --h1 -c"$1" -n "$2" -d "$W/body.json" -H content-type:application/json "http://127.0.0.1:$GW/v1/chat/completions"; }
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.3; done
  echo "port $1 did not open" >&2; exit 1
}
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # clock ticks
TICK=$(getconf CLK_TCK)

case "$MODE" in
cpu)
  N=${N:-150000}
  for round in $(seq 1 "${ROUNDS:-3}"); do
    for bin in "$@"; do
      RUST_LOG=warn "$bin" serve --config "$W/gw.toml" >"$W/gw.log" 2>&1 &
      pid=$!
      wait_port $GW
      load 32 5000 >/dev/null
      t0=$(cpu_of $pid)
      rps=$(load 32 "$N" | awk '/^finished in/ {print $4}')
      t1=$(cpu_of $pid)
      kill $pid; wait $pid 2>/dev/null || true
      awk -v b="$bin" -v r="$round" -v rps="$rps" -v t=$((t1 - t0)) -v n="$N" -v hz="$TICK" \
        'BEGIN { printf "round %s  %-50s %10s req/s  %6.1f us CPU/request\n", r, b, rps, t / hz * 1e6 / n }'
    done
  done
  ;;
callgrind)
  N=${N:-5000}
  for bin in "$@"; do
    out="$W/callgrind.out"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" serve --config "$W/gw.toml" >"$W/gw.log" 2>&1 &
    pid=$!
    wait_port $GW
    load 8 1000 >/dev/null
    callgrind_control -z $pid >/dev/null 2>&1
    load 8 "$N" >/dev/null
    callgrind_control -d $pid >/dev/null 2>&1
    sleep 1
    kill $pid; wait $pid 2>/dev/null || true
    kept="${PROFILE_DIR:-/tmp}/callgrind.$(basename "$bin").$$.out"
    cp "$(ls "$out".* | head -1)" "$kept"
    callgrind_annotate "$kept" 2>/dev/null | awk -v b="$bin" -v n="$N" -v k="$kept" \
      '/PROGRAM TOTALS/ { gsub(",", "", $1); printf "%-50s %8.0f instructions/request  (profile: %s)\n", b, $1 / n, k }'
  done
  ;;
*) echo "mode: cpu or callgrind" >&2; exit 2 ;;
esac
