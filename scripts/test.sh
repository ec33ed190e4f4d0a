#!/usr/bin/env bash
# Installs everything the tests need, then runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec .venv/bin/python -m pytest "$@"
