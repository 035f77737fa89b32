#!/usr/bin/env bash
# make demo: two clusters on the same pod CIDR, an HTTP fetch across natgw.
# A previous demo is removed first, so running it again is safe.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m natgw.harness down >/dev/null
exec .venv/bin/python -m natgw.harness demo
