#!/usr/bin/env bash
# Build N overlapping clusters joined by natgw (default 2); prints the run prefix.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m natgw.harness up "${1:-2}"
