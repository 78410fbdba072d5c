#!/usr/bin/env bash
# A profile-guided release build (PGO) of the gateway: an instrumented build
# is run on a training load, and the final build is optimised with what it
# recorded (which branches are taken, which functions are hot), so the
# request path's code is laid out and inlined for the way it runs.
#
# Training load (the data plane as bench/e2e.sh measures it, and the
# AI-aware policies, so neither path is left cold):
#   1. bench/e2e.sh with the instrumented binary (small POSTs over HTTP/1.1
#      and h2c, SSE streams), one short round;
#   2. `infergate bench` comparing prefix_aware, composite and
#      least_outstanding on a simulated fleet (chat sessions, streamed).
#
# Then (BOLT=1, the default) a post-link layout pass: the optimised build,
# linked with its relocations kept, is instrumented by LLVM BOLT, run on
# the same training load, and rewritten with its hot functions and blocks
# packed together (docs/data-path.md, "Post-link layout"). The result must
# answer plain and TLS requests (a smoke check here) before it replaces
# the profile-guided binary, which stays next to it as `infergate.pgo`.
#
# Output: target/pgo/release/infergate (the usual target/release is not
# touched). Needs rustup's llvm-tools (installed here when missing) for
# llvm-profdata of the compiler's own LLVM version, and Debian's bolt-19
# (installed with apt when missing) for BOLT.
# Usage: bench/pgo.sh         (then e.g. INFERGATE_BIN=target/pgo/release/infergate bench/e2e.sh)
#        BOLT=0 bench/pgo.sh  (profile-guided only)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DATA="$ROOT/target/pgo-data"
GEN_DIR="$ROOT/target/pgo-gen"
OUT_DIR="$ROOT/target/pgo"

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | awk '/^host:/ {print $2}')
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
[ -x "$profdata" ] || rustup component add llvm-tools >/dev/null
[ -x "$profdata" ] || { echo "llvm-profdata not found at $profdata" >&2; exit 1; }

echo "== 1. instrumented build ($GEN_DIR)"
rm -rf "$DATA"
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR="$GEN_DIR" cargo build --release -q
GEN_BIN="$GEN_DIR/release/infergate"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The training load, run by the binary $1.
train() {
  INFERGATE_BIN="$1" ROUNDS=1 STREAMS=${PGO_STREAMS:-300} bash bench/e2e.sh "${PGO_DURATION:-5s}" 32 >/dev/null
  "$1" bench --policies prefix_aware,composite,least_outstanding \
    --duration "${PGO_BENCH_DURATION:-20s}" --output "$work/bench" >/dev/null
}

echo "== 2. training load"
train "$GEN_BIN"
ls "$DATA"/*.profraw >/dev/null

echo "== 3. merge and optimised build ($OUT_DIR)"
"$profdata" merge -o "$DATA/merged.profdata" "$DATA"
# Relocations kept in the file (not loaded): BOLT needs them to move
# functions.
RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata -Clink-arg=-Wl,--emit-relocs" \
  CARGO_TARGET_DIR="$OUT_DIR" cargo build --release -q
BIN="$OUT_DIR/release/infergate"
echo "built $BIN"
[ "${BOLT:-1}" = 1 ] || exit 0

echo "== 4. post-link layout (BOLT)"
bolt=/usr/lib/llvm-19/bin
[ -x "$bolt/llvm-bolt" ] || { (apt-get update -qq && apt-get install -y -qq bolt-19) >/dev/null; }
cp "$BIN" "$BIN.pgo"
rm -rf "$DATA/bolt" && mkdir -p "$DATA/bolt"
"$bolt/llvm-bolt" "$BIN.pgo" -o "$work/instrumented" -instrument \
  -instrumentation-file="$DATA/bolt/run.fdata" -instrumentation-file-append-pid >"$work/bolt.log" 2>&1 \
  || { cat "$work/bolt.log" >&2; exit 1; }
train "$work/instrumented"
"$bolt/merge-fdata" "$DATA"/bolt/run.fdata.*.fdata >"$DATA/bolt/merged.fdata" 2>/dev/null
"$bolt/llvm-bolt" "$BIN.pgo" -o "$work/bolted" -data="$DATA/bolt/merged.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
  -split-eh -icf=1 -use-gnu-stack -update-debug-sections >"$work/bolt.log" 2>&1 \
  || { cat "$work/bolt.log" >&2; exit 1; }

echo "== 5. smoke check of the rewritten binary (plain and TLS, HTTP/1.1 and h2)"
# BOLT moved rustls' and ring's code too: a TLS handshake and records
# through the gateway, and a plain request, before it is kept.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1
printf '[listener]\naddr = "127.0.0.1:19121"\n[admin]\naddr = "127.0.0.1:19123"\n' >"$work/plain.toml"
printf '[listener]\naddr = "127.0.0.1:19122"\n[listener.tls]\ncert = "%s"\nkey = "%s"\n[admin]\naddr = "127.0.0.1:19124"\n' \
  "$work/cert.pem" "$work/key.pem" >"$work/tls.toml"
for conf in plain tls; do
  printf '[[pools]]\nname = "p"\n[[pools.nodes]]\nname = "n"\naddr = "127.0.0.1:19120"\n[[routes]]\nname = "r"\npool = "p"\n' >>"$work/$conf.toml"
done
"$work/bolted" sim --nodes 1 --base-port 19120 >"$work/sim.log" 2>&1 &
pids=$!
for conf in plain tls; do
  "$work/bolted" serve --config "$work/$conf.toml" >"$work/$conf.log" 2>&1 &
  pids="$pids $!"
done
ok=1
body='{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
for target in "--http1.1 http://127.0.0.1:19121" "--http1.1 https://127.0.0.1:19122" "--http2 https://127.0.0.1:19122"; do
  set -- $target
  out=$(curl -sk --retry 50 --retry-connrefused --retry-delay 0 --max-time 10 "$1" \
    -H 'content-type: application/json' -d "$body" "$2/v1/chat/completions") || true
  grep -q '"chat.completion"' <<<"$out" || { echo "$target answered: $out" >&2; ok=0; }
done
kill $pids; wait $pids 2>/dev/null || true
[ $ok = 1 ] || { echo "the BOLT-rewritten binary failed its smoke check; $BIN stays the PGO build" >&2; exit 1; }
cp "$work/bolted" "$BIN"
echo "built $BIN (PGO and BOLT; PGO only: $BIN.pgo)"
