"""Retrain one of udm's own feature networks from scratch, write its weights file and print its SHA-256.

    python scripts/train_feature_nets.py mnist-cnn [--out PATH]    # under a minute on one core
    python scripts/train_feature_nets.py digits-mlp [--out PATH]   # seconds

The hash printed equals the one pinned in ``udm.features`` when the shipped
file is rebuilt byte for byte; the exit status is 0 then and 1 otherwise (a
changed recipe or torch version: copy the file to ``src/udm/features/weights/``
and update the pin). The numerics are pinned by environment variables that
must be set before torch is imported (``udm.features.training.PINNED_ENV``:
ATen's baseline kernels, MKL's reproducible code path, one thread; the module
docstring there says why each is needed), so the script re-executes itself
with them when they are not already set. The training itself is
``udm.features.train_weights``; this script only wraps it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TRAINED = ("mnist-cnn", "digits-mlp")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=TRAINED, help="the feature network to retrain")
    ap.add_argument("--out", type=Path, default=None, help="weights file to write (default: out/features/NAME.safetensors)")
    args = ap.parse_args()

    from udm.features import FEATURES, PINNED_ENV, pinning_problems, train_weights

    if any(os.environ.get(k) != v for k, v in PINNED_ENV.items()):
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], {**os.environ, **PINNED_ENV})
    if pinning_problems():
        print(f"cannot pin the numerics: {', '.join(pinning_problems())}", file=sys.stderr)
        return 2
    out = args.out or Path("out") / "features" / f"{args.name}.safetensors"
    start = time.perf_counter()
    digest = train_weights(args.name, out)
    seconds = time.perf_counter() - start
    pinned = FEATURES.get(args.name).sha256
    print(f"{args.name}: wrote {out} ({out.stat().st_size} bytes) in {seconds:.1f} s")
    print(f"SHA-256 {digest}", flush=True)
    if digest == pinned:
        print("matches the shipped weights byte for byte")
        return 0
    print(f"differs from the pinned SHA-256 {pinned}; the shipped file was not reproduced", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
