#!/usr/bin/env bash
# The data plane against the classic proxies, one run, one proxy at a time,
# the same upstreams, reported as ratios (issue #11's method):
#
#  1. small POST: wrk -t2 -c$CONNS, a small non-streaming chat POST, through
#     infergate (least_outstanding, defaults), nginx (2 workers, upstream
#     keepalive 64) and HAProxy (nbthread 2, http-reuse always) in front of
#     4 upstreams that cost almost nothing (nginx `return 200` with a small
#     chat-completion JSON), plus straight to one upstream;
#  2. streaming (STREAM=1, the default): $STREAMS concurrent SSE streams of
#     $CHUNKS chunks each (h2load over HTTP/1.1) from 4 simulated nodes that
#     answer at once, through each proxy and straight to the nodes;
#  3. h2c clients (H2C=1, the default): h2load with $H2C_CONNS connections
#     of $H2C_STREAMS streams each, against the same small POST;
#  4. the small POST at a fixed pace (PACED=1, the default): each of wrk's
#     $CONNS connections waits $PAUSE_MS ms between its requests, so every
#     proxy serves the same load below saturation and the latencies compare
#     the proxies, not how hard each one drove the load tools it shares the
#     cores with (section 1 is closed-loop: the faster proxy also gets more
#     requests, and its p99 includes their queueing on a shared machine).
#
# For each proxy the CPU it spent (utime+stime of all its processes, from
# /proc) is divided by the requests (or chunks) it served: on a shared 2-core
# machine that is the steadiest figure. Streams also show the user-mode
# part alone (the proxy's own code; the rest is the kernel's TCP on both
# sides, which batching moves from run to run). Installs wrk, h2load, nginx and
# HAProxy with apt when missing.
# Usage: bench/e2e.sh [duration=10s] [connections=32]   (INFERGATE_BIN=path runs another build, NO_BUILD=1 target/release as it is)
# ROUNDS=n repeats the small POST and the streams n times, the proxies
# taking turns, and reports each proxy's median and the ratios of the
# medians: on a shared 2-core machine one run of one proxy can be 25 % off
# its usual figure. Each proxy gets a warm-up run of each shape first.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CONNS=${2:-32}
STREAM=${STREAM:-1}
STREAMS=${STREAMS:-1000}
CHUNKS=${CHUNKS:-500}
H2C=${H2C:-1}
PACED=${PACED:-1}
PAUSE_MS=${PAUSE_MS:-1}
H2C_CONNS=${H2C_CONNS:-8}
H2C_STREAMS=${H2C_STREAMS:-16}
ROUNDS=${ROUNDS:-1}
need() { command -v "$1" >/dev/null || { (apt-get update -qq && apt-get install -y -qq "$2") >/dev/null; }; }
need wrk wrk; need h2load nghttp2-client; need nginx nginx; need haproxy haproxy
[ -n "${NO_BUILD:-}${INFERGATE_BIN:-}" ] || cargo build --release -q
BIN=${INFERGATE_BIN:-target/release/infergate}
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

UP_PORT=19100     # 4 nginx `return 200` upstreams: 19100..19103
SIM_PORT=19110    # 4 simulated nodes for streams: 19110..19113
GW=19180; NGX=19181; HAP=19182            # proxies in front of the upstreams
GW_S=19190; NGX_S=19191; HAP_S=19192      # the same proxies in front of the sims
CHAT='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"llama-3.1-8b-instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":14,"completion_tokens":1,"total_tokens":15}}'

wait_port() {
  for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2; exit 1
}

# The cheap upstreams: one nginx worker, four ports.
mkdir -p "$WORK/up"
{
  printf 'worker_processes 1;\npid %s/up.pid;\nerror_log %s/up/error.log;\n' "$WORK" "$WORK"
  printf 'events { worker_connections 8192; }\nhttp {\n access_log off;\n keepalive_requests 1000000;\n'
  printf ' client_body_temp_path %s/up;\n' "$WORK"
  printf ' server {\n'
  for i in 0 1 2 3; do printf '  listen 127.0.0.1:%s;\n' $((UP_PORT + i)); done
  printf "  location / { default_type application/json; return 200 '%s'; }\n }\n}\n" "$CHAT"
} > "$WORK/up.conf"
nginx -c "$WORK/up.conf" -g 'daemon off;' >"$WORK/up.log" 2>&1 &

# Simulated nodes that stream at once (time_scale ~0), for the SSE section.
printf 'time_scale = 0.000001\n' > "$WORK/sim.toml"
$BIN sim --nodes 4 --base-port $SIM_PORT --config "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &

