"""diffusers model and pipeline folders as udm denoisers (docs/interop.md).

A folder in diffusers' layout is either

* a **pipeline folder**: ``model_index.json``, the network in ``unet/`` (or
  ``transformer/``) and ``scheduler/scheduler_config.json``; or
* a **model folder**: ``config.json`` and ``diffusion_pytorch_model.safetensors``,
  with the scheduler config beside it (``scheduler_config.json``), in a sibling
  ``../scheduler/`` folder, or given explicitly.

The scheduler config says which process the network was trained on and what it
predicts (:mod:`.schedulers` maps it exactly or refuses); the network is built
by diffusers itself (an optional extra, imported only here) and its weights are
read with safetensors. A pickle (``.bin``, ``.pt``, ``.pkl``) can run code
when unpickled, so it is refused unless the caller says ``trust_pickle``.

Every problem with the folder is one :class:`~udm.errors.InteropError` naming
the file: a missing file, a truncated or unreadable weight file, weights whose
names or shapes do not fit the config, a network class udm does not drive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InteropError
from .schedulers import SchedulerMap, denoiser_from, scheduler_map

Tensor = torch.Tensor

#: Weight files diffusers writes, safest first; the pickled ones load only with ``trust_pickle``.
SAFE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
PICKLED_WEIGHTS = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json",
                   "diffusion_pytorch_model.pt", "diffusion_pytorch_model.pkl")
#: Network classes udm drives: ``forward(sample, timestep, class_labels=None).sample`` on images.
MODEL_CLASSES = ("UNet2DModel",)
#: Network classes refused with a reason (anything else is refused with the supported list).
REFUSED_CLASSES = {
    "UNet2DConditionModel": "it is conditioned on text embeddings (encoder_hidden_states) through cross-attention",
    "UNet1DModel": "it takes 1-D sequences, not images",
}
EXTRA = "pip install 'udm[diffusers]'"


def require_diffusers() -> Any:
    """The ``diffusers`` module, or an InteropError naming the optional extra that provides it."""
    try:
        import diffusers
    except ImportError as e:
        raise InteropError(f"reading diffusers models needs the diffusers package, which is not installed ({e}); {EXTRA}") from None
    return diffusers


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InteropError(f"missing file {path}; a diffusers folder needs it (save the model with save_pretrained)")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InteropError(f"cannot read {path} as JSON ({e}); re-save the model with save_pretrained") from None
    if not isinstance(value, dict):
        raise InteropError(f"{path} holds a JSON {type(value).__name__}, not an object; re-save the model with save_pretrained")
    return value


@dataclass(frozen=True)
class FolderLayout:
    """Where a diffusers folder keeps its network (``model_dir``) and its scheduler config (None: not found)."""

    model_dir: Path
    scheduler_config: Path | None
    looked_in: tuple[Path, ...] = field(default=())


def recognizes_diffusers(path: Path) -> bool:
    """True for a folder in diffusers' layout (a pipeline's ``model_index.json`` or a model's ``config.json``)."""
    return (path / "model_index.json").is_file() or (path / "config.json").is_file()


