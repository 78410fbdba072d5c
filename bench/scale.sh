#!/usr/bin/env bash
# Memory at scale (issue #11 item 3): many idle keep-alive client
# connections, then many SSE streams held open at once through the gateway
# (4 simulated nodes generating slowly), reporting the gateway's RSS and
# descriptors while open and after they close. The client is
# bench/scale.py (Python standard library only).
# Usage: bench/scale.sh [idle=15000] [streams=5000]   (INFERGATE_BIN=path runs another build, NO_BUILD=1 target/release as it is)
# The descriptor limit bounds the counts: each stream holds a client and a
# node connection in the gateway (check `ulimit -Hn`).
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-15000}
STREAMS=${2:-5000}
[ -n "${NO_BUILD:-}${INFERGATE_BIN:-}" ] || cargo build --release -q
BIN=${INFERGATE_BIN:-target/release/infergate}
WORK=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
# Slow generation: streams stay open while they are counted. Long header and
# idle timeouts: idle connections stay open while they are counted.
printf 'time_scale = 1.0\nmax_num_seqs = 100000\nkv_blocks = 5000000\n' > "$WORK/sim.toml"
$BIN sim --nodes 4 --base-port 19700 --config "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &
{
  printf '[listener]\naddr = "127.0.0.1:19780"\nmax_connections = 100000\nheader_timeout = "120s"\nidle_timeout = "120s"\n[admin]\naddr = "127.0.0.1:19781"\n[[pools]]\nname = "p"\n'
  for i in 0 1 2 3; do printf '[[pools.nodes]]\nname = "n%s"\naddr = "127.0.0.1:%s"\n' $i $((19700 + i)); done
  printf '[[routes]]\nname = "r"\npool = "p"\n'
} > "$WORK/gw.toml"
RUST_LOG=warn $BIN serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
GW=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/19780) 2>/dev/null && break; sleep 0.1; done
echo "gateway RSS at start: $(awk '/VmRSS/ {print int($2/1024)}' /proc/$GW/status) MB"
python3 bench/scale.py 127.0.0.1:19780 idle "$IDLE" "$GW"
python3 bench/scale.py 127.0.0.1:19780 streams "$STREAMS" "$GW"
