#!/usr/bin/env bash
# End-to-end overhead of the gateway: the same wrk load (small JSON POST,
# non-streaming, 1 output token) straight to one simulated node and through
# infergate in front of 4 such nodes, one run each, reported as ratios.
# The simulated nodes run with time_scale ~0, so they answer at once and the
# figures measure the HTTP path, not the model. Installs wrk if missing.
# Usage: bench/e2e.sh [duration=10s] [connections=32]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CONNS=${2:-32}
if ! command -v wrk >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi
cargo build --release -q
BIN=target/release/infergate
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

SIM_PORT=19100
GW_PORT=19180
printf 'time_scale = 0.000001\n' > "$WORK/sim.toml"
$BIN sim --nodes 4 --base-port $SIM_PORT --config "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &
{
  printf '[listener]\naddr = "127.0.0.1:%s"\n[[pools]]\nname = "p"\n' $GW_PORT
  for i in 0 1 2 3; do printf '[[pools.nodes]]\nname = "n%s"\naddr = "127.0.0.1:%s"\n' $i $((SIM_PORT + i)); done
  printf '[[routes]]\nname = "r"\npool = "p"\npolicy = "least_outstanding"\n'
} > "$WORK/gw.toml"
RUST_LOG=warn $BIN serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; exit 1
}
wait_port $SIM_PORT; wait_port $GW_PORT

run() { wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s bench/post.lua "http://127.0.0.1:$1/v1/chat/completions"; }
parse() { # rps p50 p99 errors
  awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
       /Non-2xx/ {err+=$NF} /Socket errors/ {err+=1}
       END {printf "%s %s %s %d\n", rps, p50, p99, err}' 
}
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s$/,"",v); print v*1000} }'; }

run $SIM_PORT >/dev/null 2>&1 || true   # warm-up
read -r D_RPS D_P50 D_P99 D_ERR < <(run $SIM_PORT | parse)
read -r G_RPS G_P50 G_P99 G_ERR < <(run $GW_PORT | parse)

printf '\nwrk -t2 -c%s -d%s, small chat POST, 1 output token (%s cores)\n' "$CONNS" "$DURATION" "$(nproc)"
printf '%-28s %12s %10s %10s %8s\n' target req/s p50 p99 errors
printf '%-28s %12s %10s %10s %8s\n' "direct (1 node)" "$D_RPS" "$D_P50" "$D_P99" "$D_ERR"
printf '%-28s %12s %10s %10s %8s\n' "infergate (4 nodes)" "$G_RPS" "$G_P50" "$G_P99" "$G_ERR"
awk -v g="$G_RPS" -v d="$D_RPS" -v gp50="$(to_ms "$G_P50")" -v dp50="$(to_ms "$D_P50")" \
    -v gp99="$(to_ms "$G_P99")" -v dp99="$(to_ms "$D_P99")" \
  'BEGIN { printf "ratio gateway/direct: req/s %.2f  p50 %.2f  p99 %.2f\n", g/d, gp50/dp50, gp99/dp99 }'
