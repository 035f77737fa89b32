#!/usr/bin/env bash
# Build overlapping clusters joined by natgw; prints the run prefix.
#   scripts/netns/up.sh [N] [--ipv6] [--plain I] [--interface] [--routed] [--pipes]
#   scripts/netns/up.sh 2 --replicas 2 [--conntrack] [--keepalive S]
#   scripts/netns/up.sh --hub N      (one natgw hub and N natgw clients)
# (default: two clusters over WireGuard; see `python -m lab up --help`)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHONPATH=. exec .venv/bin/python -m lab up "$@"
