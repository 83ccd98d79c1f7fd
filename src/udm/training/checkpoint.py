"""Checkpoints that never half-exist and never unpickle (DESIGN: "Checkpoints are safetensors ... plus JSON").

A checkpoint is a directory ``step_0000100/`` holding one safetensors file per
group of tensors (``model``, ``ema``, ``optimizer``, ...) and ``state.json``
(config, step, RNG state, optimizer hyper-parameters, and the SHA-256 of every
tensor file). It is written under a temporary name, flushed to disk, and only
then renamed into place; the ``latest`` pointer is replaced the same way. A
process killed at any instant therefore leaves the previous checkpoint intact
and ``latest`` pointing at it (should ``latest`` ever name a folder that is
gone, the newest complete ``step_*`` is used). Loading reads JSON and safetensors only, checks
every hash, and turns any damage into a :class:`CheckpointError` that names the
file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import write_atomic

FORMAT = "udm-checkpoint/1"
LATEST = "latest"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with, or does not fit the model."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors[group][name]`` and the ``meta`` dict from state.json."""

    path: Path
    tensors: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def run_dir(self) -> Path:
        """The run folder this checkpoint belongs to (``RUN/checkpoints/step_*``), else the folder that holds it.

        Outputs derived from a checkpoint (``udm sample``'s folders, a reflow data set's name) go there.
        """
        return self.path.parent.parent if self.path.parent.name == "checkpoints" else self.path.parent


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
    keep: int | None = 3,
) -> Path:
    """Write ``directory/step_XXXXXXX`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {}
    for group, named in tensors.items():
        file = tmp / f"{group}.safetensors"
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in named.items()}, str(file))
        _fsync(file)
        files[group] = {"file": file.name, "sha256": _sha256(file)}
    state = {"format": FORMAT, **meta, "step": int(step), "files": files}
    write_atomic(tmp / "state.json", json.dumps(state, indent=1, sort_keys=True).encode())
    _fsync(tmp)
    if final.exists():
        old = directory / f".{name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync(directory)
    write_atomic(directory / LATEST, name.encode())
    _fsync(directory)
    if keep is not None:
        done = sorted(p for p in directory.glob("step_*") if p.is_dir())
        for stale in done[: max(0, len(done) - keep)]:
            if stale.name != name:
                shutil.rmtree(stale, ignore_errors=True)
    return final


def resolve(path: str | Path) -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint, a ``checkpoints/`` folder, or a run folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if (path / "state.json").is_file():
        return path
    for folder in (path, path / "checkpoints"):
        pointer = folder / LATEST
        if pointer.is_file():
            name = pointer.read_text().strip()
            if not name.startswith("step_") or "/" in name:
                raise CheckpointError(f"{pointer} is corrupt: it names {name!r}, not a step_* checkpoint")
            if (folder / name / "state.json").is_file():
                return folder / name
            complete = sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())
            if complete:
                return complete[-1]
            raise CheckpointError(f"{pointer} names {name!r}, which is missing, and no other complete checkpoint is in {folder}")
    raise CheckpointError(f"no checkpoint at {path}: expected state.json, or a 'latest' pointer in it or in its checkpoints/")


def load_checkpoint(path: str | Path, groups: tuple[str, ...] | None = None) -> Checkpoint:
    """Load a checkpoint (only ``groups`` if given), verifying format and hashes; never unpickles."""
    ckpt = resolve(path)
    state_file = ckpt / "state.json"
    try:
        meta = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_file} is unreadable or not valid JSON ({e}); the checkpoint is damaged") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{state_file} is not a {FORMAT} checkpoint (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for group, info in meta.get("files", {}).items():
        if groups is not None and group not in groups:
            continue
        file = ckpt / info["file"]
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        if _sha256(file) != info["sha256"]:
            raise CheckpointError(f"checkpoint file {file} does not match the SHA-256 in state.json: it was modified or truncated")
        try:
            tensors[group] = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {file} is not a readable safetensors file ({e})") from e
    if groups is not None:
        missing = [g for g in groups if g not in tensors]
        if missing:
            raise CheckpointError(f"checkpoint {ckpt} has no {', '.join(missing)} tensors")
    return Checkpoint(ckpt, tensors, meta)


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON (hyper-parameters)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, slots in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


def load_module_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict`` with a clear error when the checkpoint is from another architecture."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or bad:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", bad))
            if keys
        )
        raise CheckpointError(f"the {what} weights in the checkpoint do not fit this model ({detail}); was it trained with another config?")
    module.load_state_dict(tensors)
