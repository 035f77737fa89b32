#!/usr/bin/env bash
# make demo: two clusters on the same pod CIDR, an HTTP fetch across natgw.
# The previous demo is removed first, so running it again is safe.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHONPATH=. exec .venv/bin/python -m lab demo
