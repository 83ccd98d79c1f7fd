"""The ``udm`` command: train, sample, eval, ema, export, check, list, demo (``python -m udm`` is the same).

Every user error (a bad config key, a missing file, a damaged checkpoint, data
the network cannot take) ends in one line ``udm: error: ...`` on stderr and
exit status 2, and nothing half-written is left: outputs are written through
temporary files and renames, and output folders are created only once the
inputs have been checked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import check_writable
from .config import check_device, parse_yaml
from .errors import ConfigError, TrainingInterrupted, UdmError

if TYPE_CHECKING:
    import torch

    from .sources import ModelSource

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled_configs() -> list[str]:
    """Names of the configs shipped with udm (``udm train NAME`` finds them)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name: str) -> Path:
    """A config path: the file itself, or a bundled config by its bare name (``udm train demo_moons``).

    A path that names no file is an error even when a bundled config has the
    same stem: a mistyped path must not silently train something else.
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config {name!r} is a folder; give a YAML file or a bundled config name: {', '.join(bundled_configs())}")
    bundled = CONFIG_DIR / f"{name}.yaml"
    if len(path.parts) == 1 and not path.suffix and bundled.is_file():
        return bundled
    hint = f" (the bundled config is `udm train {path.stem}`)" if (CONFIG_DIR / f"{path.stem}.yaml").is_file() else ""
    raise ConfigError(f"config {name!r} not found{hint}; give a YAML file or one of the bundled configs: {', '.join(bundled_configs())}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.steps=10", "train.lr=1e-3"]`` -> ``{"train.steps": 10, "train.lr": 0.001}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set expects KEY=VALUE with a dotted key (e.g. train.steps=100), got {item!r}")
        try:
            out[key] = parse_yaml(value)
        except Exception as e:  # any YAML parser error is the user's value
            raise ConfigError(f"--set {key}: the value {value!r} is not valid YAML ({str(e).splitlines()[0]}); quote it or fix it") from None
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import Trainer, distributed

    overrides = parse_overrides(args.set)
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    if args.device is not None:
        overrides["train.device"] = args.device
    config = load_config(find_config(args.config), overrides)
    out = check_writable(args.out or Path("runs") / config["name"], "--out", folder=True)
    info = distributed.init(config["train"]["device"])
    try:
        trainer = Trainer(config, out, resume=args.resume, progress=not args.quiet, dist_info=info)
        summary = trainer.train()
    finally:
        distributed.shutdown()
    if info.is_main:
        print(json.dumps({"out": str(out), **summary}))
    return 0


def _load(args: argparse.Namespace, path: str | None = None):
    """The Experiment of ``path`` (default the positional checkpoint), EMA weights unless ``--raw-weights``."""
    from .training import Experiment

    check_device("--device", args.device)
    return Experiment.from_run(path or args.checkpoint, use_ema=not args.raw_weights, device=args.device)


def _source(args: argparse.Namespace):
    """The model of ``sample``/``eval``: the positional udm run, or the foreign folder of ``--from`` (udm.sources)."""
    from . import sources

    check_device("--device", args.device)
    if (args.checkpoint is None) == (args.source is None):
        raise ConfigError("give a udm run (CHECKPOINT) or a foreign model folder (--from PATH), exactly one of them")
    if args.source is None:
        for flag, value in (("--scheduler", args.scheduler), ("--trust-pickle", args.trust_pickle), ("--data", getattr(args, "data", None))):
            if value:
                raise ConfigError(f"{flag} applies to a foreign model (--from PATH); a udm run knows its own process and data")
        return sources.from_run(args.checkpoint, use_ema=not args.raw_weights, device=args.device)
    if args.raw_weights:
        raise ConfigError("--raw-weights chooses between a udm run's EMA and raw weights; a foreign folder holds one set")
    return sources.from_folder(args.source, data=getattr(args, "data", None), scheduler=args.scheduler,
                               trust_pickle=args.trust_pickle, device=args.device)


def _note(src) -> None:
    """Show the source's remark (e.g. EMA weights still dominated by their initialization) on stderr."""
    if src.note:
        print(f"udm: note: {src.note}", file=sys.stderr)


def _require_generative(src) -> None:
    if not src.generative:
        guide = f"; guide a model with it: udm sample MODEL --classifier {src.name}" if src.run_kind == "classifier" else ""
        raise ConfigError(f"{src.name} is a {src.run_kind} run: it draws no samples{guide}")


def _sampling(src, args: argparse.Namespace) -> tuple[str, int, dict, Any]:
    """(sampler, steps, options, grid): the flags where given, else the source's defaults (a run's ``sample`` section).

    The default options apply to the default sampler only, the default grid
    (a foreign model's own scheduler grid) to the default sampler's steps.
    """
    from .samplers import GRIDS, SAMPLERS

    sc = src.sample
    sampler = args.sampler if args.sampler is not None else sc["sampler"]
    steps = args.steps if args.steps is not None else sc["steps"]
    grid = args.grid or sc["grid"]
    SAMPLERS.get(sampler)
    if isinstance(grid, str):
        GRIDS.get(grid)
    return sampler, steps, dict(sc["options"] or {}) if sampler == sc["sampler"] else {}, grid


