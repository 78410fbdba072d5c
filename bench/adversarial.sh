#!/usr/bin/env bash
# Hostile clients, side by side: malformed chunked bodies, Transfer-Encoding
# with Content-Length, a stalled upload, a silent connection, half an HTTP/2
# preface, slowloris headers, no or two Host headers, CONNECT, a flood of
# 1,000 idle connections, and (infergate) admin requests from another origin,
# each against infergate, nginx and HAProxy with one simulated node behind
# (header and body timeouts of 10 s everywhere). Prints one Markdown table
# of what each proxy answered or when it closed the connection, and whether
# a normal request still works afterwards (no client may take a node out).
# Installs nginx and HAProxy with apt when missing (skipped if that fails).
# Usage: bench/adversarial.sh [--proxies infergate,nginx,haproxy]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/sbin/nginx ] || [ ! -x /usr/sbin/haproxy ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy) >/dev/null 2>&1 \
    || echo "NOTICE: could not install nginx/HAProxy; their columns are left out" >&2
fi
(systemctl stop nginx haproxy || service nginx stop || true) >/dev/null 2>&1 || true
cargo build --release -q
exec target/release/infergate faults --adversarial "$@"
