#!/usr/bin/env bash
# Remove every harness run (or the one whose prefix is given).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || exit 0
exec .venv/bin/python -m natgw.harness down "$@"
