#!/usr/bin/env bash
# infergate against the AI routers, side by side: the same seeded
# shared-prefix chat workload (infergate bench's chat sessions, 12 req/s)
# through infergate prefix_aware, least_outstanding and precise_prefix, the
# SGLang router (cache_aware) and the vLLM router (cache_aware), each in
# front of a fresh fleet of 4 simulated nodes (speeds 1, 1, 1, 0.5; real
# time) that publish vLLM KV events and tokenize with the fleet tokenizer.
# Prints one Markdown table: TTFT mean/p99, e2e p99 (client side, from
# `infergate bench --target`) and the fleet prefix-cache hit rate (the
# nodes' vllm:prefix_cache_hits_total / queries_total).
#
# The routers come from PyPI (sglang-router, vllm-router) into a venv under
# ~/.cache/infergate-peers; a router that cannot be installed is left out.
# Everything listens on 127.0.0.1 ports picked free at start.
#
# Two workloads by default, one table each: 8 system prompts shared by the
# sessions, and one hot system prompt shared by all of them (the classic
# cache-vs-load tension: one node cannot carry it, so the prefix must be
# replicated on several).
#
# Usage: bench/peers.sh            (DURATION=90 seconds per run, RATE=12,
#                                   SYSTEM_PROMPTS="8 1" (workloads run in
#                                   turn; 1 = one hot prefix),
#                                   RUNS="prefix_aware least_outstanding precise_prefix sglang vllm"
#                                   (add "ideal" for the workload's bound,
#                                   the least mean TTFT any router could
#                                   reach, and "pooled" for what the
#                                   fleet's cache size allows; see run_one),
#                                   BALANCE='toml lines' added to infergate's
#                                   [routes.balance],
#                                   NO_BUILD=1 to use target/release as it is,
#                                   INFERGATE_BIN=path for another build (implies NO_BUILD),
#                                   KEEP=1 to keep the logs,
#                                   REPEAT=n runs each one n times, taking
#                                   turns, and reports the mean with the
#                                   range: identical runs move the hit rate
#                                   by up to ~3 points)
# After each table, one line per gateway with what each node got (requests,
# prompt tokens, the share of them found cached, mean TTFT of the streamed
# ones, the system prompts whose sessions it served; the mean over repeats):
# the fleet hit rate follows how evenly prompt tokens are spread over the
# nodes' caches, which the totals do not show.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-90}
RATE=${RATE:-12}
SEED=${SEED:-42}
SYSTEM_PROMPTS=${SYSTEM_PROMPTS:-"8 1"}
BALANCE=${BALANCE:-}
RUNS=${RUNS:-"prefix_aware least_outstanding precise_prefix sglang vllm"}
REPEAT=${REPEAT:-1}
VENV=${VENV:-$HOME/.cache/infergate-peers/venv}
MODEL=llama-3.1-8b-instruct

[ -n "${NO_BUILD:-}${INFERGATE_BIN:-}" ] || cargo build --release -q
BIN=${INFERGATE_BIN:-target/release/infergate}

if [ ! -x "$VENV/bin/sglang-router" ] || [ ! -x "$VENV/bin/vllm-router" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check sglang-router vllm-router >/dev/null 2>&1 \
    || echo "NOTICE: pip could not install every router (needs Python >= 3.8; this is $(python3 --version)); missing ones are left out" >&2
fi

WORK=$(mktemp -d)
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; if [ -n "${KEEP:-}" ]; then echo "logs in $WORK" >&2; else rm -rf "$WORK"; fi' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A run of consecutive free ports (nodes and their event ports use port + i).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
n = int(sys.argv[1])
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); base = s.getsockname()[1]; s.close()
    if base + n > 65535:
        continue
    socks = []
    try:
        for i in range(n):
            t = socket.socket(); t.bind(("127.0.0.1", base + i)); socks.append(t)
    except OSError:
        continue
    finally:
        for t in socks:
            t.close()
    print(base)
    break
