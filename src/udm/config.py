"""Experiment configs: one small YAML per experiment, validated on load (DESIGN: configs/).

A config has the sections ``data``, ``process``, ``prediction``, ``network``,
``loss``, ``train`` and ``sample``. Sections that name a registered thing
(``data.name``, ``process.name``, ``network.name``, ``prediction.name``,
``sample.sampler``, ``loss.time_sampler.name``) take that thing's own keyword
arguments beside the name; they are checked against its signature, so a typo
is reported as the bad key with the allowed ones, never as a TypeError from
deep inside. :func:`validate` returns the config with every default filled in,
which is what checkpoints record.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .registry import Registry


TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 128,
    "lr": 2e-4,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "adam_eps": 1e-8,
    "warmup_steps": 0,
    "lr_schedule": "constant",
    "min_lr": 0.0,
    "grad_clip": 1.0,
    "grad_accum": 1,
    "ema": {"decay": 0.999},
    "precision": "fp32",
    "compile": False,
    "device": None,
    "log_every": 50,
    "log_format": "csv",
    "ckpt_every": 1000,
    "keep_checkpoints": 3,
    "sample_every": 0,
    "init_from": None,
    "cond_dropout": 0.1,
    "on_nonfinite": "stop",
    "posthoc_ema": None,
}

#: the widest power-function EMA profile (EDM2, Sec. 3): sigma_rel = 1/sqrt(12), gamma = 0, the uniform average of the run
SIGMA_REL_MAX = 12**-0.5
#: the widths ``train.posthoc_ema`` tracks when it names none (Karras et al. 2024, App. C.2: two are enough to reconstruct others)
POSTHOC_SIGMA_RELS = (0.05, 0.10)

SAMPLE_DEFAULTS: dict[str, Any] = {"sampler": "dpmpp_2m", "steps": 50, "grid": None, "n": 64, "eval_n": 2000, "options": {}}
TOP_KEYS = ("name", "seed", "data", "process", "prediction", "network", "loss", "train", "sample")
REQUIRED = ("data", "process", "network")

_CHOICES = {
    "lr_schedule": ("constant", "cosine"),
    "precision": ("fp32", "bf16"),
    "log_format": ("csv", "jsonl"),
    "on_nonfinite": ("stop", "skip"),
}
_POSITIVE_INT = ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every", "keep_checkpoints")
_NONNEG_INT = ("warmup_steps", "sample_every")
_NONNEG_FLOAT = ("lr", "weight_decay", "min_lr", "adam_eps")


class YAMLLoader(yaml.SafeLoader):
    """YAML as people write numbers: ``1e-3`` and ``1E+4`` are floats (YAML 1.1 reads them as strings)."""


YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text with :class:`YAMLLoader` (config files and ``--set`` values)."""
    return yaml.load(text, Loader=YAMLLoader)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SIMPLE = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
           list: "a list", tuple: "a list", dict: "a mapping"}


def _accepts(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``hint`` (None when the hint is not one a config can be checked against)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(value, h) for h in typing.get_args(hint)]
        return True if any(verdicts) else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    hint = origin or hint
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if hint in _SIMPLE:
        return isinstance(value, hint)
    return None


def _describe(hint: Any) -> str:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(dict.fromkeys(_SIMPLE.get(typing.get_origin(a) or a, getattr(a, "__name__", str(a))) for a in args))


def _annotations(factory: Callable[..., Any]) -> dict[str, Any]:
    """The evaluable type annotations of ``factory``'s parameters (from its signature, so factories that set one count)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    owner = factory if isinstance(factory, type) else inspect.unwrap(factory)
    namespace = getattr(owner, "__globals__", None) or vars(sys.modules.get(owner.__module__, typing))
    hints = {}
    for name, param in params.items():
        hint = param.annotation
        if isinstance(hint, str):
            try:
                hint = eval(hint, dict(namespace))  # an annotation string of udm's own code, as typing.get_type_hints does
            except Exception:
                continue
        if hint is not inspect.Parameter.empty:
            hints[name] = hint
    return hints


def check_types(where: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Refuse an option whose value does not fit the factory's type annotation, or a float option that is not finite.

    A typo such as ``beta_max: abc`` or ``hidden: 1.5`` is reported here, naming
    the key and the type, instead of failing inside the constructor.
    """
    hints = _annotations(factory)
    for key, value in options.items():
        hint = hints.get(key)
        if hint is None:
            continue
        if _accepts(value, hint) is False:
            raise ConfigError(f"config key '{where}.{key}' must be {_describe(hint)}, got {value!r}; fix the value")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{where}.{key}' must be a finite number, got {value!r}; fix the value")


