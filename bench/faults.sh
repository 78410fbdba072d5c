#!/usr/bin/env bash
# The fault matrix, side by side: every scenario (a node killed idle and
# under load, hung by SIGSTOP, 10x slow, answering 500 or 503, closing
# connections after reading the request, cutting streams, killed + hung at
# once, all down then back, restarted on the same address) through
# infergate, nginx and HAProxy configured for failover alike (see
# src/faultlab/proxies.rs and docs/resilience.md), under the same closed-loop
# load, one proxy at a time. Prints one Markdown table: requests, failed,
# failures by status, time to detect, time to recover, p99.
# Exits non-zero when infergate fails a request while a node could serve it,
# or fails a larger share than a peer on any row.
# Installs nginx and HAProxy with apt when missing (skipped if that fails).
# Usage: bench/faults.sh [--duration 10s] [--connections 16] [--rate 0]
#                        [--scenarios a,b] [--proxies infergate,nginx,haproxy]
#        (INFERGATE_BIN=path runs another build, e.g. bench/pgo.sh's;
#        NO_BUILD=1 target/release as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  if [ ! -x /usr/sbin/nginx ] || [ ! -x /usr/sbin/haproxy ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy) >/dev/null 2>&1 \
      || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy) >/dev/null 2>&1 \
      || echo "NOTICE: could not install nginx/HAProxy; their columns are left out" >&2
  fi
fi
# The Debian packages start their services; the matrix runs its own copies.
(systemctl stop nginx haproxy || service nginx stop || true) >/dev/null 2>&1 || true
[ -n "${NO_BUILD:-}${INFERGATE_BIN:-}" ] || cargo build --release -q
exec "${INFERGATE_BIN:-target/release/infergate}" faults "$@"