PY
}
wait_http() { # url
  for _ in $(seq 1 200); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

"$BIN" sim --print-tokenizer >"$WORK/tokenizer.json"

# The simulated nodes' cost model, written into their config and used for
# each request's TTFT floor below: a step takes DECODE_BASE_SECS plus
# PREFILL_SECS_PER_TOKEN per token prefilled (at most STEP_TOKENS a step),
# divided by the node's speed.
SPEEDS=1,1,1,0.5
STEP_TOKENS=2048
KV_BLOCKS=2048
PREFILL_SECS_PER_TOKEN=0.00005
DECODE_BASE_SECS=0.0065
export SPEEDS STEP_TOKENS PREFILL_SECS_PER_TOKEN DECODE_BASE_SECS

run_one() { # name system-prompts repeat
  local name=$1 sp=$2 tag="$1-$2-$3" base ev rp gw
  base=$(free_ports 4); ev=$(free_ports 4); rp=$(free_ports 4); gw=$(free_port)
  cat >"$WORK/sim.toml" <<EOF
time_scale = 1.0
max_num_seqs = 32
max_num_batched_tokens = $STEP_TOKENS
kv_blocks = $KV_BLOCKS
prefill_secs_per_token = $PREFILL_SECS_PER_TOKEN
decode_base_secs = $DECODE_BASE_SECS
max_model_len = 16384
default_max_tokens = 64
tokenizer = "$WORK/tokenizer.json"
[kv_events]
enable_kv_cache_events = true
endpoint = "tcp://127.0.0.1:$ev"
replay_endpoint = "tcp://127.0.0.1:$rp"
EOF
  local nodes=4 speeds=$SPEEDS
  if [ "$name" = ideal ] || [ "$name" = pooled ]; then
    # One node that answers at once (1,000x simulated time) and sees every
    # request, so nothing waits and each finds cached what its node kept.
    # `ideal` keeps every block it ever held: each request finds all of
    # its prompt that any earlier request sent, and its TTFT floors (at
    # full speed) are a bound no placement on the fleet can beat.
    # `pooled` has the fleet's four caches as one (LRU): a reference for
    # how much of the workload the fleet's cache size lets any router
    # keep, not a bound (caches kept apart can do better than one).
    local blocks=2000000
    [ "$name" = pooled ] && blocks=$((4 * KV_BLOCKS))
    nodes=1 speeds=1
    sed -i -e 's/^time_scale = .*/time_scale = 0.001/' -e "s/^kv_blocks = .*/kv_blocks = $blocks/" \
      -e 's/^max_num_seqs = .*/max_num_seqs = 1024/' "$WORK/sim.toml"
  fi
  "$BIN" sim --nodes "$nodes" --base-port "$base" --speeds "$speeds" --config "$WORK/sim.toml" >"$WORK/sim-$name.log" 2>&1 &
  PIDS+=($!)
  local urls=() i
  for ((i = 0; i < nodes; i++)); do
    urls+=("http://127.0.0.1:$((base + i))")
    wait_http "http://127.0.0.1:$((base + i))/health"
  done
  case $name in
    ideal | pooled)
      # The bench talks to the node itself.
      gw=$base
      ;;
    sglang)
      [ -x "$VENV/bin/sglang-router" ] || return 1
      "$VENV/bin/sglang-router" launch --host 127.0.0.1 --port "$gw" --policy cache_aware \
        --worker-urls "${urls[@]}" >"$WORK/router-$name.log" 2>&1 &
      PIDS+=($!)
      ;;
    vllm)
      [ -x "$VENV/bin/vllm-router" ] || return 1
      "$VENV/bin/vllm-router" --host 127.0.0.1 --port "$gw" --policy cache_aware \
        --worker-urls "${urls[@]}" >"$WORK/router-$name.log" 2>&1 &
      PIDS+=($!)
      ;;
    *)
      {
        printf '[listener]\naddr = "127.0.0.1:%s"\n[admin]\naddr = "127.0.0.1:%s"\n' "$gw" "$(free_port)"
        printf '[[pools]]\nname = "fleet"\n[pools.capacity]\ninterval = "250ms"\n'
        for i in 0 1 2 3; do printf '[[pools.nodes]]\nname = "sim-%s"\naddr = "127.0.0.1:%s"\n' "$i" "$((base + i))"; done
        printf '[[routes]]\nname = "chat"\npool = "fleet"\npolicy = "%s"\nretries = 1\n' "$name"
        printf '[routes.match]\nfamily = "openai"\n'
        printf '[routes.timeouts]\nfirst_byte = "600s"\nidle = "600s"\ntotal = "1200s"\n'
        printf '[routes.balance]\n%s\n' "$BALANCE"
        if [ "$name" = precise_prefix ]; then
          printf '[routes.balance.precise]\ntokenizer = "%s"\n' "$WORK/tokenizer.json"
          printf 'endpoints = { "sim-0" = "tcp://127.0.0.1:%s", "sim-1" = "tcp://127.0.0.1:%s", "sim-2" = "tcp://127.0.0.1:%s", "sim-3" = "tcp://127.0.0.1:%s" }\n' "$ev" "$((ev + 1))" "$((ev + 2))" "$((ev + 3))"
          printf 'replay_endpoints = { "sim-0" = "tcp://127.0.0.1:%s", "sim-1" = "tcp://127.0.0.1:%s", "sim-2" = "tcp://127.0.0.1:%s", "sim-3" = "tcp://127.0.0.1:%s" }\n' "$rp" "$((rp + 1))" "$((rp + 2))" "$((rp + 3))"
        fi
      } >"$WORK/gw-$name.toml"
      "$BIN" serve --config "$WORK/gw-$name.toml" >"$WORK/gw-$name.log" 2>&1 &
      PIDS+=($!)
      ;;
  esac
  # Routers answer /health once they see a worker.
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$gw/health" && break
    curl -sf -o /dev/null "http://127.0.0.1:$gw/v1/models" && break
    sleep 0.1
  done
  "$BIN" bench --target "http://127.0.0.1:$gw" --model "$MODEL" --rate "$RATE" \
    --duration "${DURATION}s" --seed "$SEED" --system-prompts "$sp" \
    --output "$WORK/report-$tag" >"$WORK/bench-$tag.log" 2>&1 || {
      echo "bench through $name failed:" >&2; tail -5 "$WORK/bench-$tag.log" >&2; }
  for i in 0 1 2 3; do
    curl -sf "http://127.0.0.1:$((base + i))/metrics" >"$WORK/metrics-$tag-$i.txt" || true
  done
  stop_all
}

