"""ODE processes on MNIST: PFGM++ (D = 128), EDM and rectified flow at equal budget and equal NFE (issue 5).

What it does, in order:

1. **Feature extractor.** Trains a small CNN classifier (two conv layers, a
   128-unit penultimate layer, 10 logits) on the real MNIST train split for
   ``--classifier-steps`` steps and reports its accuracy on the 10k test split.
   Its penultimate (post-ReLU) features are the space in which every distance
   below is computed: a Fréchet distance (``udm.metrics.frechet_distance``,
   FID's formula) between Gaussians fitted to the features of two image sets.
2. **Models.** Trains the bundled configs ``mnist_pfgmpp`` (D = 128),
   ``mnist_edm`` and ``mnist_rf`` with the same UNet, steps, batch size,
   learning rate and seed. By default the UNet is a small CPU one (``--channels``
   32, channel_mult [1, 2], one residual block per level, no attention, no
   dropout); ``--full-unet`` keeps the configs' own UNet (channel_mult
   [1, 2, 2], two blocks, attention at 7x7, dropout 0.1) with ``--channels``.
3. **Equal NFE.** Samples ``--n`` images from each model with Heun and the same
   ``--heun-steps`` (NFE = 2 steps - 1; the NFE printed is the one the sampler
   counted), on each process's own grid (Karras rho = 7 for PFGM++ and EDM,
   uniform in t for rectified flow), from the same seeds. Samples are clamped
   to [-1, 1] (as when they are written out as images) before the classifier.
   The Fréchet feature distance is to ``--n`` held-out real test images; the
   floor is ``--n`` real train images against the same test images.
4. **Robustness (THEORY §7.4).** Euler with 4, 8, 16 and 32 steps (NFE = steps)
   on the Karras grid for PFGM++ D = 128 and EDM (D -> infinity), same models.
5. Prints markdown tables, writes ``results.json`` and sample grids
   (``samples_<model>.png``: Heun; ``euler_<model>.png``: one row per Euler
   step count, the same seeds in each column) under ``--out``.

CPU (the figures in benchmarks/RESULTS.md): ``OMP_NUM_THREADS=2 python benchmarks/ode_mnist.py``, about
21 minutes on 2 cores (the three trainings together about 11 of them, sampling about 9).
GPU (not measured): ``python benchmarks/ode_mnist.py --device cuda --full-unet --channels 64 --steps 20000 --batch 256 --n 10000 --chunk 2000``.
A finished training run under ``--out``/runs is reused, so delete it (or change ``--out``) after changing the setup.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from udm.config import load_config
from udm.data import find_mnist, load_dataset
from udm.metrics import frechet_distance
from udm.samplers import sample
from udm.training import Trainer
from udm.viz import save_image_grid

CONFIG_DIR = Path(__file__).resolve().parents[1] / "src" / "udm" / "configs"
MODELS = (("pfgmpp", "mnist_pfgmpp", "PFGM++ (D = 128)"), ("edm", "mnist_edm", "EDM (D -> inf)"), ("rf", "mnist_rf", "rectified flow"))
SWEEP_MODELS = ("pfgmpp", "edm")


class Classifier(nn.Module):
    """conv 32 - pool - conv 64 - pool - fc 128 (the features) - fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def train_classifier(train, test, steps: int, device: torch.device, batch: int = 128, seed: int = 0) -> tuple[Classifier, float, float]:
    """(classifier, test accuracy, seconds): Adam on the real train split, images in [-1, 1]."""
    torch.manual_seed(seed)
    net = Classifier().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = train.x, train.y
    start = time.perf_counter()
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        loss = F.cross_entropy(net(x_all[idx].to(device)), y_all[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test.x), 1000):
            correct += int((net(test.x[i : i + 1000].to(device)).argmax(1).cpu() == test.y[i : i + 1000]).sum())
    return net, correct / len(test.x), time.perf_counter() - start


@torch.no_grad()
def features(clf: Classifier, x: torch.Tensor, device: torch.device, chunk: int = 1000) -> torch.Tensor:
    return torch.cat([clf.features(x[i : i + chunk].clamp(-1, 1).to(device)).double().cpu() for i in range(0, len(x), chunk)])


