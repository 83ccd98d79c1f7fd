"""The ``udm`` command: train, sample, eval, check, list, demo (``python -m udm`` is the same).

Every user error (a bad config key, a missing file, a damaged checkpoint, data
the network cannot take) ends in one line ``udm: error: ...`` on stderr and
exit status 2, and nothing half-written is left: outputs are written through
temporary files and renames, and output folders are created only once the
inputs have been checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled_configs() -> list[str]:
    """Names of the configs shipped with udm (``udm train NAME`` finds them)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name: str) -> Path:
    """A config path: the file itself, or a bundled config by name."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and bundled.is_file() and len(path.parts) <= 2:
        return bundled
    raise ConfigError(f"config {name!r} not found: give a YAML file or one of the bundled configs: {', '.join(bundled_configs())}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.steps=10", "process.name=vp"]`` -> ``{"train.steps": 10, ...}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.steps=100), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _write_samples(x, out: Path, reference=None, meta: dict[str, str] | None = None) -> list[Path]:
    """samples.png (grid or scatter) and samples.safetensors (the raw tensor) in ``out``."""
    from safetensors.torch import save

    from .training.checkpoint import write_atomic
    from .viz import save_image_grid, scatter_plot

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if x.ndim == 4:
        written.append(save_image_grid(x, out / "samples.png"))
    elif x.ndim == 2 and x.shape[1] == 2:
        written.append(scatter_plot(x, out / "samples.png", reference=reference))
    write_atomic(out / "samples.safetensors", save({"samples": x.contiguous()}, metadata=meta))
    written.append(out / "samples.safetensors")
    return written


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import Trainer, distributed

    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    if args.device is not None:
        overrides["train.device"] = args.device
    config = load_config(find_config(args.config), overrides)
    out = Path(args.out or Path("runs") / config["name"])
    info = distributed.init(config["train"]["device"])
    try:
        trainer = Trainer(config, out, resume=args.resume, progress=not args.quiet, dist_info=info)
        summary = trainer.train()
    finally:
        distributed.shutdown()
    if info.is_main:
        print(json.dumps({"out": str(out), **summary}))
    return 0


def _load(args: argparse.Namespace):
    from .training import load_trained

    return load_trained(args.checkpoint, use_ema=not args.raw_weights, device=args.device)


def _require_generative(model, path: str) -> None:
    from .classifier import NoisyClassifier

    if isinstance(model, NoisyClassifier):
        raise ConfigError(f"{path} is a classifier run: it draws no samples; guide a model with it: udm sample MODEL --classifier {path}")


def _run_dir(ckpt_path: Path) -> Path:
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def _conditioned(denoiser, ckpt, args: argparse.Namespace):
    """The denoiser and labels for ``--class K``, guided by ``--cfg W`` or ``--classifier RUN --gamma G`` (THEORY §2.2).

    ``--cfg`` is classifier-free guidance (G4) of a model trained with label
    dropout; ``--classifier`` is classifier guidance (G2) by a noise-aware
    classifier trained on the same data and process as the model.
    """
    import torch

    from .guidance import ClassifierFreeGuidance, ClassifierGuidance

    if args.cfg is not None and args.classifier is not None:
        raise ConfigError("--cfg and --classifier are two kinds of guidance: choose one")
    if args.gamma is not None and args.classifier is None:
        raise ConfigError("--gamma is the classifier-guidance scale: it needs --classifier RUN")
    if args.label is None:
        if args.cfg is not None or args.classifier is not None:
            raise ConfigError(f"{'--cfg' if args.cfg is not None else '--classifier'} needs --class: guidance steers toward a class")
        return denoiser, None
    cond = torch.full((args.n,), args.label, dtype=torch.long)
    if args.classifier is not None:
        classifier = _guiding_classifier(ckpt, args)
        if not 0 <= args.label < classifier.num_classes:
            raise ConfigError(f"--class {args.label} is outside the classifier's label set 0..{classifier.num_classes - 1}")
        return ClassifierGuidance(denoiser, classifier, 1.0 if args.gamma is None else args.gamma), cond
    classes = getattr(getattr(denoiser, "net", None), "num_classes", None)
    if classes is None:
        raise ConfigError("--class needs a class-conditional model (network.num_classes) or --classifier; this checkpoint's network has none")
    if not 0 <= args.label < classes:
        raise ConfigError(f"--class {args.label} is outside the model's label set 0..{classes - 1}")
    return (denoiser if args.cfg is None else ClassifierFreeGuidance(denoiser, args.cfg)), cond


def _guiding_classifier(ckpt, args: argparse.Namespace):
    """The noise-aware classifier of ``--classifier``, checked against the model it guides (data shape and process)."""
    from .classifier import NoisyClassifier
    from .training import load_trained

    classifier, cckpt = load_trained(args.classifier, use_ema=not args.raw_weights, device=args.device)
    if not isinstance(classifier, NoisyClassifier):
        raise ConfigError(f"--classifier {args.classifier} is not a classifier run (train one with loss.objective: classification)")
    shape, cshape = tuple(ckpt.meta["data"]["shape"]), tuple(cckpt.meta["data"]["shape"])
    if shape != cshape:
        raise ConfigError(f"the classifier takes inputs of shape {cshape} but the model generates shape {shape}: train it on the model's data")
    if cckpt.config["process"] != ckpt.config["process"]:
        raise ConfigError(
            f"the classifier was trained on process {cckpt.config['process']} but the model uses {ckpt.config['process']}: "
            "a noise-aware classifier reads the noisy states of one process"
        )
    return classifier.eval()


def cmd_sample(args: argparse.Namespace) -> int:
    from .evaluate import draw_samples
    from .samplers import SAMPLERS

    SAMPLERS.get(args.sampler)
    if args.n < 1 or args.steps < 1:
        raise ConfigError(f"--n and --steps must be >= 1, got n={args.n}, steps={args.steps}")
    denoiser, ckpt = _load(args)
    _require_generative(denoiser, args.checkpoint)
    shape = tuple(ckpt.meta["data"]["shape"])
    denoiser, cond = _conditioned(denoiser, ckpt, args)
    x, nfe = draw_samples(denoiser, shape, args.n, args.sampler, args.steps, seed=args.seed, grid=args.grid, cond=cond, device=args.device)
    out = Path(args.out or _run_dir(ckpt.path) / f"samples_step{ckpt.step}_{args.sampler}_{args.steps}")
    meta = {"checkpoint": str(ckpt.path), "sampler": args.sampler, "steps": str(args.steps), "nfe": str(nfe), "seed": str(args.seed)}
    for path in _write_samples(x, out, meta=meta):
        print(path)
    return 0


def _classifier_metrics(classifier, test, n: int, seed: int) -> dict:
    """Held-out accuracy of a noise-aware classifier at five times spread over [t_eps, t_max]."""
    p = classifier.process
    times = [p.t_eps + (p.t_max - p.t_eps) * q for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    x, y = test.x[:n].to(next(classifier.parameters()).device), test.y[:n].to(next(classifier.parameters()).device)
    return {"accuracy_at_t": {f"{t:.4g}": classifier.accuracy(x, y, t, seed=seed) for t in times}}


def _nll_metrics(denoiser, test, n: int, args: argparse.Namespace) -> dict:
    """Negative log-likelihood of ``n`` held-out points through the PF-ODE (THEORY §5.2 O3; bits/dim for images)."""
    import math

    import torch

    from .likelihood import bits_per_dim, dequantization_offset, dequantize, log_likelihood

    device = next(denoiser.parameters(), torch.empty(0)).device
    x = test.x[:n].to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    image = test.levels is not None
    if image:
        x = dequantize(x, test.levels, gen)
    result = log_likelihood(denoiser, x, divergence=args.divergence, probes=args.probes, rtol=args.rtol, atol=args.rtol, generator=gen)
    nll = -result.log_p
    dim = x[0].numel()
    out = {
        "n": n, "nll_nats": float(nll.mean()), "nll_nats_stderr": float(nll.std() / math.sqrt(n)) if n > 1 else 0.0,
        "nll_nats_per_dim": float(nll.mean()) / dim, "nfe": result.nfe,
        "protocol": {"divergence": args.divergence, "probes": args.probes, "rtol": args.rtol, "atol": args.rtol,
                     "t0": float(denoiser.process.t_eps), "prior": "sigma_T eps (the sampler's start)",
                     "dequantization": f"uniform, 2 (k + u)/{test.levels} - 1" if image else "none"},
    }
    if image:
        offset = dequantization_offset(test.levels)
        bpd = bits_per_dim(result.log_p, dim, offset)
        out.update(bits_per_dim=float(bpd.mean()), bits_per_dim_stderr=float(bpd.std() / math.sqrt(n)) if n > 1 else 0.0,
                   bits_per_dim_offset=offset)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from .classifier import NoisyClassifier
    from .evaluate import draw_samples, sample_metrics
    from .training import build_data
    from .training.checkpoint import write_atomic

    model, ckpt = _load(args)
    sc = ckpt.config["sample"]
    train, test = build_data(ckpt.config)
    n = min(args.n or sc["eval_n"], len(test))
    metrics = {"checkpoint": str(ckpt.path), "step": ckpt.step}
    if isinstance(model, NoisyClassifier):
        if args.nll:
            raise ConfigError(f"--nll needs a generative model; {args.checkpoint} is a classifier run")
        metrics.update(n=n, **_classifier_metrics(model, test, n, args.seed))
    elif args.nll:
        metrics.update(_nll_metrics(model, test, min(args.n or 256, len(test)), args))
    else:
        sampler, steps = args.sampler or sc["sampler"], args.steps or sc["steps"]
        x, nfe = draw_samples(model, tuple(train.shape), n, sampler, steps, seed=args.seed, grid=sc["grid"], device=args.device)
        metrics.update(sampler=sampler, steps=steps, nfe=nfe, **sample_metrics(x, test, train))
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out:
        write_atomic(Path(args.out), text.encode())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Weak-form (W1) and strong-form (W2) checks of named processes or a user's field (THEORY §9.2); exit 1 on a failure."""
    import os

    from .checks import CHECK_CASES, format_table, load_field, resolve_case, run_checks

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--field my_module:my_field` finds modules in the working directory
    cases = [load_field(spec) for spec in args.field] + [resolve_case(name) for name in args.cases]
    if not cases:
        cases = [CHECK_CASES.get(name)() for name in CHECK_CASES.names()]
    results = []
    for case in cases:
        results += run_checks(case, n=args.n, times=args.times, alpha=args.alpha, seed=args.seed)
    print(format_table(results))
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed} of {len(results)} checks passed" + (f"; {failed} FAILED" if failed else ""))
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from .data import DATASETS
    from .denoiser import PARAMETERIZATIONS
    from .losses import OBJECTIVES, TIME_SAMPLERS, WEIGHTINGS
    from .nets import NETWORKS
    from .processes import NOISES, PROCESSES
    from .samplers import GRIDS, SAMPLERS
    from .demo import PROCESS_DEMOS
    from .checks import CHECK_CASES

    rows = [
        ("processes", PROCESSES.names()),
        ("noise laws", NOISES.names()),
        ("parameterizations", PARAMETERIZATIONS.names()),
        ("samplers", SAMPLERS.names()),
        ("grids", GRIDS.names()),
        ("networks", NETWORKS.names()),
        ("datasets", DATASETS.names()),
        ("time samplers", TIME_SAMPLERS.names()),
        ("loss weightings", list(WEIGHTINGS)),
        ("loss objectives", list(OBJECTIVES)),
        ("configs", bundled_configs()),
        ("demo processes", PROCESS_DEMOS.names()),
        ("check cases", CHECK_CASES.names()),
    ]
    for kind, names in rows:
        print(f"{kind + ':':<20}{', '.join(names)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quick=args.quick, steps=args.steps, progress=not args.quiet, process=args.process)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udm", description="udm: unified diffusion models (train, sample, evaluate)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the model a YAML config describes")
    p.add_argument("config", help="a YAML file, or the name of a bundled config (see `udm list`)")
    p.add_argument("--out", help="run folder (default runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--device", help="override train.device (cpu, cuda, cuda:1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. train.lr=1e-3")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    for name, func, helptext in (("sample", cmd_sample, "draw samples from a checkpoint"), ("eval", cmd_eval, "score a checkpoint against held-out data")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint", help="a checkpoint folder, a checkpoints/ folder or a run folder (latest checkpoint)")
        p.add_argument("--sampler", default=None if name == "eval" else "dpmpp_2m")
        p.add_argument("--steps", type=int, default=None if name == "eval" else 50)
        p.add_argument("--n", type=int, default=None if name == "eval" else 64)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", help="output folder (sample) or JSON file (eval)")
        p.add_argument("--device", default=None)
        p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
        if name == "eval":
            p.add_argument("--nll", action="store_true", help="negative log-likelihood through the PF-ODE (bits/dim for images)")
            p.add_argument("--divergence", choices=("hutchinson", "exact"), default="hutchinson", help="divergence for --nll")
            p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per sample for --nll")
            p.add_argument("--rtol", type=float, default=1e-5, help="RK45 relative (and absolute) tolerance for --nll")
        if name == "sample":
            p.add_argument("--grid", default=None, help="time grid (see `udm list`)")
            p.add_argument("--class", dest="label", type=int, default=None, help="class label to sample (a class-conditional model)")
            p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance weight w: (1+w) cond - w uncond")
            p.add_argument("--classifier", default=None, help="a noise-aware classifier run to guide with (classifier guidance)")
            p.add_argument("--gamma", type=float, default=None, help="classifier-guidance scale (default 1: the Bayes posterior)")
        p.set_defaults(func=func)

    p = sub.add_parser("list", help="list processes, parameterizations, samplers, grids, networks, datasets, configs")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="check that a process's drift and diffusion transport its marginals (Fokker-Planck / continuity)")
    p.add_argument("cases", nargs="*", help="check cases (see `udm list`; NAME:KIND for a deliberately wrong drift); default all")
    p.add_argument("--field", action="append", default=[], metavar="MODULE:ATTR",
                   help="a user field with sample(t, n, generator) and drift(t, x); optional g2, density(t, x), t_range")
    p.add_argument("--n", type=int, default=20000, help="particles per weak-form check")
    p.add_argument("--times", type=int, default=3, help="times per case, spread over its t_range")
    p.add_argument("--alpha", type=float, default=0.01, help="familywise false-failure level of each case's weak-form checks")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="the main job: train on embedded data, write samples, plots and metrics")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--quick", action="store_true", help="only the 2-D two-moons model (about a minute)")
    p.add_argument("--process", default=None, help="a small CPU demo of one process instead (see `udm list`: demo processes)")
    p.add_argument("--steps", type=int, default=None, help="override the training steps of every demo model")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``udm`` and ``python -m udm``; returns the exit status."""
    from .training.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"udm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("udm: interrupted (a training run saved a checkpoint first; continue it with --resume)", file=sys.stderr)
        return 130
