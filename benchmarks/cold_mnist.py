"""Cold diffusion on MNIST: naive (K0) versus improved TACoS (K1) sampling for blur and for masking (THEORY §4.2).

Trains the bundled configs ``blur_mnist`` and ``mask_mnist`` (scaled down on
CPU with ``--steps`` and ``--channels``), then samples the same prior images
with both samplers and scores them with a classifier trained on real MNIST
(scikit-learn MLP on pixels: the share of samples it labels with probability
>= 0.9, and the total variation of its class histogram from uniform).
Writes ``naive_vs_improved.png`` per process (5 naive columns, then 5
improved ones, from the same starting images) under ``--out``.

Run: ``python benchmarks/cold_mnist.py`` (CPU, about 15 minutes on 2 cores);
on a GPU ``python benchmarks/cold_mnist.py --device cuda --steps 20000 --channels 64``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from udm.data import find_mnist
from udm.demo import cold_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n", type=int, default=500, help="samples per sampler")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="benchmarks/out/cold_mnist")
    args = ap.parse_args()
    if find_mnist() is None:
        raise SystemExit("MNIST not found: put the IDX files in ../shared/data/mnist or set UDM_DATA")
    overrides = {
        "network.channels": args.channels,
        "train.batch_size": args.batch,
        "train.device": args.device,
        "train.sample_every": 0,
        "train.warmup_steps": min(500, args.steps // 10),
    }
    rows = []
    for config in ("blur_mnist", "mask_mnist"):
        start = time.perf_counter()
        metrics = cold_demo(config, Path(args.out) / config, args.steps, False, overrides=overrides, n=args.n)
        rows.append((config, metrics, time.perf_counter() - start))
    print(f"\n{'process':<12}{'train steps':>12}{'sampler':>24}{'steps':>7}{'confident':>11}{'class TV':>10}")
    for config, m, secs in rows:
        for label in ("naive", "improved"):
            r = m[label]
            print(f"{config:<12}{m['train_steps']:>12}{label + ' (' + r['sampler'] + ')':>24}{m['sampler_steps']:>7}"
                  f"{100 * r['confident_fraction']:>10.1f}%{r['class_tv']:>10.3f}")
        print(f"{'':<12}(train + sample + score: {secs:.0f} s)")


if __name__ == "__main__":
    main()
