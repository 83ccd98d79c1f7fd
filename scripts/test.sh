#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on two pytest workers with one torch thread each:
# the small models here are dispatch-bound, so two one-thread workers do about 1.5x the work of one
# two-thread process on a 2-core machine. UDM_TEST_WORKERS=0 runs everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n "${UDM_TEST_WORKERS:-2}" --dist worksteal "$@"