def train_model(config: str, run: Path, overrides: dict) -> tuple[Trainer, float]:
    """Train ``config`` into ``run`` (a finished run there is reused); (trainer, training seconds)."""
    cfg = load_config(CONFIG_DIR / f"{config}.yaml", overrides)
    resume = (run / "checkpoints" / "latest").exists()
    trainer = Trainer(cfg, run, resume=resume, progress=False, reuse_complete=True)
    result = trainer.train()
    record = run / "train_seconds.json"
    if resume and record.exists():
        seconds = json.loads(record.read_text())["seconds"]
    else:
        seconds = result["seconds"]
        record.write_text(json.dumps({"seconds": seconds, "steps": trainer.step}))
    return trainer, seconds


@torch.no_grad()
def draw(trainer: Trainer, sampler: str, steps: int, n: int, seed: int, chunk: int) -> tuple[torch.Tensor, int, float]:
    """(n samples on the CPU, NFE per sample, wall seconds) with ``sampler`` on the process's own grid."""
    den = trainer.sampling_denoiser()
    grid = trainer.config["sample"]["grid"]
    shape = tuple(trainer.train_x.shape[1:])
    out, nfe = [], None
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, n, chunk):
        seeds = range(seed + i, seed + min(n, i + chunk))
        x, info = sample(den, sampler, steps=steps, grid=grid, shape=(len(seeds), *shape), seeds=seeds,
                         device=trainer.device, return_info=True)
        out.append(x.float().cpu())
        nfe = info["nfe"]
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out), int(nfe), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=750, help="training steps, the same for all three models")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--full-unet", action="store_true", help="keep the configs' UNet (except --channels) instead of the small CPU one")
    ap.add_argument("--n", type=int, default=1000, help="generated and real images per distance")
    ap.add_argument("--heun-steps", type=int, default=18, help="Heun steps for the equal-NFE table (NFE = 2 steps - 1)")
    ap.add_argument("--euler-steps", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--classifier-steps", type=int, default=600)
    ap.add_argument("--chunk", type=int, default=250, help="sampling batch size")
    ap.add_argument("--seed", type=int, default=12345, help="first sampling seed")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="benchmarks/out/ode_mnist")
    args = ap.parse_args()
    if find_mnist(split="train") is None or find_mnist(split="test") is None:
        print("ode_mnist: MNIST not found (train and t10k IDX files); put them in ../shared/data/mnist "
              "or set UDM_DATA to a directory holding mnist/. Skipping.", file=sys.stderr)
        return
    t_total = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.n

    # 1. the feature extractor, and the real reference sets
    train, test = load_dataset("mnist", split="train"), load_dataset("mnist", split="test")
    if n > len(test.x):
        raise SystemExit(f"--n {n} exceeds the {len(test.x)} MNIST test images")
    clf, acc, clf_s = train_classifier(train, test, args.classifier_steps, device)
    print(f"classifier: {args.classifier_steps} steps (batch 128), test accuracy {100 * acc:.2f}% ({clf_s:.0f} s)", flush=True)
    g = torch.Generator().manual_seed(0)
    real_test = test.x[torch.randperm(len(test.x), generator=g)[:n]]
    real_train = train.x[torch.randperm(len(train.x), generator=g)[:n]]
    f_test = features(clf, real_test, device)
    floor = frechet_distance(features(clf, real_train, device), f_test)
    print(f"floor (n = {n} real train vs {n} real test images): {floor:.3f}", flush=True)

    # 2. the three models, identical UNet and budget
    overrides = {
        "network.channels": args.channels,
        "train.steps": args.steps,
        "train.batch_size": args.batch,
        "train.lr": args.lr,
        "train.warmup_steps": min(500, args.steps // 10),
        "train.device": str(device),
        "train.sample_every": 0,
        "train.log_every": max(1, min(100, args.steps // 10)),
    }
    if not args.full_unet:
        overrides.update({"network.channel_mult": [1, 2], "network.num_res_blocks": 1, "network.attn_resolutions": [],
                          "network.dropout": 0.0})
    trainers, rows = {}, []
    for key, config, label in MODELS:
        trainer, secs = train_model(config, out / "runs" / config, overrides)
        trainers[key] = trainer
        params = sum(p.numel() for p in trainer.net.parameters())
        print(f"{label}: trained {trainer.step} steps in {secs:.0f} s ({params / 1e6:.2f}M parameters, "
              f"last logged loss {trainer.recent_loss})", flush=True)
        rows.append({"key": key, "label": label, "config": config, "train_steps": trainer.step, "train_s": secs, "params": params})

    # 3. equal NFE: Heun with the same number of steps
    for row in rows:
        x, nfe, secs = draw(trainers[row["key"]], "heun", args.heun_steps, n, args.seed, args.chunk)
        row.update(heun_steps=args.heun_steps, nfe=nfe, sample_s=secs, fd=frechet_distance(features(clf, x, device), f_test))
        save_image_grid(x[:100].clamp(-1, 1), out / f"samples_{row['key']}.png", nrow=10, scale=2)
        print(f"{row['label']}: heun {args.heun_steps} steps, NFE {nfe}, FD {row['fd']:.3f}, {secs:.1f} s", flush=True)

    # 4. robustness: Euler step sweep, PFGM++ D = 128 vs EDM
    sweep: dict[str, dict[int, dict[str, float]]] = {k: {} for k in SWEEP_MODELS}
    for key in SWEEP_MODELS:
        rows_img = []
        for steps in args.euler_steps:
            x, nfe, secs = draw(trainers[key], "euler", steps, n, args.seed, args.chunk)
            fd = frechet_distance(features(clf, x, device), f_test)
            sweep[key][steps] = {"nfe": nfe, "fd": fd, "sample_s": secs}
            rows_img.append(x[:10].clamp(-1, 1))
            print(f"{key}: euler {steps} steps, NFE {nfe}, FD {fd:.3f}, {secs:.1f} s", flush=True)
        save_image_grid(torch.cat(rows_img), out / f"euler_{key}.png", nrow=10, scale=2)
    total = time.perf_counter() - t_total

    # 5. tables
    unet = "configs' UNet" if args.full_unet else "UNet channel_mult [1, 2], 1 res block, no attention, no dropout"
    print(f"\nSetup: {unet}, channels {args.channels}, {args.steps} steps, batch {args.batch}, lr {args.lr:g}; "
          f"n = {n} samples vs {n} MNIST test images; device {device}; total {total:.0f} s.")
    print(f"Feature extractor: CNN, {args.classifier_steps} steps, test accuracy {100 * acc:.2f}%; penultimate 128-d features.")
    print(f"Floor (real train vs real test, n = {n}): {floor:.3f}\n")
    print("| model | params | train steps | train time (s) | sampler | NFE | Fréchet feature distance | / floor | sampling time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['train_steps']} | {r['train_s']:.0f} | heun, {r['heun_steps']} steps | "
              f"{r['nfe']} | {r['fd']:.3f} | {r['fd'] / floor:.1f} | {r['sample_s']:.1f} |")
    print(f"| real train images (floor) | | | | | | {floor:.3f} | 1.0 | |")
    print("\n| Euler steps (NFE) | " + " | ".join(dict((k, lab) for k, _, lab in MODELS)[k] for k in SWEEP_MODELS)
          + " | PFGM++ / EDM |")
    print("|---|" + "---|" * (len(SWEEP_MODELS) + 1))
    for steps in args.euler_steps:
        vals = [sweep[k][steps]["fd"] for k in SWEEP_MODELS]
        print(f"| {steps} ({sweep[SWEEP_MODELS[0]][steps]['nfe']}) | " + " | ".join(f"{v:.3f}" for v in vals)
              + f" | {vals[0] / vals[1]:.2f} |")
    heun = {r["key"]: r["fd"] for r in rows}
    print(f"| Heun {args.heun_steps} ({rows[0]['nfe']}) | {heun['pfgmpp']:.3f} | {heun['edm']:.3f} | {heun['pfgmpp'] / heun['edm']:.2f} |")
    results = {"args": vars(args), "device": str(device), "classifier_accuracy": acc, "floor": floor, "models": rows,
               "euler": {k: {str(s): v for s, v in d.items()} for k, d in sweep.items()}, "total_s": total}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"\nwrote {out}/: results.json, " + ", ".join(sorted(p.name for p in out.glob("*.png"))))
    if not all(math.isfinite(r["fd"]) for r in rows):
        raise SystemExit("a Fréchet distance is not finite")


if __name__ == "__main__":
    main()
