#!/usr/bin/env bash
# Remove the harness run whose prefix is given, or every run that no live
# process (e.g. a test session) is using.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/python ] || exit 0
PYTHONPATH=. exec .venv/bin/python -m lab down "$@"
