#!/usr/bin/env bash
# End-to-end overhead of the gateway: the same wrk load (small JSON POST,
# non-streaming, 1 output token) straight to one simulated node and through
# infergate in front of 4 such nodes, one run each, reported as ratios. When
# nginx or HAProxy are installed (`apt-get install nginx haproxy`), the same
# load also runs through each of them in front of the same 4 nodes, with
# keep-alive upstream connections and 2 workers/threads like the gateway.
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

NGINX_PORT=19181
HAPROXY_PORT=19182
if command -v nginx >/dev/null; then
  mkdir -p "$WORK/nginx"
  {
    printf 'worker_processes 2;\npid %s/nginx.pid;\nerror_log %s/nginx/error.log;\n' "$WORK" "$WORK"
    printf 'events { worker_connections 4096; }\nhttp {\n access_log off;\n'
    printf ' client_body_temp_path %s/nginx;\n proxy_temp_path %s/nginx;\n' "$WORK" "$WORK"
    printf ' upstream nodes {\n  least_conn;\n'
    for i in 0 1 2 3; do printf '  server 127.0.0.1:%s;\n' $((SIM_PORT + i)); done
    printf '  keepalive 64;\n }\n server {\n  listen 127.0.0.1:%s;\n' $NGINX_PORT
    printf '  location / { proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }\n }\n}\n'
  } > "$WORK/nginx.conf"
  nginx -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
  wait_port $NGINX_PORT
fi
if command -v haproxy >/dev/null; then
  {
    printf 'global\n nbthread 2\n maxconn 4096\ndefaults\n mode http\n timeout connect 2s\n timeout client 30s\n timeout server 30s\n'
    printf 'frontend fe\n bind 127.0.0.1:%s\n default_backend nodes\nbackend nodes\n balance leastconn\n http-reuse always\n' $HAPROXY_PORT
    for i in 0 1 2 3; do printf ' server n%s 127.0.0.1:%s\n' $i $((SIM_PORT + i)); done
  } > "$WORK/haproxy.cfg"
  haproxy -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  wait_port $HAPROXY_PORT
fi

run() { wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s bench/post.lua "http://127.0.0.1:$1/v1/chat/completions"; }
parse() { # rps p50 p99 errors
  awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
       /Non-2xx/ {err+=$NF} /Socket errors/ {err+=1}
       END {printf "%s %s %s %d\n", rps, p50, p99, err}' 
}
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s$/,"",v); print v*1000} }'; }

run $SIM_PORT >/dev/null 2>&1 || true   # warm-up
printf '\nwrk -t2 -c%s -d%s, small chat POST, 1 output token (%s cores)\n' "$CONNS" "$DURATION" "$(nproc)"
printf '%-24s %12s %10s %10s %8s   %s\n' target req/s p50 p99 errors "ratio to direct (req/s, p50, p99)"
read -r D_RPS D_P50 D_P99 D_ERR < <(run $SIM_PORT | parse)
row() { # name rps p50 p99 err
  awk -v n="$1" -v r="$2" -v p50="$3" -v p99="$4" -v e="$5" -v dr="$D_RPS" \
      -v rp50="$(to_ms "$3")" -v rp99="$(to_ms "$4")" -v dp50="$(to_ms "$D_P50")" -v dp99="$(to_ms "$D_P99")" \
    'BEGIN { printf "%-24s %12s %10s %10s %8s   %.2f  %.2f  %.2f\n", n, r, p50, p99, e, r/dr, rp50/dp50, rp99/dp99 }'
}
row "direct (1 node)" "$D_RPS" "$D_P50" "$D_P99" "$D_ERR"
read -r R P50 P99 E < <(run $GW_PORT | parse); row "infergate (4 nodes)" "$R" "$P50" "$P99" "$E"
if command -v nginx >/dev/null; then
  read -r R P50 P99 E < <(run $NGINX_PORT | parse); row "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') (4 nodes)" "$R" "$P50" "$P99" "$E"
fi
if command -v haproxy >/dev/null; then
  read -r R P50 P99 E < <(run $HAPROXY_PORT | parse); row "haproxy $(haproxy -v | head -1 | awk '{print $3}' | cut -d- -f1) (4 nodes)" "$R" "$P50" "$P99" "$E"
fi
