#!/usr/bin/env bash
# The soak: at least a million requests over about ten minutes (mixed
# streamed and plain, chat and completions, three priorities, two tenants,
# three routes over two pools of three simulated nodes) through one
# infergate while a fault injector kills, hangs, slows and breaks a random
# node of each pool every few seconds and brings it back, and the config
# file is rewritten (policy and weights) every 5 s. Reports failures by
# cause (only streams a node cut after they started are allowed), gateway
# RSS and open descriptors every 30 s, and panics or ERROR lines in its log.
# Not run in CI (too long); exits non-zero on a forbidden failure or panic.
# Usage: bench/soak.sh [--soak 10m] [--rate 2000] [--connections 32]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
args=("$@")
case " ${args[*]-} " in *" --soak "*) ;; *) args+=(--soak 10m) ;; esac
case " ${args[*]-} " in *" --connections "*) ;; *) args+=(--connections 32) ;; esac
exec target/release/infergate faults "${args[@]}"