gateway_conf() { # port first_upstream_port
  printf '[listener]\naddr = "127.0.0.1:%s"\nmax_connections = 16384\n[admin]\naddr = "127.0.0.1:%s"\n[[pools]]\nname = "p"\n' "$1" $(($1 + 1000))
  for i in 0 1 2 3; do printf '[[pools.nodes]]\nname = "n%s"\naddr = "127.0.0.1:%s"\n' $i $(($2 + i)); done
  printf '[[routes]]\nname = "r"\npool = "p"\npolicy = "least_outstanding"\n'
}
gateway_conf $GW $UP_PORT > "$WORK/gw.toml"
gateway_conf $GW_S $SIM_PORT > "$WORK/gw_s.toml"
RUST_LOG=warn $BIN serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
RUST_LOG=warn $BIN serve --config "$WORK/gw_s.toml" >"$WORK/gw_s.log" 2>&1 &
GW_S_PID=$!

mkdir -p "$WORK/nginx"
{
  printf 'worker_processes 2;\npid %s/nginx.pid;\nerror_log %s/nginx/error.log;\nworker_rlimit_nofile 16384;\n' "$WORK" "$WORK"
  printf 'events { worker_connections 8192; }\nhttp {\n access_log off;\n keepalive_requests 1000000;\n'
  printf ' client_body_temp_path %s/nginx;\n proxy_temp_path %s/nginx;\n' "$WORK" "$WORK"
  for u in "nodes $UP_PORT" "sims $SIM_PORT"; do
    set -- $u
    printf ' upstream %s {\n  least_conn;\n' "$1"
    for i in 0 1 2 3; do printf '  server 127.0.0.1:%s;\n' $(($2 + i)); done
    printf '  keepalive 64;\n  keepalive_requests 1000000;\n }\n'
  done
  for s in "$NGX nodes" "$NGX_S sims"; do
    set -- $s
    printf ' server {\n  listen 127.0.0.1:%s;\n  listen 127.0.0.1:%s http2;\n' "$1" $(($1 + 100))
    printf '  location / { proxy_pass http://%s; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }\n }\n' "$2"
  done
  printf '}\n'
} > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
NGX_PID=$!

{
  printf 'global\n nbthread 2\n maxconn 4096\ndefaults\n mode http\n timeout connect 2s\n timeout client 30s\n timeout server 30s\n'
  for s in "$HAP $UP_PORT" "$HAP_S $SIM_PORT"; do
    set -- $s
    printf 'frontend fe%s\n bind 127.0.0.1:%s\n bind 127.0.0.1:%s proto h2\n default_backend be%s\n' "$1" "$1" $(($1 + 100)) "$1"
    printf 'backend be%s\n balance leastconn\n http-reuse always\n' "$1"
    for i in 0 1 2 3; do printf ' server n%s 127.0.0.1:%s\n' $i $(($2 + i)); done
  done
} > "$WORK/haproxy.cfg"
haproxy -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAP_PID=$!

for p in $UP_PORT $SIM_PORT $GW $GW_S $NGX $HAP; do wait_port $p; done

# CPU ticks (utime+stime; utime alone with `user` as the second argument:
# the proxy's own code, the rest is the kernel's TCP) of a process and its
# children processes (nginx workers); threads are included in a process's
# own figures.
ticks() {
  local total=0 pid fields='$14 + $15'
  [ "${2:-}" = user ] && fields='$14'
  for pid in $1 $(pgrep -P "$1" || true); do
    [ -r /proc/$pid/stat ] || continue
    total=$((total + $(awk "{print $fields}" /proc/$pid/stat)))
  done
  echo $total
}
HZ=$(getconf CLK_TCK)
rss_kb() { local total=0 pid; for pid in $1 $(pgrep -P "$1" || true); do total=$((total + $(awk '/VmRSS/ {print $2}' /proc/$pid/status))); done; echo $total; }

wrk_run() { wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s bench/post.lua "http://127.0.0.1:$1/v1/chat/completions"; }
wrk_parse() { # requests rps p50 p99 errors
  awk '/requests in/ {n=$1} /Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
       /Non-2xx/ {err+=$NF} /Socket errors/ {err+=1}
       END {printf "%s %s %s %s %d\n", n, rps, p50, p99, err}'
}
to_us() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else {sub(/s$/,"",v); print v*1000000} }'; }

