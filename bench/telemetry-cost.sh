#!/usr/bin/env bash
# Cost of request telemetry on the data path: the bench/e2e.sh load (wrk,
# small non-streaming chat POST, 1 output token, simulated nodes answering
# at once) through two gateways in front of the same 4 nodes, one with
# telemetry on (default, admin listener and 1 s ticker running) and one with
# `[telemetry] enabled = false`, alternated ROUNDS times in the same run.
# Usage: bench/telemetry-cost.sh [duration=10s] [connections=32] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CONNS=${2:-32}
ROUNDS=${3:-3}
if ! command -v wrk >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release -q
BIN=target/release/infergate
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
SIM_PORT=19300
printf 'time_scale = 0.000001\n' > "$WORK/sim.toml"
$BIN sim --nodes 4 --base-port $SIM_PORT --config "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &
gateway() { # name port admin-section telemetry-section
  {
    printf '[listener]\naddr = "127.0.0.1:%s"\n%s\n%s\n[[pools]]\nname = "p"\n' "$2" "$3" "$4"
    for i in 0 1 2 3; do printf '[[pools.nodes]]\nname = "n%s"\naddr = "127.0.0.1:%s"\n' $i $((SIM_PORT + i)); done
    printf '[[routes]]\nname = "r"\npool = "p"\npolicy = "least_outstanding"\n'
  } > "$WORK/$1.toml"
  RUST_LOG=warn $BIN serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
}
gateway on 19380 $'[admin]\naddr = "127.0.0.1:19390"' ''
gateway off 19381 $'[admin]\nenabled = false' $'[telemetry]\nenabled = false'
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2; exit 1
}
wait_port $SIM_PORT; wait_port 19380; wait_port 19381; wait_port 19390
run() { wrk -t2 -c"$CONNS" -d"$DURATION" -s bench/post.lua "http://127.0.0.1:$1/v1/chat/completions" | awk '/Requests\/sec/ {print $2}'; }
run 19380 >/dev/null; run 19381 >/dev/null   # warm-up
ON=(); OFF=()
for r in $(seq 1 "$ROUNDS"); do
  ON+=("$(run 19380)"); OFF+=("$(run 19381)")
  echo "round $r: telemetry on ${ON[-1]} req/s, off ${OFF[-1]} req/s"
done
printf '%s\n' "${ON[@]}" > "$WORK/on"; printf '%s\n' "${OFF[@]}" > "$WORK/off"
mean() { awk '{s+=$1} END {printf "%.0f", s/NR}' "$1"; }
M_ON=$(mean "$WORK/on"); M_OFF=$(mean "$WORK/off")
echo "wrk -t2 -c$CONNS -d$DURATION x$ROUNDS ($(nproc) cores): telemetry on $M_ON req/s, off $M_OFF req/s, ratio $(awk -v a="$M_ON" -v b="$M_OFF" 'BEGIN{printf "%.3f", a/b}')"
curl -s http://127.0.0.1:19390/metrics | awk '/^infergate_requests_total/ {s+=$NF} END {print "requests counted by the telemetry gateway:", s}'
