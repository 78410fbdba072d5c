#!/usr/bin/env bash
# The fault-scenario table: runs the resilience integration tests (real
# gateway, simulated nodes on loopback) and prints one row per scenario with
# requests sent, client-visible failures and recovery/detection time.
# Usage: bench/faults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(cargo test -q --release --test resilience -- --nocapture --test-threads=1 2>&1) || { echo "$out"; exit 1; }
printf '%-26s %6s %7s %10s  %s\n' scenario sent failed recovery notes
echo "$out" | grep -o 'SCENARIO|.*' | awk -F'|' '{ printf "%-26s %6s %7s %10s  %s\n", $2, $3, $4, $5, $6 }'