echo "== 1. small chat POST: wrk -t2 -c$CONNS -d$DURATION ($(nproc) cores), 4 nginx 'return 200' upstreams =="
wrk_run $UP_PORT >/dev/null 2>&1 || true   # warm-up
declare -A RPS P99 CPU
printf '%-26s %10s %9s %9s %7s %12s\n' target req/s p50 p99 errors "CPU us/req"
measure() { # name port pid
  local before after out
  wrk -t2 -c"$CONNS" -d2s -s bench/post.lua "http://127.0.0.1:$2/v1/chat/completions" >/dev/null 2>&1 || true
  before=$( [ -n "$3" ] && ticks "$3" || echo 0 )
  out=$(wrk_run "$2" | wrk_parse)
  after=$( [ -n "$3" ] && ticks "$3" || echo 0 )
  read -r n rps p50 p99 err <<<"$out"
  local cpu="-"
  [ -n "$3" ] && cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  RPS[$1]+="$rps "; P99[$1]+="$(to_us "$p99") "; CPU[$1]+="$cpu "
  printf '%-26s %10s %9s %9s %7s %12s\n' "$1" "$rps" "$p50" "$p99" "$err" "$cpu"
}
NGX_NAME="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
HAP_NAME="haproxy $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}' | cut -d- -f1)"
for round in $(seq 1 "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "-- round $round of $ROUNDS"
  measure direct $UP_PORT ""
  measure infergate $GW $GW_PID
  measure "$NGX_NAME" $NGX $NGX_PID
  measure "$HAP_NAME" $HAP $HAP_PID
done
# The median of a list of numbers ("-" when there is none).
median() {
  tr ' ' '\n' <<<"$1" | { grep -E '^[0-9.]+$' || true; } | sort -g |
    awk '{a[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
for t in direct infergate "$NGX_NAME" "$HAP_NAME"; do
  RPS[$t]=$(median "${RPS[$t]}"); P99[$t]=$(median "${P99[$t]}"); CPU[$t]=$(median "${CPU[$t]}")
done
if [ "$ROUNDS" -gt 1 ]; then
  echo "-- medians of $ROUNDS rounds"
  for t in direct infergate "$NGX_NAME" "$HAP_NAME"; do
    printf '%-26s %10s %9s %8sus %7s %12s\n' "$t" "${RPS[$t]}" "" "${P99[$t]}" "" "${CPU[$t]}"
  done
fi
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
printf 'infergate / nginx:   req/s %s  p99 %s  CPU/req %s\n' \
  "$(ratio "${RPS[infergate]}" "${RPS[$NGX_NAME]}")" "$(ratio "${P99[infergate]}" "${P99[$NGX_NAME]}")" "$(ratio "${CPU[infergate]}" "${CPU[$NGX_NAME]}")"
printf 'infergate / haproxy: req/s %s  p99 %s  CPU/req %s\n' \
  "$(ratio "${RPS[infergate]}" "${RPS[$HAP_NAME]}")" "$(ratio "${P99[infergate]}" "${P99[$HAP_NAME]}")" "$(ratio "${CPU[infergate]}" "${CPU[$HAP_NAME]}")"

if [ "$PACED" = 1 ]; then
  echo
  echo "== 1b. the same POST at a fixed pace: wrk -t2 -c$CONNS, $PAUSE_MS ms between a connection's requests =="
  printf '%-26s %10s %9s %9s %9s\n' target req/s p50 p90 p99
  declare -A PACED_P99
  paced() { # name port
    local out
    out=$(PAUSE_MS=$PAUSE_MS wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s bench/paced.lua "http://127.0.0.1:$2/v1/chat/completions" |
      awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2} END {print rps, p50, p90, p99}')
    read -r rps p50 p90 p99 <<<"$out"
    PACED_P99[$1]+="$(to_us "$p99") "
    printf '%-26s %10s %9s %9s %9s\n' "$1" "$rps" "$p50" "$p90" "$p99"
  }
  for round in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "-- round $round of $ROUNDS"
    paced infergate $GW
    paced "$NGX_NAME" $NGX
    paced "$HAP_NAME" $HAP
  done
  for t in infergate "$NGX_NAME" "$HAP_NAME"; do PACED_P99[$t]=$(median "${PACED_P99[$t]}"); done
  [ "$ROUNDS" -gt 1 ] && printf -- '-- median p99: infergate %sus, nginx %sus, haproxy %sus\n' \
    "${PACED_P99[infergate]}" "${PACED_P99[$NGX_NAME]}" "${PACED_P99[$HAP_NAME]}"
  printf 'paced p99: infergate / nginx %s, infergate / haproxy %s\n' \
    "$(ratio "${PACED_P99[infergate]}" "${PACED_P99[$NGX_NAME]}")" "$(ratio "${PACED_P99[infergate]}" "${PACED_P99[$HAP_NAME]}")"
fi

if [ "$H2C" = 1 ]; then
  echo
  echo "== 2. h2c clients: h2load -c$H2C_CONNS -m$H2C_STREAMS vs HTTP/1.1 h2load --h1 -c$CONNS, same POST =="
  BODY="$WORK/body.json"
  printf '%s' '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hi in one word."}],"max_tokens":1}' > "$BODY"
  printf '%-26s %14s %14s %16s\n' target "h1 req/s" "h2c req/s" "h2c CPU us/req"
  h2() { # name h1port h2port pid
    local h1 h2 before after n
    h1=$(h2load --h1 -c"$CONNS" -D "${DURATION%s}" -d "$BODY" -H 'content-type: application/json' "http://127.0.0.1:$2/v1/chat/completions" 2>/dev/null | awk '/^finished in/ {print $4}')
    before=$(ticks "$4")
    out=$(h2load -c"$H2C_CONNS" -m"$H2C_STREAMS" -D "${DURATION%s}" -d "$BODY" -H 'content-type: application/json' "http://127.0.0.1:$3/v1/chat/completions" 2>/dev/null)
    after=$(ticks "$4")
    h2=$(awk '/^finished in/ {print $4}' <<<"$out")
    n=$(awk '/^requests:/ {print $8}' <<<"$out")
    printf '%-26s %14s %14s %16s\n' "$1" "$h1" "$h2" "$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')"
  }
  h2 infergate $GW $GW $GW_PID
  h2 "$NGX_NAME" $NGX $((NGX + 100)) $NGX_PID
  h2 "$HAP_NAME" $HAP $((HAP + 100)) $HAP_PID
fi

if [ "$STREAM" = 1 ]; then
  echo
  echo "== 3. streaming: $STREAMS concurrent SSE streams x $CHUNKS chunks (h2load --h1 -c$STREAMS -n$((STREAMS * 2))) =="
  SBODY="$WORK/stream.json"
  printf '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Tell a story."}],"max_tokens":%s,"stream":true}' "$CHUNKS" > "$SBODY"
  printf '%-26s %10s %14s %14s %14s %12s\n' target "streams/s" "mean ms/stream" "CPU ns/chunk" "user ns/chunk" "RSS after MB"
  declare -A S_RATE S_CPU S_USER
  stream_run() { # port
    h2load --h1 -c"$STREAMS" -n$((STREAMS * 2)) -d "$SBODY" -H 'content-type: application/json' "http://127.0.0.1:$1/v1/chat/completions" 2>/dev/null
  }
  stream() { # name port pid
    local before after ubefore uafter out n
    # A warm-up wave first, as the small POST has: the first wave through a
    # fresh proxy also opens its connections to the nodes.
    [ "$round" = 1 ] && { stream_run "$2" >/dev/null || true; }
    before=$( [ -n "$3" ] && ticks "$3" || echo 0 )
    ubefore=$( [ -n "$3" ] && ticks "$3" user || echo 0 )
    out=$(stream_run "$2")
    after=$( [ -n "$3" ] && ticks "$3" || echo 0 )
    uafter=$( [ -n "$3" ] && ticks "$3" user || echo 0 )
    n=$(awk '/^requests:/ {print $8}' <<<"$out")
    local cpu="-" user="-" rss="-" rate
    per_chunk() { awk -v t="$1" -v hz="$HZ" -v n="$n" -v c="$CHUNKS" 'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e9 / (n * c); else print "-" }'; }
    [ -n "$3" ] && cpu=$(per_chunk $((after - before))) && user=$(per_chunk $((uafter - ubefore)))
    [ -n "$3" ] && rss=$(( $(rss_kb "$3") / 1024 ))
    rate=$(awk '/^finished in/ {print $4}' <<<"$out")
    S_RATE[$1]+="$rate "; S_CPU[$1]+="$cpu "; S_USER[$1]+="$user "
    printf '%-26s %10s %14s %14s %14s %12s\n' "$1" "$rate" \
      "$(awk '/^time for request:/ {print $6}' <<<"$out")" "$cpu" "$user" "$rss"
  }
  # The proxies take turns, ROUNDS times, as in the small POST. Their
  # order turns each round, so no proxy always runs right after the
  # direct wave, which loads one simulated node only.
  for round in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "-- round $round of $ROUNDS"
    stream "direct (1 node)" $SIM_PORT ""
    for k in 0 1 2; do
      case $(( (k + round - 1) % 3 )) in
        0) stream infergate $GW_S $GW_S_PID ;;
        1) stream "$NGX_NAME" $NGX_S $NGX_PID ;;
        2) stream "$HAP_NAME" $HAP_S $HAP_PID ;;
      esac
    done
  done
  if [ "$ROUNDS" -gt 1 ]; then
    echo "-- medians of $ROUNDS rounds (streams/s, CPU and user ns per chunk)"
    for t in "direct (1 node)" infergate "$NGX_NAME" "$HAP_NAME"; do
      printf '%-26s %10s %14s %14s %14s\n' "$t" "$(median "${S_RATE[$t]}")" "" "$(median "${S_CPU[$t]}")" "$(median "${S_USER[$t]}")"
    done
  fi
  printf 'infergate / nginx: CPU per chunk %s\n' "$(ratio "$(median "${S_CPU[infergate]}")" "$(median "${S_CPU[$NGX_NAME]}")")"
fi