def _conditioned(src, args: argparse.Namespace, n: int):
    """The model and labels for ``--class K``, guided by ``--cfg W`` or ``--classifier RUN --gamma G`` (THEORY §2.2).

    ``--cfg`` is classifier-free guidance (G4) of a model trained with label
    dropout; ``--classifier`` is classifier guidance (G2) by a noise-aware
    classifier trained on the same data and process as the model.
    """
    import torch

    from .guidance import ClassifierFreeGuidance, ClassifierGuidance

    model = src.model
    if args.cfg is not None and args.classifier is not None:
        raise ConfigError("--cfg and --classifier are two kinds of guidance: choose one")
    if args.gamma is not None and args.classifier is None:
        raise ConfigError("--gamma is the classifier-guidance scale: it needs --classifier RUN")
    if args.label is None:
        if args.cfg is not None or args.classifier is not None:
            raise ConfigError(f"{'--cfg' if args.cfg is not None else '--classifier'} needs --class: guidance steers toward a class")
        return model, None
    cond = torch.full((n,), args.label, dtype=torch.long)
    if args.classifier is not None:
        classifier = _guiding_classifier(src, args)
        if not 0 <= args.label < classifier.num_classes:
            raise ConfigError(f"--class {args.label} is outside the classifier's label set 0..{classifier.num_classes - 1}")
        return ClassifierGuidance(model, classifier, 1.0 if args.gamma is None else args.gamma), cond
    classes = src.num_classes
    if classes is None:
        raise ConfigError("--class needs a class-conditional model (network.num_classes) or --classifier; this model has none")
    if not 0 <= args.label < classes:
        raise ConfigError(f"--class {args.label} is outside the model's label set 0..{classes - 1}")
    return (model if args.cfg is None else ClassifierFreeGuidance(model, args.cfg)), cond


def _guiding_classifier(src, args: argparse.Namespace):
    """The noise-aware classifier of ``--classifier``, checked against the model it guides (data shape and process)."""
    guide = _load(args, args.classifier)
    if guide.objective.network_predicts != "y":
        raise ConfigError(f"--classifier {args.classifier} is not a classifier run (train one with loss.objective: classification)")
    if guide.shape != src.shape:
        raise ConfigError(
            f"the classifier takes inputs of shape {guide.shape} but the model generates shape {src.shape}: train it on the model's data"
        )
    if guide.config["process"] != src.process_config:
        raise ConfigError(
            f"the classifier was trained on process {guide.config['process']} but the model uses {src.process_config}: "
            "a noise-aware classifier reads the noisy states of one process"
        )
    return guide.model().eval()


@dataclass
class _Observation:
    """What ``udm sample`` conditions on (``--inpaint``, ``--init`` or ``--infill``; :mod:`udm.conditioning`).

    ``draw`` stands in for :func:`udm.sample` in :func:`~udm.evaluate.draw_samples`:
    the same call, with the one observation given to every sample of the batch.
    ``steps_run`` is how many sampler steps one draw takes (RePaint repeats
    them, SDEdit skips the first ones); ``meta`` is recorded with the samples;
    ``shown`` is the observation as an image (hidden pixels grey), written
    beside them as ``observed.png``, or None for text.
    """

    name: str
    draw: Callable[..., Any]
    steps_run: int
    meta: dict[str, str]
    shown: torch.Tensor | None = None


#: What ``--infill`` text holds at a position to generate.
BLANK = "_"


def _check_observation_flags(args: argparse.Namespace) -> None:
    """Refuse the conditioning flags' combinations that mean nothing, before a model is loaded."""
    flags = (("--inpaint", args.inpaint), ("--init", args.init), ("--infill", args.infill))
    given = [flag for flag, value in flags if value is not None]
    if len(given) > 1:
        raise ConfigError(f"{given[0]} and {given[1]} are two ways of conditioning on observed data: choose one")
    needs = (
        ("--mask", args.mask, args.inpaint, "--inpaint IMAGE", "it marks which pixels of that image are kept"),
        ("--resample", args.resample, args.inpaint, "--inpaint IMAGE --mask MASK", "it is RePaint's resampling of inpainting"),
        ("--jump", args.jump, args.inpaint, "--inpaint IMAGE --mask MASK", "it is RePaint's resampling of inpainting"),
        ("--strength", args.strength, args.init, "--init IMAGE", "it is SDEdit's noise level for that image"),
    )
    for flag, value, needed, what, why in needs:
        if value is not None and needed is None:
            raise ConfigError(f"{flag} needs {what} ({why}); add it or drop {flag}")
    if args.inpaint is not None and args.mask is None:
        raise ConfigError("--inpaint IMAGE needs --mask MASK, an image of the same size: white (nonzero) = keep, black = fill")
    if args.init is not None and args.strength is None:
        raise ConfigError("--init IMAGE needs --strength S in (0, 1]: near 0 stays close to the image, 1 ignores it")
    if args.jump is not None and (args.resample or 1) == 1:
        raise ConfigError("--jump J is how far RePaint goes back before resampling; it needs --resample R > 1")


def _observation(src: ModelSource, args: argparse.Namespace, steps: int) -> _Observation | None:
    """The observation of ``--inpaint``/``--init``/``--infill`` for the model of ``src``, checked; None without them."""
    from . import conditioning

    if args.inpaint is not None:
        y = _read_model_image(src, "--inpaint", args.inpaint)
        mask = _read_mask(args.mask, args.inpaint, y)
        resample, jump = args.resample or 1, args.jump or 1
        if resample > 1:
            from .processes.base import ForwardTransition, require

            require(src.process, ForwardTransition, "--resample R > 1 (RePaint)", "use --resample 1 (plain replacement)")
        meta = {"conditioning": "inpaint", "observed": str(args.inpaint), "mask": str(args.mask), "resample": str(resample),
                "jump": str(jump)}
        draw = _with_observation(conditioning.inpaint, y, mask=mask, resample=resample, jump=jump)
        return _Observation("inpaint", draw, steps * resample, meta, shown=y.where(mask, 0.0))
    if args.init is not None:
        y = _read_model_image(src, "--init", args.init)
        meta = {"conditioning": "sdedit", "observed": str(args.init), "strength": str(args.strength)}
        skipped = math.floor(conditioning.steps_skipped(steps, args.strength))  # conditioning.start_times: t0 lies this many steps in
        return _Observation("sdedit", _with_observation(conditioning.sdedit, y, strength=args.strength), steps - skipped, meta,
                            shown=y)
    if args.infill is not None:
        y, mask = _infill_tokens(src, args.infill)
        meta = {"conditioning": "infill", "observed": args.infill}
        return _Observation("infill", _with_observation(conditioning.inpaint, y, mask=mask), steps, meta)
    return None