for sp in $SYSTEM_PROMPTS; do
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  for r in $(seq 1 "$REPEAT"); do
    for name in $RUNS; do
      echo "running $name (${DURATION}s at ${RATE} req/s, $sp system prompt(s), run $r of $REPEAT)..." >&2
      run_one "$name" "$sp" "$r" || echo "NOTICE: $name left out" >&2
    done
  done
  echo
  echo "Workload: $sp system prompt(s) shared by 96 chat sessions, ${RATE} req/s for ${DURATION} s, seed $SEED, $REPEAT run(s) each;" \
    "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  python3 - "$WORK" "$sp" "$REPEAT" $RUNS <<'PY'
import csv, glob, json, os, re, sys
work, sp, repeat, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
labels = {
    "prefix_aware": "infergate prefix_aware",
    "least_outstanding": "infergate least_outstanding",
    "precise_prefix": "infergate precise_prefix",
    "sglang": "SGLang router cache_aware",
    "vllm": "vLLM router cache_aware",
    "ideal": "ideal (one cache keeping every block, no waiting)",
    "pooled": "pooled (the fleet's cache as one, no waiting)",
}

SPEEDS = [float(v) for v in os.environ["SPEEDS"].split(",")]

def floor(row):
    """The request's TTFT with no queue and no other work in its steps: its
    uncached prompt tokens prefilled at its node's speed (the simulator's
    cost model, bench/peers.sh's settings). Measured TTFTs were never
    below it (1.01x at least); what a router adds above it is waiting."""
    uncached = max(int(row["prompt_tokens"] or 0) - int(row["cached_tokens"] or 0), 0)
    steps = max(-(-uncached // int(os.environ["STEP_TOKENS"])), 1)
    secs = (steps * float(os.environ["DECODE_BASE_SECS"])
            + uncached * float(os.environ["PREFILL_SECS_PER_TOKEN"]))
    m = re.fullmatch(r"sim-(\d+)", row["node"])
    speed = SPEEDS[int(m.group(1))] if m and int(m.group(1)) < len(SPEEDS) else 1.0
    return secs / speed

def one_run(n, r):
    """(summary, TTFT stats, e2e stats, hit rate %, per-node figures) of one run."""
    tag = f"{n}-{sp}-{r}"
    path = os.path.join(work, f"report-{tag}", "summary_lifecycle_metrics.json")
    if not os.path.exists(path):
        return None
    s = json.load(open(path))
    lat = s["successes"].get("latency") or {}
    hits = queries = 0.0
    for f in glob.glob(os.path.join(work, f"metrics-{tag}-*.txt")):
        for line in open(f):
            m = re.match(r"vllm:prefix_cache_(hits|queries)_total\{[^}]*\} ([0-9.e+]+)", line)
            if m:
                if m.group(1) == "hits":
                    hits += float(m.group(2))
                else:
                    queries += float(m.group(2))
    nodes = {}
    csv_path = os.path.join(work, f"report-{tag}", "per_request_lifecycle_metrics.csv")
    if os.path.exists(csv_path):
        for row in csv.DictReader(open(csv_path)):
            if row.get("ok") != "true" or not row.get("node"):
                continue
            f = nodes.setdefault(row["node"], [0, 0, 0, 0.0, 0, {}, 0.0])
            f[0] += 1
            # The session's system prompt (session i uses prompt i mod sp).
            m = re.fullmatch(r"session-(\d+)", row.get("user") or "")
            if m:
                p = int(m.group(1)) % int(sp)
                f[5][p] = f[5].get(p, 0) + 1
            f[1] += int(row["prompt_tokens"] or 0)
            f[2] += int(row["cached_tokens"] or 0)
            # Only streamed requests have a time to first token.
            if row.get("time_to_first_token"):
                f[3] += float(row["time_to_first_token"])
                f[4] += 1
                f[6] += floor(row)
    return (s, lat.get("time_to_first_token"), lat.get("request_latency"),
            100 * hits / queries if queries else None, nodes)

def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None

def spread(values, fmt):
    """The mean, and the range when there were several runs."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    text = fmt(mean(values))
    if len(values) > 1:
        text += f" ({fmt(min(values))}–{fmt(max(values))})"
    return text

rows = {}
for n in names:
    runs = [x for x in (one_run(n, r) for r in range(1, repeat + 1)) if x and x[1] and x[2]]
    rows[n] = runs or None
ref = rows.get("sglang")
ref_mean = mean([x[1]["mean"] for x in ref]) if ref else None
ref_p99 = mean([x[1]["p99"] for x in ref]) if ref else None
print("| gateway / policy | TTFT mean | TTFT p99 | e2e p99 | fleet prefix-cache hit rate | mean / p99 vs SGLang | ok / sent |")
print("|---|---|---|---|---|---|---|")
for n in names:
    label = labels.get(n, n)
    runs = rows[n]
    if n in ("ideal", "pooled"):
        # Its times are simulated 1,000x fast: only its floor counts (below).
        continue
    if not runs:
        print(f"| {label} | – | – | – | – | – | not run or failed |")
        continue
    ms = lambda v: f"{1000 * v:.0f} ms"
    ttft_mean = [x[1]["mean"] for x in runs]
    ttft_p99 = [x[1]["p99"] for x in runs]
    vs = (f"{mean(ttft_mean) / ref_mean:.2f}× / {mean(ttft_p99) / ref_p99:.2f}×"
          if ref_mean and n != "sglang" else "–")
    ok = sum(x[0]["successes"]["count"] for x in runs)
    sent = sum(x[0]["load_summary"]["count"] for x in runs)
    print(f"| {label} | {spread(ttft_mean, ms)} | {spread(ttft_p99, ms)} | "
          f"{mean([x[2]['p99'] for x in runs]):.1f} s | {spread([x[3] for x in runs], lambda v: f'{v:.1f} %')} | "
          f"{vs} | {ok} / {sent} |")
print()
print("Per node, mean over runs (requests, prompt tokens, share found cached, mean TTFT of the streamed ones,"
      " the system prompts whose sessions it served a fifth or more of):")
for n in names:
    runs = rows[n]
    if not runs or n in ("ideal", "pooled"):
        continue
    node_names = sorted({k for x in runs for k in x[4]})
    # Requests per system prompt over all nodes and runs.
    total = {}
    for x in runs:
        for g in x[4].values():
            for p, c in g[5].items():
                total[p] = total.get(p, 0) + c
    parts = []
    for node in node_names:
        got = [x[4][node] for x in runs if node in x[4]]
        req = sum(g[0] for g in got) / len(runs)
        tokens = sum(g[1] for g in got) / len(runs)
        cached = sum(g[2] for g in got) / max(sum(g[1] for g in got), 1)
        ttft = sum(g[3] for g in got) / max(sum(g[4] for g in got), 1)
        node_floor = sum(g[6] for g in got) / max(sum(g[4] for g in got), 1)
        # The system prompts whose sessions this node served a fifth or more of.
        mine = {}
        for g in got:
            for p, c in g[5].items():
                mine[p] = mine.get(p, 0) + c
        carried = sorted(p for p, c in mine.items() if c * 5 >= total[p])
        prompts = f" / prompts {','.join(map(str, carried))}" if carried else ""
        parts.append(f"{node} {req:.0f} / {tokens / 1000:.0f}k / {100 * cached:.0f} % / "
                     f"{1000 * ttft:.0f} ms (floor {1000 * node_floor:.0f}){prompts}")
    print(f"- {labels.get(n, n)}: " + "; ".join(parts))
print()
print("TTFT floor: each streamed request's TTFT with no queue and nothing else in its steps (its uncached"
      " prompt tokens at its node's speed, the simulator's cost model); the rest of the mean is waiting:")
for n in names:
    runs = rows[n]
    if not runs:
        continue
    got = [g for x in runs for g in x[4].values()]
    count = max(sum(g[4] for g in got), 1)
    measured = sum(g[3] for g in got) / count
    at_floor = sum(g[6] for g in got) / count
    if n in ("ideal", "pooled"):
        hit = spread([x[3] for x in runs], lambda v: f"{v:.1f} %")
        what = ("no placement of these requests has a lower mean TTFT" if n == "ideal"
                else "the mean TTFT at the fleet's cache size if nothing waited and nothing ran at half speed")
        goal = f" (0.7x the SGLang router's mean: {700 * ref_mean:.0f} ms)" if ref_mean else ""
        print(f"- {labels[n]}: floor {1000 * at_floor:.0f} ms at a hit rate of {hit}: {what}{goal}")
        continue
    print(f"- {labels.get(n, n)}: mean {1000 * measured:.0f} ms = floor {1000 * at_floor:.0f} ms"
          f" + waiting {1000 * (measured - at_floor):.0f} ms")
PY
done