def layout(path: Path) -> FolderLayout:
    """The network folder and scheduler config of a pipeline or model folder (module docstring)."""
    if (path / "model_index.json").is_file():
        index = _json(path / "model_index.json")
        component = next((name for name in ("unet", "transformer") if name in index), None)
        if component is None:
            raise InteropError(f"{path / 'model_index.json'} names no 'unet' or 'transformer' component; udm loads the denoising network of a pipeline")
        sched = path / "scheduler" / "scheduler_config.json"
        return FolderLayout(path / component, sched if sched.is_file() else None, (sched,))
    if (path / "config.json").is_file():
        candidates = (path / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json")
        return FolderLayout(path, next((c for c in candidates if c.is_file()), None), candidates)
    if not path.exists():
        raise InteropError(f"{path} does not exist; give a diffusers model or pipeline folder")
    raise InteropError(f"{path} is not a diffusers folder (no model_index.json or config.json); give the folder save_pretrained wrote")


def _weight_file(model_dir: Path, trust_pickle: bool) -> Path:
    """The folder's weight file: safetensors if present, a pickle only with ``trust_pickle``."""
    for name in SAFE_WEIGHTS:
        if (model_dir / name).is_file():
            return model_dir / name
    pickled = next((model_dir / name for name in PICKLED_WEIGHTS if (model_dir / name).is_file()), None)
    if pickled is None:
        raise InteropError(f"missing file {model_dir / SAFE_WEIGHTS[0]}: {model_dir} holds no weights; save the model with save_pretrained")
    if not trust_pickle:
        raise InteropError(
            f"{pickled} is a pickle, which can run arbitrary code when loaded; re-save it as safetensors "
            "(save_pretrained(..., safe_serialization=True)) or, if you trust its source, pass --trust-pickle (trust_pickle=True)"
        )
    return pickled


def _read_tensors(file: Path) -> dict[str, Tensor]:
    """All tensors of one weight file (safetensors, or a trusted pickle read with torch's weights-only unpickler)."""
    try:
        if file.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise several types for a damaged file
        raise InteropError(f"cannot read weight file {file} ({type(e).__name__}: {e}); it is truncated or damaged: re-save the model") from None


def read_weights(model_dir: Path, trust_pickle: bool = False) -> tuple[dict[str, Tensor], Path]:
    """The state dict of a diffusers model folder (sharded or not) and the file it came from."""
    file = _weight_file(model_dir, trust_pickle)
    if not file.name.endswith(".index.json"):
        return _read_tensors(file), file
    shards = sorted(set(_json(file).get("weight_map", {}).values()))
    if not shards:
        raise InteropError(f"{file} lists no weight shards (its weight_map is empty); re-save the model")
    state: dict[str, Tensor] = {}
    for shard in shards:
        path = (model_dir / shard).resolve()
        if path.parent != model_dir.resolve():
            raise InteropError(f"{file} names shard {shard!r} outside its folder; refusing to read it")
        if not path.is_file():
            raise InteropError(f"missing file {path}, a weight shard named in {file}; copy the whole folder")
        state.update(_read_tensors(path))
    return state, file


def _check_fits(model: torch.nn.Module, state: dict[str, Tensor], file: Path, config_file: Path) -> None:
    """One line naming the first weight whose name or shape does not fit the network ``config_file`` describes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the network has no place for"
        n = len(missing) + len(extra)
        raise InteropError(f"weight file {file} does not fit {config_file}: it {what} ({n} names differ); the two files come from different models")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InteropError(
                f"weight file {file} does not fit {config_file}: {name} has shape {tuple(tensor.shape)} but the config "
                f"needs {tuple(expected[name].shape)}; the two files come from different models"
            )


def _sample_shape(config: dict[str, Any], config_file: Path) -> tuple[int, ...]:
    size = config.get("sample_size")
    size = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, list | tuple) else None
    if size is None or len(size) != 2:
        raise InteropError(f"{config_file} has no usable sample_size (got {config.get('sample_size')!r}); set it to the image size")
    return (int(config.get("in_channels", 3)), *map(int, size))


def _labels(config: dict[str, Any], config_file: Path, null_class: int | None) -> tuple[int | None, int | None]:
    """(number of real labels, null label): a udm export records its null label; ``null_class`` names one explicitly."""
    if config.get("class_embed_type") is not None:
        raise InteropError(
            f"{config_file} sets class_embed_type={config['class_embed_type']!r}; udm drives UNet2DModel with no class embedding "
            "or the label embedding of num_class_embeds (class_embed_type null)"
        )
    n = config.get("num_class_embeds")
    if n is None:
        if null_class is not None:
            raise InteropError(f"null_class={null_class} given, but {config_file} describes a network without class labels")
        return None, None
    recorded = config.get("_udm", {}).get("null_class") if isinstance(config.get("_udm"), dict) else None
    null = null_class if null_class is not None else recorded
    if null is None:
        return int(n), None
    if null != int(n) - 1:
        raise InteropError(f"null_class={null} must be the last label embedding, {int(n) - 1}, of {config_file}; udm keeps labels 0..K-1 real")
    return int(n) - 1, int(null)


@dataclass
class ForeignModel:
    """A model from another library as udm sees it: a Denoiser and what sampling it needs.

    ``sampler``, ``sampler_options`` and ``grid`` reproduce the model's own
    scheduler (``grid(steps)`` is its ``set_timesteps(steps)`` in udm time);
    any udm sampler and grid work on ``denoiser`` as well.
    """

    denoiser: Any
    shape: tuple[int, ...]
    num_classes: int | None
    scheduler: SchedulerMap
    source: Path
    description: dict[str, str]

    @property
    def process(self) -> Any:
        """The udm process the model was trained on."""
        return self.denoiser.process


def load_diffusers(
    path: str | Path,
    *,
    scheduler: str | Path | dict[str, Any] | None = None,
    trust_pickle: bool = False,
    null_class: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ForeignModel:
    """A diffusers model or pipeline folder as a :class:`ForeignModel` (module docstring).

    ``scheduler`` overrides the folder's scheduler config (a ``scheduler_config.json``
    path, its folder, or the dict); ``null_class`` names the label a class-conditional
    network was trained to read as "no label" (the last one; udm's exports record it),
    which classifier-free guidance needs; ``dtype``/``device`` place the network.
    """
    path = Path(path)
    where = layout(path)
    config_file = where.model_dir / "config.json"
    config = _json(config_file)
    cls_name = config.get("_class_name")
    if cls_name in REFUSED_CLASSES:
        raise InteropError(f"{config_file}: udm does not drive {cls_name} ({REFUSED_CLASSES[cls_name]}); supported: {', '.join(MODEL_CLASSES)}")
    if cls_name not in MODEL_CLASSES:
        raise InteropError(f"{config_file}: network class {cls_name!r} is not supported; supported: {', '.join(MODEL_CLASSES)}")
    sched_config, sched_source = _scheduler_config(scheduler, where)
    mapping = scheduler_map(sched_config)
    shape = _sample_shape(config, config_file)
    num_classes, null = _labels(config, config_file, null_class)
    state, weight_file = read_weights(where.model_dir, trust_pickle)
    diffusers = require_diffusers()
    model = getattr(diffusers, cls_name).from_config(config)
    _check_fits(model, state, weight_file, config_file)
    model.load_state_dict(state)
    # nn.Module.to, not diffusers' override, which logs a warning on every dtype cast (nothing is kept in float32 here)
    torch.nn.Module.to(model, device=device or "cpu", dtype=dtype).eval().requires_grad_(False)
    description = {"format": "diffusers", "model": cls_name, "weights": str(weight_file),
                   "scheduler": str(sched_config.get("_class_name")), "scheduler_config": sched_source}
    denoiser = denoiser_from(model, sched_config, integer_timesteps=config.get("time_embedding_type") == "learned", null_class=null)
    return ForeignModel(denoiser, shape, num_classes, mapping, path, description)


def _scheduler_config(scheduler: str | Path | dict[str, Any] | None, where: FolderLayout) -> tuple[dict[str, Any], str]:
    """The scheduler config to use and where it came from."""
    if isinstance(scheduler, dict):
        return scheduler, "given"
    if scheduler is not None:
        file = Path(scheduler)
        file = file / "scheduler_config.json" if file.is_dir() else file
        if not file.is_file():
            raise InteropError(f"scheduler config {file} does not exist; give a scheduler_config.json or the folder holding it")
        return _json(file), str(file)
    if where.scheduler_config is None:
        looked = ", ".join(str(p) for p in where.looked_in)
        raise InteropError(
            f"missing file: no scheduler config for {where.model_dir} (looked for {looked}); it says which process the model "
            "was trained on: give one with --scheduler PATH (scheduler=...)"
        )
    return _json(where.scheduler_config), str(where.scheduler_config)