def _with_observation(method: Callable[..., Any], y: torch.Tensor, **fixed: Any) -> Callable[..., Any]:
    """:func:`udm.sample`'s call (as ``draw_samples`` makes it) running ``method`` with observation ``y`` for the whole batch."""

    def draw(denoiser: Callable[..., Any], sampler: str, steps: int, *, shape: tuple[int, ...], **kwargs: Any) -> Any:
        return method(denoiser, y.expand(shape[0], *y.shape), sampler=sampler, steps=steps, **fixed, **kwargs)

    return draw


def _read_image(flag: str, path: str, channels: int | None = None) -> torch.Tensor:
    """The image file of ``flag`` as (C, H, W) in [-1, 1] (:func:`udm.data.read_image`); an unreadable file is one error."""
    from .data import read_image

    try:
        return read_image(path, channels)
    except ValueError as err:
        raise ConfigError(f"{flag}: {err}; give an image file (PNG or JPEG)") from None


def _read_model_image(src: ModelSource, flag: str, path: str) -> torch.Tensor:
    """The image of ``flag`` as one sample of the image model of ``src``; refused unless it has the model's (C, H, W)."""
    kind = src.data.get("kind")
    if kind == "tokens":
        hint = 'use --infill "text with _ blanks" for a text model' if src.data.get("vocab") else "it takes no image"
        raise ConfigError(f"{flag} conditions an image model, but {src.name} generates tokens; {hint}")
    if kind != "image" or len(src.shape) != 3:
        raise ConfigError(f"{flag} conditions an image model, but {src.name} generates {kind} of shape {tuple(src.shape)}; "
                          "use it with a model of images")
    image = _read_image(flag, path)
    if tuple(image.shape) != tuple(src.shape):
        c, h, w = src.shape
        raise ConfigError(
            f"{flag} {path} has shape {tuple(image.shape)} (channels, height, width) but the model draws {tuple(src.shape)}; "
            f"give a {h}x{w} {'grayscale' if c == 1 else 'RGB'} image"
        )
    return image


def _read_mask(path: str, image_path: str, image: torch.Tensor) -> torch.Tensor:
    """``--mask``: True (observed, kept) where the mask image is nonzero, shape (1, H, W).

    Refused unless it has the image's size and keeps some pixels and fills some.
    """
    mask = _read_image("--mask", path, channels=1) > -1.0  # byte 0 reads as exactly -1
    if mask.shape[1:] != image.shape[1:]:
        raise ConfigError(
            f"--mask {path} is {mask.shape[1]}x{mask.shape[2]} pixels but --inpaint {image_path} is {image.shape[1]}x{image.shape[2]} "
            "(height x width); give a mask of the image's size"
        )
    if not bool(mask.any()):
        raise ConfigError(f"--mask {path} is all black, so no pixel is kept: that is plain sampling; "
                          "paint the pixels to keep white")
    if bool(mask.all()):
        raise ConfigError(f"--mask {path} is all white, so every pixel is kept and none is filled; "
                          "paint the pixels to fill black")
    return mask


