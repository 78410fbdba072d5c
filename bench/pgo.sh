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
# Output: target/pgo/release/infergate (the usual target/release is not
# touched). Needs rustup's llvm-tools (installed here when missing) for
# llvm-profdata of the compiler's own LLVM version.
# Usage: bench/pgo.sh        (then e.g. INFERGATE_BIN=target/pgo/release/infergate bench/e2e.sh)
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

echo "== 2. training load"
INFERGATE_BIN="$GEN_BIN" ROUNDS=1 STREAMS=${PGO_STREAMS:-300} bash bench/e2e.sh "${PGO_DURATION:-5s}" 32 >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$GEN_BIN" bench --policies prefix_aware,composite,least_outstanding \
  --duration "${PGO_BENCH_DURATION:-20s}" --output "$work/bench" >/dev/null
ls "$DATA"/*.profraw >/dev/null

echo "== 3. merge and optimised build ($OUT_DIR)"
"$profdata" merge -o "$DATA/merged.profdata" "$DATA"
RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata" CARGO_TARGET_DIR="$OUT_DIR" cargo build --release -q
echo "built $OUT_DIR/release/infergate"
