"""Sample quality of the MNIST models with a pinned protocol: FD, KID, precision/recall on `mnist-cnn`, bits/dim, post-hoc EMA.

Issue 19's table. Every number comes from a `udm` command, run in this process
through ``udm.cli.main`` and printed before it runs, so each row can be
reproduced by pasting its command:

1. **Models.** The bundled configs ``mnist_edm``, ``mnist_rf`` and
   ``mnist_pfgmpp`` (D = 128) with the small CPU UNet of ``benchmarks/ode_mnist.py``
   (channels 32, channel_mult [1, 2], one residual block, no attention, no
   dropout; 0.65M parameters), ``--steps`` steps at batch 64, lr 4e-4. EDM also
   keeps post-hoc EMA snapshots (sigma_rel 0.05 and 0.10, every 25 steps). A
   finished run under ``--out``/runs is reused.
2. **Feature metrics.** ``udm eval RUN --metrics fd,kid,pr --features mnist-cnn
   --seeds 0-(n-1)`` with Heun (``--sampler-steps``, NFE = 2 steps - 1), against
   the first n MNIST test images, floors from 5 sets of n training images.
3. **Bits/dim.** ``udm eval RUN --nll --n NLL_N`` (RK45, rtol 1e-5, one Hutchinson probe).
4. **Post-hoc EMA sweep** on EDM: ``udm ema RUN --sweep --metric kid --features mnist-cnn``.

CPU (the figures in benchmarks/RESULTS.md): ``OMP_NUM_THREADS=2 python benchmarks/quality_mnist.py``.
GPU (not measured): add ``--device cuda --steps 20000 --n 10000``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from udm.cli import main as udm
from udm.data import find_mnist

MODELS = (("mnist_edm", "EDM"), ("mnist_rf", "rectified flow"), ("mnist_pfgmpp", "PFGM++ (D = 128)"))
SWEEP_MODEL = "mnist_edm"
SMALL_UNET = ["network.channels=32", "network.channel_mult=[1, 2]", "network.num_res_blocks=1", "network.attn_resolutions=[]",
              "network.dropout=0.0"]
POSTHOC = "train.posthoc_ema={sigma_rels: [0.05, 0.1], every: 25}"


def run(argv: list[str]) -> float:
    """Run one udm command (printed first); its wall seconds."""
    print("$ udm " + " ".join(shlex.quote(a) for a in argv), flush=True)
    start = time.perf_counter()
    code = udm(argv)
    if code != 0:
        raise SystemExit(f"udm {argv[0]} failed with exit status {code}")
    return time.perf_counter() - start


def train(config: str, runs: Path, args: argparse.Namespace) -> Path:
    """Train ``config`` into runs/config with the small UNet, or reuse a finished run there."""
    out = runs / config
    sets = [*SMALL_UNET, f"train.steps={args.steps}", "train.batch_size=64", "train.lr=4e-4",
            f"train.warmup_steps={min(500, args.steps // 10)}", "train.sample_every=0", f"train.log_every={max(1, min(100, args.steps // 10))}"]
    if config == SWEEP_MODEL:
        sets.append(POSTHOC)
    latest = out / "checkpoints" / "latest"
    if latest.exists() and latest.read_text().strip() == f"step_{args.steps:07d}":
        print(f"reusing {out} (step {args.steps})", flush=True)
        return out
    argv = ["train", config, "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]
    if args.device:
        argv += ["--device", args.device]
    if latest.exists():
        argv.append("--resume")
    run(argv)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=750, help="training steps of each model")
    ap.add_argument("--n", type=int, default=2000, help="samples (and reference images) per feature metric")
    ap.add_argument("--sampler-steps", type=int, default=18, help="Heun steps (NFE = 2 steps - 1)")
    ap.add_argument("--nll-n", type=int, default=64, help="held-out images for bits/dim")
    ap.add_argument("--sweep-n", type=int, default=1000, help="samples per width in the post-hoc EMA sweep")
    ap.add_argument("--sweep", default="0.025,0.05,0.075,0.1,0.15,0.2", help="the sigma_rel widths swept")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="benchmarks/out/quality_mnist")
    args = ap.parse_args()
    if find_mnist(split="train") is None or find_mnist(split="test") is None:
        print("quality_mnist: MNIST not found (train and t10k IDX files); put them in ../shared/data/mnist "
              "or set UDM_DATA to a directory holding mnist/. Skipping.", file=sys.stderr)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = ["--device", args.device] if args.device else []
    rows = []
    for config, label in MODELS:
        path = train(config, out / "runs", args)
        metrics_file, nll_file = out / f"metrics_{config}.json", out / f"nll_{config}.json"
        secs = run(["eval", str(path), "--metrics", "fd,kid,pr", "--features", "mnist-cnn", "--seeds", f"0-{args.n - 1}",
                    "--sampler", "heun", "--steps", str(args.sampler_steps), "--out", str(metrics_file), "--quiet", *device])
        nll_secs = run(["eval", str(path), "--nll", "--n", str(args.nll_n), "--out", str(nll_file), "--quiet", *device])
        rows.append({"config": config, "label": label, "eval_s": secs, "nll_s": nll_secs,
                     "metrics": json.loads(metrics_file.read_text()), "nll": json.loads(nll_file.read_text())})
    sweep_secs = run(["ema", str(out / "runs" / SWEEP_MODEL), "--sweep", "--metric", "kid", "--features", "mnist-cnn",
                      "--n", str(args.sweep_n), "--sigma-rel", args.sweep, "--sampler", "heun", "--steps", str(args.sampler_steps),
                      "--quiet", *device])
    sweep_files = sorted((out / "runs" / SWEEP_MODEL / "posthoc_ema").glob("sweep_kid_step*.json"))
    sweep = json.loads(sweep_files[-1].read_text())

    def cell(row: dict, digits: int = 4) -> str:
        return f"{row['value']:.{digits}f} ± {row['stderr']:.{digits}f}"

    first = rows[0]["metrics"]
    proto = first["protocol"]
    print(f"\nProtocol: features {proto['features']['name']} (sha256 {proto['features']['sha256']}), n = {proto['n']} samples "
          f"(seeds 0-{args.n - 1}, heun {args.sampler_steps} steps, NFE {first['sampling']['nfe']}) against {proto['reference']}; "
          f"floor: {proto['floor']}; mnist-cnn accuracy on the reference {first['classes']['reference_accuracy']:.4f}.\n")
    print("| model | FD | KID | precision | recall | confident | class TV | bits/dim | eval s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, c = r["metrics"]["rows"], r["metrics"]["classes"]
        print(f"| {r['label']} | {cell(m['fd'], 2)} | {cell(m['kid'])} | {cell(m['precision'], 3)} | {cell(m['recall'], 3)} | "
              f"{c['samples']['confident_fraction']:.3f} | {c['samples']['class_tv']:.3f} | "
              f"{r['nll']['bits_per_dim']:.3f} ± {r['nll']['bits_per_dim_stderr']:.3f} | {r['eval_s']:.0f} |")
    m, c = first["rows"], first["classes"]
    print(f"| floor (real train images) | {m['fd']['floor']:.2f} ± {m['fd']['floor_std']:.2f} | {m['kid']['floor']:.4f} ± "
          f"{m['kid']['floor_std']:.4f} | {m['precision']['floor']:.3f} ± {m['precision']['floor_std']:.3f} | "
          f"{m['recall']['floor']:.3f} ± {m['recall']['floor_std']:.3f} | {c['floor_confident_fraction']:.3f} | "
          f"{c['floor_class_tv']:.3f} | | |")
    print(f"\nPost-hoc EMA sweep ({SWEEP_MODEL}, {args.sweep_n} samples per width, {sweep_secs:.0f} s):\n")
    print("| sigma_rel | gamma | KID | FD | precision | recall |")
    print("|---|---|---|---|---|---|")
    for r in sweep["rows"]:
        m = r["result"]["rows"]
        mark = " (best)" if r["sigma_rel"] == sweep["best"] else ""
        print(f"| {r['sigma_rel']:g}{mark} | {r['gamma']:.2f} | {cell(m['kid'])} | {m['fd']['value']:.2f} | "
              f"{m['precision']['value']:.3f} | {m['recall']['value']:.3f} |")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "models": rows, "sweep": sweep}, indent=1, default=float))
    print(f"\nwrote {out}/results.json")


if __name__ == "__main__":
    main()