def _infill_tokens(src: ModelSource, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``--infill`` text as (token ids with 0 at the blanks, observed mask), both of shape (L,); checked against the text model."""
    import torch

    kind, vocab = src.data.get("kind"), src.data.get("vocab")
    if kind != "tokens":
        hint = "use --inpaint IMAGE --mask MASK for an image model" if kind == "image" else "it needs a text model"
        raise ConfigError(f"--infill fills blanks in text, but {src.name} generates {kind}; {hint}")
    if vocab is None:
        raise ConfigError(f"--infill needs a text model, but the tokens of {src.name} have no characters (vocab); use a model of text")
    length = src.shape[-1]
    if len(text) != length:
        raise ConfigError(f"--infill text has {len(text)} characters but the model writes {length}; give exactly {length} "
                          f"characters, {BLANK} for each one to generate")
    blanks = [c == BLANK for c in text]
    if not any(blanks):
        raise ConfigError(f"--infill text has no blank ({BLANK}), so there is nothing to fill; "
                          f"write {BLANK} for each character to generate")
    if all(blanks):
        raise ConfigError("--infill text is all blanks, so nothing is observed: that is plain sampling; "
                          "keep some characters or drop --infill")
    index = {c: i for i, c in enumerate(vocab)}
    for pos, (c, blank) in enumerate(zip(text, blanks, strict=True)):
        if not blank and c not in index:
            raise ConfigError(f"--infill character {c!r} (position {pos}) is not in the model's vocabulary {''.join(vocab)!r}; "
                              f"use only those characters, {BLANK} for a blank")
    ids = torch.tensor([0 if blank else index[c] for c, blank in zip(text, blanks, strict=True)], dtype=torch.long)
    return ids, ~torch.tensor(blanks)


def cmd_sample(args: argparse.Namespace) -> int:
    from .evaluate import draw_samples
    from .training.samples import save_samples
    from .viz import save_image_grid

    _check_observation_flags(args)
    if args.out is not None:
        check_writable(args.out, "--out", folder=True)
    src = _source(args)
    _require_generative(src)
    sampler, steps, options, grid = _sampling(src, args)
    n = args.n if args.n is not None else src.sample["n"]
    model, cond = _conditioned(src, args, n)
    observed = _observation(src, args, steps)
    suffix = "" if observed is None else f"_{observed.name}"
    out = check_writable(args.out or f"{src.default_out}_{sampler}_{steps}{suffix}", "--out", folder=True)
    _note(src)
    draw = {} if observed is None else {"draw": observed.draw, "steps_run": observed.steps_run}
    x, nfe = draw_samples(model, src.shape, n, sampler, steps, seed=args.seed, grid=grid, cond=cond, device=args.device,
                          progress=not args.quiet, **draw, **options)
    meta = {**{k: str(v) for k, v in src.provenance.items()}, "sampler": sampler, "steps": str(steps), "nfe": str(nfe),
            "seed": str(args.seed), **({} if observed is None else observed.meta)}
    for path in save_samples(x, out / "samples", src.data, meta=meta):
        print(path)
    if observed is not None and observed.shown is not None:
        print(save_image_grid(observed.shown[None], out / "observed.png"))
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

    from .evaluate import token_nll_bound
    from .likelihood import bits_per_dim, dequantization_offset, dequantize, log_likelihood

    if test.kind == "tokens":
        return {"n": n, **token_nll_bound(denoiser, test.x[:n], seed=args.seed, progress=not args.quiet)}
    device = next(denoiser.parameters(), torch.empty(0)).device
    x = test.x[:n].to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    image = test.levels is not None
    if image:
        x = dequantize(x, test.levels, gen)
    result = log_likelihood(denoiser, x, divergence=args.divergence, probes=args.probes, rtol=args.rtol, atol=args.rtol, generator=gen,
                            progress=not args.quiet)
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


def _seed_range(args: argparse.Namespace) -> tuple[int, int | None]:
    """(first seed, count or None) from ``--seeds A-B`` (sample i uses seed A + i, B included) or ``--seed``."""
    if args.seeds is None:
        return args.seed, None
    first, sep, last = args.seeds.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and int(last) >= int(first)):
        raise ConfigError(f"--seeds {args.seeds!r} is not a range A-B of seeds with 0 <= A <= B; e.g. --seeds 0-9999")
    count = int(last) - int(first) + 1
    if args.n is not None and args.n != count:
        raise ConfigError(f"--n {args.n} disagrees with --seeds {args.seeds} ({count} seeds); give one of them")
    if args.seed != 0:
        raise ConfigError("--seed and --seeds both choose the sample seeds; give one of them")
    return int(first), count


def _feature_network(src: ModelSource, args: argparse.Namespace):
    """The pinned feature network of ``--features`` for ``--metrics``, checked against the source's data shape."""
    from .evaluate import FEATURE_METRICS
    from .features import FEATURES, load_feature_network

    if args.nll:
        raise ConfigError("--metrics scores samples and --nll scores held-out data; run them as two commands")
    if not src.generative:
        raise ConfigError(f"--metrics scores samples; {src.name} is a {src.run_kind} run and draws none")
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--metrics needs at least one of {', '.join(FEATURE_METRICS.names())}, comma-separated")
    for name in names:
        if name not in FEATURE_METRICS:
            raise ConfigError(f"--metrics: unknown metric {name!r}; choose from {', '.join(FEATURE_METRICS.names())}")
    if args.features is None:
        raise ConfigError(f"--metrics needs --features NAME, the pinned network whose features are compared; one of {', '.join(FEATURES.names())}")
    network = load_feature_network(args.features, device=args.device)
    if not network.accepts(tuple(src.shape)):
        raise ConfigError(f"feature network {network.name!r} takes {network.expected_input()}, but {src.name} draws samples of shape "
                          f"{tuple(src.shape)}; pick a network for this data (`udm list`: feature networks)")
    return names, network


def _print_feature_table(result: dict[str, Any]) -> None:
    """The feature metrics as a table: value, standard error, floor and its spread; then the protocol."""
    print(f"{'metric':<10} {'value':>12} {'stderr':>12} {'floor':>12} {'floor_std':>12}")
    for name, row in result["rows"].items():
        cells = [row["value"], row["stderr"], row["floor"], row["floor_std"]]
        print(f"{name:<10} " + " ".join(f"{'-':>12}" if c is None else f"{c:>12.6g}" for c in cells))
    classes = result.get("classes")
    if classes:
        s = classes["samples"]
        print(f"classes: confident {s['confident_fraction']:.4f} (floor {classes['floor_confident_fraction']:.4f}), "
              f"class TV {s['class_tv']:.4f} (floor {classes['floor_class_tv']:.4f})"
              + (f", network accuracy on the reference {classes['reference_accuracy']:.4f}" if "reference_accuracy" in classes else ""))
    proto = result["protocol"]
    feats = proto["features"]
    print(f"protocol: features {feats['name']} (sha256 {feats['sha256'][:16]}...), n {proto['n']}, reference {proto['reference']}; "
          f"floor {proto['floor']}")
    s = result["sampling"]
    options = "".join(f", {k}={v}" for k, v in s["options"].items())
    print(f"samples: {s['sampler']}, {s['steps']} steps{options}, NFE {s['nfe']}, seeds {s['seeds']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from .atomic import write_atomic
    from .evaluate import draw_samples, feature_metrics, sample_metrics

    if args.out is not None:
        check_writable(args.out, "--out", folder=False)
    seed, count = _seed_range(args)
    src = _source(args)
    train, test = src.splits()
    n = count if count is not None else args.n if args.n is not None else min(src.sample["eval_n"] if not args.nll else 256, len(test))
    if n > len(test):
        raise ConfigError(f"--n {n} is more than the {len(test)} held-out samples of {test.name!r}; use --n {len(test)} or fewer")
    if args.metrics is None and args.features is not None:
        raise ConfigError("--features chooses the network of --metrics; add --metrics fd,kid,pr")
    chosen = _feature_network(src, args) if args.metrics is not None else None
    if chosen is not None and n > len(train):
        raise ConfigError(f"the floor needs {n} training images and {train.name!r} has {len(train)}; use --n {len(train)} or fewer")
    metrics = dict(src.provenance)
    model = src.model
    if not src.generative:
        if args.nll:
            raise ConfigError(f"--nll needs a generative model; {src.name} is a {src.run_kind} run")
        _note(src)
        metrics.update(n=n, **_classifier_metrics(model, test, n, args.seed))
    elif args.nll:
        _note(src)
        metrics.update(_nll_metrics(model, test, n, args))
    else:
        sampler, steps, options, grid = _sampling(src, args)
        out = Path(args.out) if args.out else None
        if chosen is not None and out is None:
            out = src.default_out.parent / "eval" / f"{args.features}_{sampler}_{steps}steps_seeds{seed}-{seed + n - 1}.json"
            check_writable(str(out), "the metrics file", folder=False)
        _note(src)
        x, nfe = draw_samples(model, src.shape, n, sampler, steps, seed=seed, grid=grid, device=args.device,
                              progress=not args.quiet, **options)
        sampling = {"sampler": sampler, "steps": steps, "nfe": nfe, "seeds": f"{seed}-{seed + n - 1}", "options": options}
        if chosen is not None:
            names, network = chosen
            result = feature_metrics(x, test, train, network, names, seed=args.seed, floor_repeats=args.floor_repeats,
                                     progress=not args.quiet)
            metrics.update(sampling=sampling, **result)
            _print_feature_table(metrics)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, json.dumps(metrics, indent=1).encode())
            print(out)
            return 0
        metrics.update(sampler=sampler, steps=steps, nfe=nfe, **sample_metrics(x, test, train, model=model, progress=not args.quiet))
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out:
        write_atomic(Path(args.out), text.encode())
    return 0


#: the widths ``udm ema --sweep`` tries when --sigma-rel is not given
SWEEP_SIGMA_RELS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2)
#: what ``udm ema --sweep --metric`` can rank by (lower is better for each)
SWEEP_METRICS = ("fd", "kid", "nll")


