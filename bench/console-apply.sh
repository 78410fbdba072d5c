#!/usr/bin/env bash
# How long a config change through the admin API takes end to end (read
# version, edit with toml_edit, validate, stage + fsync, swap the route
# table, rename + fsync the directory), on a config of N nodes.
# Usage: bench/console-apply.sh [nodes=300] [changes=200]
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-300}
CHANGES=${2:-200}
cargo build --release -q
WORK=$(mktemp -d)
cleanup() { [ -n "${GW:-}" ] && kill "$GW" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ADMIN=$(free_port)
python3 - "$WORK/gw.toml" "$NODES" "$ADMIN" <<'PY'
import sys
path, n, admin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = [f'# bench\n[listener]\naddr = "127.0.0.1:0"\n[admin]\naddr = "127.0.0.1:{admin}"\n\n[[pools]]\nname = "p"\n']
for i in range(n):
    out.append(f'[[pools.nodes]]\nname = "n{i}" # node {i}\naddr = "127.0.0.1:{10000 + i}"\n')
out.append('\n[[routes]]\nname = "r"\npool = "p"\n[routes.match]\nfamily = "openai"\n')
open(path, "w").write("".join(out))
PY
INFERGATE_ADMIN_TOKEN=bench RUST_LOG=warn target/release/infergate serve --config "$WORK/gw.toml" >"$WORK/serve.log" 2>&1 &
GW=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$ADMIN) 2>/dev/null && break; sleep 0.1; done
python3 - "$ADMIN" "$NODES" "$CHANGES" "$WORK/gw.toml" <<'PY'
import http.client, json, sys, time
admin, nodes, changes, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", admin)
lat = []
for i in range(changes):
    t = time.perf_counter()
    c.request("PUT", f"/api/v1/config/pools/p/nodes/n{i % nodes}/weight",
              body=json.dumps({"weight": 2 + i % 5}),
              headers={"Authorization": "Bearer bench", "If-Match": "*"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))]
size = len(open(path).read())
print(f"{nodes} nodes ({size} bytes): {changes} weight changes, p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {lat[-1]:.2f} ms")
PY
