# Shared by the browser checks (source it): make the browser available,
# build, and start `infergate demo` with its admin listener on a free port.
# After `start_demo [demo args...]`: WORK (temp dir, removed on exit), PORT,
# URL, DEMO (pid, stopped on exit); the demo's config is $WORK/demo.toml
# and its output $WORK/demo.log.
bash bench/browser-setup.sh
cargo build -q
BIN=target/debug/infergate
WORK=$(mktemp -d)
cleanup() { [ -n "${DEMO:-}" ] && kill "$DEMO" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT/"
start_demo() {
  RUST_LOG=warn $BIN demo --port 0 --admin-port "$PORT" --rate 30 --config-out "$WORK/demo.toml" "$@" \
    >"$WORK/demo.log" 2>&1 &
  DEMO=$!
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "FAIL: the demo's admin listener did not come up"
  cat "$WORK/demo.log"
  exit 1
}