def cmd_ema(args: argparse.Namespace) -> int:
    """Post-hoc EMA (Karras et al. 2024, EDM2, App. C.2): reconstruct each width from a run's snapshots and write it as a checkpoint.

    Every input is checked before the first folder is written; one line per
    width says what was reconstructed and where (docs/posthoc_ema.md). With
    ``--sweep`` each width is then scored (a feature metric of its samples, or
    the held-out NLL) and the best one is named.
    """
    from .training import reconstruct_posthoc, write_posthoc

    if args.out is not None:
        check_writable(args.out, "--out", folder=True)
    widths = args.sigma_rel
    if widths is None:
        if not args.sweep:
            raise ConfigError("give the widths to reconstruct with --sigma-rel (e.g. 0.05,0.1,0.15), or --sweep to try several")
        widths = list(SWEEP_SIGMA_RELS)
    scorer = _sweep_scorer(args) if args.sweep else None
    if scorer is None:
        for flag in ("metric", "features", "n", "seeds", "sampler", "steps"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag} applies to --sweep; add --sweep to score the widths")
    reconstructions = reconstruct_posthoc(args.run, widths, step=args.step)
    paths = write_posthoc(args.run, reconstructions, out=args.out)
    for sigma_rel, rec in reconstructions.items():
        steps = rec.snapshot_steps
        print(f"sigma_rel {sigma_rel:g}  gamma {rec.gamma:.4g}  step {rec.step}  snapshots {len(steps)} (steps {steps[0]}..{steps[-1]})  "
              f"residual {rec.residual:.2e}  {paths[sigma_rel]}")
    if scorer is not None:
        _sweep(args, scorer, reconstructions, paths)
    return 0


def _sweep_scorer(args: argparse.Namespace) -> Callable[[Path], tuple[float, float | None, dict[str, Any]]]:
    """Check the ``--sweep`` flags against the run (before anything is written) and return width folder -> (value, stderr, record)."""
    from . import sources
    from .evaluate import FEATURE_METRICS, FeatureReference, draw_samples

    if args.metric is None:
        raise ConfigError(f"--sweep needs --metric, one of {', '.join(SWEEP_METRICS)} (lower is better)")
    if args.metric not in SWEEP_METRICS:
        raise ConfigError(f"--metric {args.metric!r} cannot rank widths; choose one of {', '.join(SWEEP_METRICS)}")
    args.nll = args.metric == "nll"
    if args.nll and args.features is not None:
        raise ConfigError("--features applies to --metric fd or kid; --metric nll scores held-out data without features")
    args.metrics = None if args.nll else args.metric
    seed, count = _seed_range(args)
    check_device("--device", args.device)
    src = sources.from_run(args.run, device=args.device)
    _require_generative(src)
    train, test = src.splits()
    n = count if count is not None else args.n if args.n is not None else min(256 if args.nll else src.sample["eval_n"], len(test))
    if n > len(test):
        raise ConfigError(f"--n {n} is more than the {len(test)} held-out samples of {test.name!r}; use --n {len(test)} or fewer")
    if args.nll:
        return lambda path: _sweep_nll(path, test, n, args)
    _, network = _feature_network(src, args)
    sampler, steps, options, grid = _sampling(src, args)
    reference = FeatureReference(network, test, train, n, seed=0, floor_repeats=1, progress=not args.quiet)

    def score(path: Path) -> tuple[float, float | None, dict[str, Any]]:
        model = sources.from_run(str(path), device=args.device).model
        x, nfe = draw_samples(model, src.shape, n, sampler, steps, seed=seed, grid=grid, device=args.device,
                              progress=not args.quiet, **options)
        result = reference.score(x, FEATURE_METRICS.names())
        row = result["rows"][args.metric]
        sampling = {"sampler": sampler, "steps": steps, "nfe": nfe, "seeds": f"{seed}-{seed + n - 1}"}
        return row["value"], row["stderr"], {"sampling": sampling, **result}

    return score