def check_device(where: str, spec: Any) -> None:
    """Refuse a device torch cannot parse or this machine does not have (``cuda`` on a CPU-only build)."""
    if spec is None:
        return
    import torch

    if not isinstance(spec, str):
        raise ConfigError(f"{where} must be a device name such as cpu, cuda or cuda:1, got {spec!r}")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where} is {spec!r}, which is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} is {spec!r} but this torch has no CUDA device; use cpu (or install a CUDA build of torch)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{where} is {spec!r} but there are only {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where} is {spec!r} but MPS is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{where} is {spec!r}; udm runs on cpu, cuda or mps")


def signature_options(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword options ``factory`` accepts (None when it takes ``**kwargs``: anything goes)."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [k for k, p in params.items() if k != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def check_options(where: str, kind: str, name: str, factory: Callable[..., Any], options: Mapping[str, Any], extra: tuple[str, ...] = ()) -> None:
    """Raise ConfigError naming ``where.key`` for each option ``factory`` does not take or whose value has the wrong type."""
    allowed = signature_options(factory)
    if allowed is not None:
        allowed = [*allowed, *extra]
        for key in options:
            if key not in allowed:
                raise ConfigError(
                    f"config key '{where}.{key}' is not an option of {kind} {name!r}; allowed: {', '.join(sorted(allowed)) or 'none'}"
                )
    check_types(where, factory, options)


def _named(where: str, section: Any, registry: Registry, default: str | None = None) -> dict[str, Any]:
    """A ``{name: ..., **options}`` section (a bare string is shorthand for the name), name checked."""
    if isinstance(section, str):
        section = {"name": section}
    if section is None and default is not None:
        section = {"name": default}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key '{where}' must be a mapping with a 'name' (one of: {', '.join(registry.names())})")
    section = dict(section)
    name = section.get("name", default)
    if name is None:
        raise ConfigError(f"config key '{where}.name' is missing; valid {registry.kind}s: {', '.join(registry.names())}")
    if name not in registry:
        raise ConfigError(f"config key '{where}.name': unknown {registry.kind} {name!r}; valid {registry.kind}s: {', '.join(registry.names())}")
    section["name"] = name
    return section


def _merge_known(where: str, given: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ConfigError(f"config key '{where}' must be a mapping")
    for key in given:
        if key not in defaults:
            raise ConfigError(f"config key '{where}.{key}' is not allowed; allowed keys: {', '.join(sorted(defaults))}")
    out = copy.deepcopy(dict(defaults))
    out.update(copy.deepcopy(dict(given)))
    return out


def _check_train(train: dict[str, Any]) -> None:
    for key, choices in _CHOICES.items():
        if train[key] not in choices:
            raise ConfigError(f"config key 'train.{key}' is {train[key]!r}; allowed values: {', '.join(choices)}")
    for key in _POSITIVE_INT:
        v = train[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"config key 'train.{key}' must be an integer >= 1, got {v!r}")
    for key in _NONNEG_INT:
        v = train[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"config key 'train.{key}' must be an integer >= 0, got {v!r}")
    for key in _NONNEG_FLOAT:
        v = train[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"config key 'train.{key}' must be a number >= 0, got {v!r}")
    drop = train["cond_dropout"]
    if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop < 1:
        raise ConfigError(f"config key 'train.cond_dropout' must be a probability in [0, 1), got {drop!r}")
    if train["init_from"] is not None and not isinstance(train["init_from"], str):
        raise ConfigError(f"config key 'train.init_from' must be the path of a run or checkpoint, or null; got {train['init_from']!r}")
    clip = train["grad_clip"]
    if clip is not None and (not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(f"config key 'train.grad_clip' must be a number > 0 or null (no clipping), got {clip!r}")
    betas = train["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"config key 'train.betas' must be two numbers in [0, 1), got {betas!r}")
    if train["batch_size"] % train["grad_accum"]:
        raise ConfigError(
            f"config key 'train.grad_accum' ({train['grad_accum']}) must divide train.batch_size ({train['batch_size']})"
        )
    ema = train["ema"]
    if ema is not None:
        if not isinstance(ema, Mapping):
            raise ConfigError("config key 'train.ema' must be a mapping such as {decay: 0.999} or {half_life: 50000}, or null")
        for key in ema:
            if key not in ("decay", "half_life", "rampup_ratio"):
                raise ConfigError(f"config key 'train.ema.{key}' is not allowed; allowed keys: decay, half_life, rampup_ratio")
        if ("decay" in ema) == ("half_life" in ema):
            raise ConfigError("config key 'train.ema' needs exactly one of 'decay' or 'half_life'")
        if "decay" in ema and not (isinstance(ema["decay"], (int, float)) and 0 <= ema["decay"] < 1):
            raise ConfigError(f"config key 'train.ema.decay' must be in [0, 1), got {ema['decay']!r}")
    if train["posthoc_ema"] is not None:
        train["posthoc_ema"] = _check_posthoc_ema(train["posthoc_ema"])


def _check_posthoc_ema(section: Any) -> dict[str, Any]:
    """``train.posthoc_ema`` with its default widths filled in: {sigma_rels: [distinct widths in (0, 1/sqrt(12)]], every: N >= 1}.

    The widths are sorted, so two configs that list the same ones in another order are the same run.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key 'train.posthoc_ema' must be a mapping such as {{sigma_rels: [0.05, 0.1], every: 1000}}, or null; got {section!r}")
    for key in section:
        if key not in ("sigma_rels", "every"):
            raise ConfigError(f"config key 'train.posthoc_ema.{key}' is not allowed; allowed keys: every, sigma_rels")
    if "every" not in section:
        raise ConfigError("config key 'train.posthoc_ema.every' is missing: the steps between two snapshots, e.g. 1% of train.steps")
    every = section["every"]
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"config key 'train.posthoc_ema.every' must be an integer >= 1 (steps between snapshots), got {every!r}")
    widths = section.get("sigma_rels", list(POSTHOC_SIGMA_RELS))
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ConfigError(f"config key 'train.posthoc_ema.sigma_rels' must be a non-empty list of widths such as [0.05, 0.1], got {widths!r}")
    for w in widths:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 < w <= SIGMA_REL_MAX:
            raise ConfigError(
                f"config key 'train.posthoc_ema.sigma_rels' holds {w!r}; each width must be a number in (0, {SIGMA_REL_MAX:.4f}] "
                "(1/sqrt(12), the uniform average; EDM2 tracks 0.05 and 0.1)"
            )
    if len(set(map(float, widths))) < len(widths):
        raise ConfigError(f"config key 'train.posthoc_ema.sigma_rels' lists a width twice ({list(widths)!r}); give each once")
    return {"sigma_rels": sorted(float(w) for w in widths), "every": every}


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key and value of ``config`` and return it with all defaults filled in."""
    from .data import DATASETS
    from .denoiser import PARAMETERIZATIONS
    from .losses import TIME_SAMPLERS
    from .nets import NETWORKS
    from .objectives import LOSS_DEFAULTS, OBJECTIVES, build_objective
    from .processes import PROCESSES
    from .samplers.run import SAMPLERS, check_sampler_options

    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(TOP_KEYS)}), got {type(config).__name__}")
    for key in config:
        if key not in TOP_KEYS:
            raise ConfigError(f"config key {key!r} is not allowed; allowed keys: {', '.join(TOP_KEYS)}")
    for key in REQUIRED:
        if key not in config:
            raise ConfigError(f"config key {key!r} is missing; every config needs: {', '.join(REQUIRED)}")
    name = config.get("name", "experiment")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"config key 'name' must be a plain folder name (letters, digits, '.', '_', '-'; no '/' or '..'), got {name!r}; "
            "it names runs/NAME, so choose the folder with --out instead"
        )
    out: dict[str, Any] = {"name": name}
    seed = config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"config key 'seed' must be an integer >= 0, got {seed!r}")
    out["seed"] = seed

    data = _named("data", config["data"], DATASETS)
    data.setdefault("test_fraction", 0.1)
    if not isinstance(data["test_fraction"], (int, float)) or not 0.0 < data["test_fraction"] < 1.0:
        raise ConfigError(f"config key 'data.test_fraction' must be in (0, 1), got {data['test_fraction']!r}")
    check_options("data", "dataset", data["name"], DATASETS.get(data["name"]), options(data, "test_fraction"))
    out["data"] = data

    process = _named("process", config["process"], PROCESSES)
    check_options("process", "process", process["name"], PROCESSES.get(process["name"]), options(process))
    out["process"] = process

    prediction = _named("prediction", config.get("prediction"), PARAMETERIZATIONS, default="eps")
    check_options("prediction", "parameterization", prediction["name"], PARAMETERIZATIONS.get(prediction["name"]), options(prediction))
    out["prediction"] = prediction

    network = _named("network", config["network"], NETWORKS)
    check_options("network", "network", network["name"], NETWORKS.get(network["name"]), options(network))
    out["network"] = network

    loss = _merge_known("loss", config.get("loss"), LOSS_DEFAULTS)
    ts = _named("loss.time_sampler", loss["time_sampler"], TIME_SAMPLERS, default="uniform")
    check_options("loss.time_sampler", "time sampler", ts["name"], TIME_SAMPLERS.get(ts["name"]), options(ts))
    loss["time_sampler"] = ts
    try:
        objective = build_objective(prediction, loss)
    except ValueError as e:
        raise ConfigError(f"config section 'loss' (objective {loss['objective']!r}, prediction {prediction['name']!r}): {e}") from e
    loss["objective"] = objective.name
    predicts = NETWORKS.get(network["name"]).predicts
    if predicts != objective.network_predicts:
        nets = [n for n in NETWORKS if NETWORKS.get(n).predicts == objective.network_predicts]
        objectives = [n for n in OBJECTIVES if OBJECTIVES.get(n).network_predicts == predicts]
        raise ConfigError(
            f"config key 'loss.objective' is {objective.name!r} with network {network['name']!r}: the objective trains networks "
            f"that predict {objective.network_predicts!r} ({', '.join(nets)}), and this network predicts {predicts!r}, "
            f"which only objective(s) {', '.join(objectives) or 'none'} train: neither goes without the other"
        )
    out["loss"] = loss

    train = _merge_known("train", config.get("train"), TRAIN_DEFAULTS)
    if "ema" in (config.get("train") or {}):
        train["ema"] = copy.deepcopy(config["train"]["ema"])
    _check_train(train)
    check_device("config key 'train.device'", train["device"])
    if not objective.generative and train["sample_every"]:
        raise ConfigError(f"config key 'train.sample_every' must be 0 for objective {objective.name!r}: its model draws no samples")
    out["train"] = train

    sample = _merge_known("sample", config.get("sample"), SAMPLE_DEFAULTS)
    if sample["sampler"] not in SAMPLERS:
        raise ConfigError(f"config key 'sample.sampler': unknown sampler {sample['sampler']!r}; valid samplers: {', '.join(SAMPLERS.names())}")
    if not isinstance(sample["options"] or {}, Mapping):
        raise ConfigError(f"config key 'sample.options' must be a mapping of sampler options, got {sample['options']!r}")
    try:
        check_sampler_options(sample["sampler"], sample["options"] or {})
    except ValueError as err:
        raise ConfigError(f"config key 'sample.options': {err}") from None
    if "noise" in (sample["options"] or {}):
        raise ConfigError(
            "config key 'sample.options.noise' is a Python object (a udm.brownian.BrownianPath); a config cannot give one. "
            "Remove it: runs draw per-sample Brownian paths from their seeds"
        )
    for key in ("steps", "n", "eval_n"):
        if not isinstance(sample[key], int) or isinstance(sample[key], bool) or sample[key] < 1:
            raise ConfigError(f"config key 'sample.{key}' must be an integer >= 1, got {sample[key]!r}")
    out["sample"] = sample
    return out


def options(section: Mapping[str, Any], *skip: str) -> dict[str, Any]:
    """A named section's keyword options (everything but ``name`` and ``skip``)."""
    return {k: v for k, v in section.items() if k != "name" and k not in skip}


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and validate a YAML config; ``overrides`` like ``{"train.steps": 10}`` are applied first."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = parse_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections ({', '.join(TOP_KEYS)})")
    return validate(apply_overrides(raw, overrides or {}))


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"train.steps"``) in a copy of ``config``."""
    out = copy.deepcopy(dict(config))
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            if isinstance(child, str):
                child = {"name": child}
            node[key] = dict(child or {})
            node = node[key]
        node[leaf] = value
    return out


def dump(config: Mapping[str, Any]) -> str:
    """YAML text of a config (keys in section order)."""
    return yaml.safe_dump(dict(config), sort_keys=False)
