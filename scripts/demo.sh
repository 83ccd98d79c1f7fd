#!/usr/bin/env bash
# Set up (if needed) and run the main job: python -m udm demo (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m udm demo "$@"