def _sweep_nll(path: Path, test, n: int, args: argparse.Namespace) -> tuple[float, float | None, dict[str, Any]]:
    """The held-out NLL of one width's weights (bits/dim for images, nats/dim otherwise) with its standard error."""
    from . import sources

    result = _nll_metrics(sources.from_run(str(path), device=args.device).model, test, n, args)
    if "bits_per_dim" in result:
        return result["bits_per_dim"], result["bits_per_dim_stderr"], result
    dim = test.x[0].numel()
    return result["nll_nats_per_dim"], result["nll_nats_stderr"] / dim, result


def _sweep(args: argparse.Namespace, scorer, reconstructions, paths) -> None:
    """Score every reconstructed width, print the table with the best marked, and write it as JSON beside the widths."""
    from .atomic import write_atomic

    rows = []
    for sigma_rel, rec in reconstructions.items():
        value, stderr, record = scorer(paths[sigma_rel])
        rows.append({"sigma_rel": sigma_rel, "gamma": rec.gamma, "value": value, "stderr": stderr, "path": str(paths[sigma_rel]),
                     "result": record})
    best = min(rows, key=lambda r: r["value"])
    print(f"\n{'sigma_rel':>9} {'gamma':>8} {args.metric:>12} {'stderr':>12}")
    for r in rows:
        err = "-" if r["stderr"] is None else f"{r['stderr']:.4g}"
        print(f"{r['sigma_rel']:>9g} {r['gamma']:>8.4g} {r['value']:>12.6g} {err:>12}" + ("  <- best" if r is best else ""))
    out = Path(best["path"]).parent.parent / f"sweep_{args.metric}_step{reconstructions[best['sigma_rel']].step}.json"
    write_atomic(out, json.dumps({"metric": args.metric, "best": best["sigma_rel"], "rows": rows}, indent=1).encode())
    print(f"best sigma_rel {best['sigma_rel']:g} ({args.metric} {best['value']:.6g}): {best['path']}")
    print(out)


def _sigma_rels(text: str) -> list[float]:
    """An argparse type: comma-separated post-hoc EMA widths, each in (0, 1/sqrt(12)]."""
    from .config import SIGMA_REL_MAX

    widths = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not a number; give widths such as 0.05,0.1") from None
        if not 0.0 < value <= SIGMA_REL_MAX:
            raise argparse.ArgumentTypeError(f"{item.strip()} is out of range; each width must lie in (0, {SIGMA_REL_MAX:.4f}]")
        widths.append(value)
    return widths


def cmd_export(args: argparse.Namespace) -> int:
    """Write a udm run as a folder the target library loads with no udm installed (docs/interop.md)."""
    from .interop import EXPORTERS

    print(EXPORTERS.get(args.to)(args.checkpoint, args.out, use_ema=not args.raw_weights, scheduler=args.scheduler,
                                 time_embedding=args.time_embedding))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Weak-form (W1) and strong-form (W2) checks of named processes or a user's field (THEORY §9.2).

    Exit 1 on a failure, 3 when nothing failed but a check had too few particles to detect an error (underpowered).
    """
    import os

    from .checks import CHECK_CASES, format_table, load_field, resolve_case, run_checks, summarize

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--field my_module:my_field` finds modules in the working directory
    cases = [load_field(spec) for spec in args.field] + [resolve_case(name) for name in args.cases]
    if not cases:
        cases = [CHECK_CASES.get(name)() for name in CHECK_CASES.names()]
    results = []
    for case in cases:
        results += run_checks(case, n=args.n, times=args.times, alpha=args.alpha, seed=args.seed, progress=not args.quiet)
    print(format_table(results))
    line, code = summarize(results)
    print(f"\n{line}")
    return code


def cmd_list(args: argparse.Namespace) -> int:
    from .data import DATASETS
    from .denoiser import PARAMETERIZATIONS
    from .losses import TIME_SAMPLERS
    from .objectives import OBJECTIVES, WEIGHTINGS
    from .nets import NETWORKS
    from .processes import NOISES, PROCESSES
    from .samplers import GRIDS, SAMPLERS
    from .demo import PROCESS_DEMOS
    from .checks import CHECK_CASES
    from .evaluate import FEATURE_METRICS
    from .features import FEATURES

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
        ("loss objectives", OBJECTIVES.names()),
        ("configs", bundled_configs()),
        ("demo processes", PROCESS_DEMOS.names()),
        ("check cases", CHECK_CASES.names()),
        ("feature networks", FEATURES.names()),
        ("feature metrics", FEATURE_METRICS.names()),
    ]
    for kind, names in rows:
        print(f"{kind + ':':<20}{', '.join(names)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quick=args.quick, steps=args.steps, progress=not args.quiet, process=args.process)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other mistake: ``udm: error: ...``, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def _number(kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False,
            open_high: bool = False) -> Callable[[str], Any]:
    """An argparse type: an int or finite float within [low, high] (ends excluded where ``open_*``)."""
    word = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {word}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if open_low else value < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if open_low else '>='} {low}")
        if high is not None and (value >= high if open_high else value > high):
            raise argparse.ArgumentTypeError(f"{text} must be {'<' if open_high else '<='} {high}")
        return value

    parse.__name__ = word
    return parse


_COUNT = _number(int, 1)
_SEED = _number(int, 0)
_FINITE = _number(float)


def build_parser() -> argparse.ArgumentParser:
    """The ``udm`` argument parser; every option has help text and a checked type and range."""
    parser = _Parser(prog="udm", description="udm: unified diffusion models (train, sample, evaluate)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,eval,ema,export,check,list,demo}")

    p = sub.add_parser("train", help="train the model a YAML config describes")
    p.add_argument("config", help="a YAML file, or the bare name of a bundled config (see `udm list`)")
    p.add_argument("--out", help="run folder (default runs/NAME); one training at a time holds it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=_COUNT, help="override train.steps (the total, counting steps already trained)")
    p.add_argument("--device", help="override train.device (cpu, cuda, cuda:1, mps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. train.lr=1e-3")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    for name, func, helptext in (("sample", cmd_sample, "draw samples from a checkpoint"), ("eval", cmd_eval, "score a checkpoint against held-out data")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint", nargs="?", help="a checkpoint folder, a checkpoints/ folder or a run folder (latest checkpoint)")
        p.add_argument("--from", dest="source", metavar="PATH", default=None,
                       help="a foreign model folder instead of a udm run (diffusers model or pipeline folder; docs/interop.md)")
        p.add_argument("--scheduler", metavar="PATH", default=None,
                       help="with --from: the scheduler_config.json (or its folder) saying which process the model was trained on")
        p.add_argument("--trust-pickle", action="store_true",
                       help="with --from: allow pickled weights (.bin/.pt/.pkl), which can run code when loaded; safetensors need no trust")
        p.add_argument("--sampler", default=None, help="a sampler (default: the run's sample.sampler, with its sample.options)")
        p.add_argument("--steps", type=_COUNT, default=None, help="sampler steps (default: the run's sample.steps)")
        p.add_argument("--n", type=_COUNT, default=None,
                       help="how many samples (default: the run's sample.n; eval: sample.eval_n, at most the held-out split)")
        p.add_argument("--seed", type=_SEED, default=0, help="seed of the sampler's noise (same seed, same samples)")
        p.add_argument("--out", help="output folder (sample; default inside the run) or JSON file (eval; default: print only)")
        p.add_argument("--device", default=None, help="device to run the model on (cpu, cuda, cuda:1, mps; default cpu)")
        p.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
        p.add_argument("--grid", default=None, help="time grid (see `udm list`; default: the run's sample.grid)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "eval":
            p.add_argument("--data", default=None, help="with --from: the dataset to score against (see `udm list`; same sample shape)")
            p.add_argument("--metrics", default=None, metavar="LIST",
                           help="feature metrics of the samples, comma-separated: fd, kid, pr (precision/recall); "
                                "prints a table with floors and writes JSON beside the run (or to --out)")
            p.add_argument("--features", default=None, metavar="NAME",
                           help="with --metrics: the pinned feature network (mnist-cnn, digits-mlp, inception-v3; see `udm list`)")
            p.add_argument("--seeds", default=None, metavar="A-B", help="sample seeds A..B (sample i uses seed A + i; n = B - A + 1)")
            p.add_argument("--floor-repeats", type=_COUNT, default=5,
                           help="with --metrics: random sets of n training images each floor averages (default 5)")
            p.add_argument("--nll", action="store_true", help="negative log-likelihood through the PF-ODE (bits/dim for images)")
            p.add_argument("--divergence", choices=("hutchinson", "exact"), default="hutchinson", help="divergence for --nll")
            p.add_argument("--probes", type=_COUNT, default=1, help="Hutchinson probes per sample for --nll")
            p.add_argument("--rtol", type=_number(float, 0, 1, open_low=True, open_high=True), default=1e-5,
                           help="RK45 relative (and absolute) tolerance for --nll, in (0, 1)")
        if name == "sample":
            p.add_argument("--class", dest="label", type=_SEED, default=None, help="class label to sample (a class-conditional model)")
            p.add_argument("--cfg", type=_FINITE, default=None, help="classifier-free guidance weight w: (1+w) cond - w uncond")
            p.add_argument("--classifier", default=None, help="a noise-aware classifier run to guide with (classifier guidance)")
            p.add_argument("--gamma", type=_number(float, 0), default=None, help="classifier-guidance scale >= 0 (default 1: the Bayes posterior)")
            p.add_argument("--inpaint", metavar="IMAGE", default=None,
                           help="inpainting: keep the pixels of IMAGE (the model's size and channels) that --mask marks and "
                                "generate the rest; every sample sees the same IMAGE; observed.png shows it (hidden pixels grey)")
            p.add_argument("--mask", metavar="MASK", default=None,
                           help="with --inpaint: an image of IMAGE's size; white (any nonzero pixel) = observed, kept; "
                                "black = hidden, filled")
            p.add_argument("--resample", metavar="R", type=_COUNT, default=None,
                           help="with --inpaint: RePaint, every stretch of --jump steps is run R times, sent back up by the "
                                "forward transition in between (R times the NFE; Gaussian processes; default 1: plain replacement)")
            p.add_argument("--jump", metavar="J", type=_COUNT, default=None,
                           help="with --resample R > 1: the steps each RePaint stretch spans (default 1)")
            p.add_argument("--init", metavar="IMAGE", default=None,
                           help="SDEdit (image-to-image): noise IMAGE to the level --strength picks and sample from there")
            p.add_argument("--strength", metavar="S", type=_number(float, 0, 1, open_low=True), default=None,
                           help="with --init, in (0, 1]: the share of the sampler's grid run from the noised image; "
                                "near 0 returns IMAGE, 1 ignores it (plain sampling from the same seed)")
            p.add_argument("--infill", metavar="TEXT", default=None,
                           help=f"text models: TEXT of exactly the model's sequence length; each {BLANK} is a character to "
                                f"generate, every other character is kept ({BLANK} always means a blank)")
        p.set_defaults(func=func)

    p = sub.add_parser("ema", help="post-hoc EMA: reconstruct EMA widths from a run's snapshots (train.posthoc_ema)")
    p.add_argument("run", help="a run folder trained with train.posthoc_ema")
    p.add_argument("--sigma-rel", type=_sigma_rels, default=None, metavar="S[,S...]",
                   help="the EMA widths to reconstruct (relative to training length), e.g. 0.05,0.1,0.15 "
                        f"(with --sweep default {','.join(f'{s:g}' for s in SWEEP_SIGMA_RELS)})")
    p.add_argument("--step", type=_COUNT, default=None, help="the snapshot step to reconstruct at (default: the last snapshot)")
    p.add_argument("--out", default=None, help="folder for the sigma_rel_*/ checkpoints (default RUN/posthoc_ema)")
    p.add_argument("--sweep", action="store_true", help="score every width with --metric and name the best (lowest)")
    p.add_argument("--metric", default=None, help=f"with --sweep: {', '.join(SWEEP_METRICS)} (fd/kid of samples need --features)")
    p.add_argument("--features", default=None, metavar="NAME", help="with --sweep --metric fd|kid: the pinned feature network")
    p.add_argument("--n", type=_COUNT, default=None, help="with --sweep: samples per width (fd, kid) or held-out points (nll)")
    p.add_argument("--seeds", default=None, metavar="A-B", help="with --sweep: sample seeds A..B (n = B - A + 1)")
    p.add_argument("--sampler", default=None, help="with --sweep: the sampler (default: the run's sample.sampler)")
    p.add_argument("--steps", type=_COUNT, default=None, help="with --sweep: sampler steps (default: the run's sample.steps)")
    p.add_argument("--device", default=None, help="device to run the model on (cpu, cuda, ...; default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ema, seed=0, grid=None, divergence="hutchinson", probes=1, rtol=1e-5, nll=False, metrics=None)

    p = sub.add_parser("export", help="write a udm run as a folder another library loads (diffusers)")
    p.add_argument("checkpoint", help="a checkpoint folder, a checkpoints/ folder or a run folder (latest checkpoint)")
    p.add_argument("--to", choices=("diffusers",), required=True, help="the target format")
    p.add_argument("out", help="the folder to write (must not exist, or be empty)")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--scheduler", choices=("ddim", "ddpm"), default="ddim", help="the pipeline and scheduler written (default ddim)")
    p.add_argument("--time-embedding", choices=("learned", "positional"), default="learned",
                   help="learned: a table of udm's embedding per timestep, exact, integer timesteps only (default); "
                        "positional: diffusers' sinusoid with the shift folded in, also fractional timesteps (Karras sigmas)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("list", help="list processes, parameterizations, samplers, grids, networks, datasets, configs")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="check that a process's drift and diffusion transport its marginals (Fokker-Planck / continuity)")
    p.add_argument("cases", nargs="*", help="check cases (see `udm list`; NAME:KIND for a deliberately wrong drift); default all")
    p.add_argument("--field", action="append", default=[], metavar="MODULE:ATTR",
                   help="a user field with sample(t, n, generator) and drift(t, x); optional g2, density(t, x), t_range")
    p.add_argument("--n", type=_COUNT, default=20000, help="particles per weak-form check")
    p.add_argument("--times", type=_COUNT, default=3, help="times per case, spread over its t_range")
    p.add_argument("--alpha", type=_number(float, 0, 1, open_low=True, open_high=True), default=0.01,
                   help="familywise false-failure level of each case's weak-form checks, in (0, 1)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the particles and test functions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="the main job: train on embedded data, write samples, plots and metrics")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--quick", action="store_true", help="only the 2-D two-moons model (about a minute)")
    p.add_argument("--process", default=None, help="a small CPU demo of one process instead (see `udm list`: demo processes)")
    p.add_argument("--steps", type=_COUNT, default=None, help="override the training steps of every demo model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``udm`` and ``python -m udm``; returns the exit status (docs/errors.md).

    Every user mistake ends here as one line ``udm: error: <what>; <what to do>``
    (exit 2, or the error's own status); set ``UDM_DEBUG=1`` for the traceback.
    An error that is none of these is a bug in udm and keeps its traceback.
    """
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"udm: stopped: {e}", file=sys.stderr)
        return e.exit_code
    except UdmError as e:
        return _fail(e, e.exit_code)
    except (OSError, ValueError) as e:
        return _fail(e, 2)
    except KeyboardInterrupt:
        print("udm: interrupted; nothing more was written (a training run saves a checkpoint first: continue it with --resume)",
              file=sys.stderr)
        return 130


def _fail(error: BaseException, code: int) -> int:
    """Print ``error`` as the one ``udm: error:`` line and return ``code``."""
    if os.environ.get("UDM_DEBUG"):
        raise error
    if isinstance(error, OSError) and error.filename is not None:
        message = f"cannot use {error.filename}: {error.strerror or error}; check the path and its permissions"
    else:
        message = " ".join(str(error).split()) or type(error).__name__
    print(f"udm: error: {message}", file=sys.stderr)
    return code
