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

``state.json`` is validated like a config: the keys a loader needs must be
there (a missing one is a CheckpointError naming it, never a KeyError), every
tensor file it names must be a plain file name inside the checkpoint folder
(no absolute paths, no ``..``), and its content is *sealed*: the SHA-256 of
each of its entries but the file table is stored in the header of every
tensor file, whose own SHA-256 state.json records. An edited state.json
(another config or process, step or RNG state put beside the same weights, an
entry removed) therefore no longer matches its tensor files and is refused,
naming the entries that changed. A kill leaves at most
temporary ``.step_*.tmp-PID`` / ``.step_*.old-PID`` folders behind;
:func:`remove_orphans` clears them (it runs when a trainer takes the run's lock).
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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import write_atomic
from ..errors import CheckpointError

FORMAT = "udm-checkpoint/1"
LATEST = "latest"
#: the safetensors header key holding the seal of state.json: JSON {entry: SHA-256} (see the module docstring)
SEAL_KEY = "udm_state_seal"
#: keys every state.json must have, with the type each must be
REQUIRED_STATE = {"format": str, "step": int, "files": dict}
#: names of a killed save's leftovers: ``.step_0000100.tmp-PID`` and ``.step_0000100.old-PID``
_TMP_MARK, _OLD_MARK = ".tmp-", ".old-"


class StateMeta(dict):
    """The ``state.json`` of a checkpoint: a dict whose missing keys raise CheckpointError naming the key and file.

    Code that reads ``ckpt.meta["data"]`` from a damaged or foreign checkpoint
    then fails with one clear line instead of a KeyError traceback.
    """

    source: str = "state.json"

    def __missing__(self, key: str) -> Any:
        raise CheckpointError(
            f"{self.source} has no {key!r} entry; the checkpoint is incomplete or from another program: use another checkpoint"
        )


def state_seal(state: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of each entry of ``state`` (the file table excluded) as canonical JSON: the seal stored in every tensor file."""
    content = json.loads(json.dumps({k: v for k, v in state.items() if k != "files"}))
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True, separators=(",", ":")).encode()).hexdigest() for k, v in content.items()}


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
        return self.field("config", kind=dict)

    def field(self, *keys: str, kind: type | tuple[type, ...] | None = None) -> Any:
        """``meta[k0][k1]...``, or a CheckpointError naming the dotted key when it is missing or not of type ``kind``."""
        value: Any = self.meta
        for i, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                name = ".".join(keys[: i + 1])
                raise CheckpointError(
                    f"{self.path / 'state.json'} has no {name!r} entry; the checkpoint is incomplete or from another program: "
                    "use another checkpoint"
                )
            value = value[key]
        if kind is not None and not isinstance(value, kind):
            raise CheckpointError(
                f"{self.path / 'state.json'}: {'.'.join(keys)!r} is a {type(value).__name__}, not what udm wrote; "
                "the checkpoint is damaged: use another checkpoint"
            )
        return value

    def group(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of group ``name``, or a CheckpointError saying the checkpoint has none."""
        if name not in self.tensors:
            raise CheckpointError(f"checkpoint {self.path} has no {name} tensors; it was saved by another config or program: use another checkpoint")
        return self.tensors[name]

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
    tmp = directory / f".{name}{_TMP_MARK}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {"format": FORMAT, **meta, "step": int(step)}
    seal = {SEAL_KEY: json.dumps(state_seal(state), sort_keys=True)}
    files = {}
    try:
        for group, named in tensors.items():
            file = tmp / f"{group}.safetensors"
            save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in named.items()}, str(file), metadata=seal)
            _fsync(file)
            files[group] = {"file": file.name, "sha256": _sha256(file)}
        state["files"] = files
        write_atomic(tmp / "state.json", json.dumps(state, indent=1, sort_keys=True).encode())
        _fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = directory / f".{name}{_OLD_MARK}{os.getpid()}"
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
            if not name.startswith("step_") or not _plain_name(name):
                raise CheckpointError(f"{pointer} is corrupt: it names {name!r}, not a step_* checkpoint")
            if (folder / name / "state.json").is_file():
                return folder / name
            complete = sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())
            if complete:
                return complete[-1]
            raise CheckpointError(f"{pointer} names {name!r}, which is missing, and no other complete checkpoint is in {folder}")
    raise CheckpointError(f"no checkpoint at {path}: expected state.json, or a 'latest' pointer in it or in its checkpoints/")


def _plain_name(name: str) -> bool:
    """Whether ``name`` is one plain file name (no folder part, not absolute, not ``.`` or ``..``)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and Path(name).name == name


def _validate_state(meta: Any, state_file: Path) -> StateMeta:
    """``state.json``'s content as a :class:`StateMeta`, its required keys and file table checked."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{state_file} is not a {FORMAT} checkpoint (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    for key, kind in REQUIRED_STATE.items():
        if key not in meta:
            raise CheckpointError(f"{state_file} has no {key!r} entry; the checkpoint is incomplete: use another checkpoint")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CheckpointError(f"{state_file}: {key!r} is {meta[key]!r}, not a {kind.__name__}; the checkpoint is damaged: use another checkpoint")
    if meta["step"] < 0:
        raise CheckpointError(f"{state_file}: 'step' is {meta['step']}, below 0; the checkpoint is damaged: use another checkpoint")
    folder = state_file.parent.resolve()
    for group, info in meta["files"].items():
        if not isinstance(info, dict) or not isinstance(info.get("file"), str) or not isinstance(info.get("sha256"), str):
            raise CheckpointError(f"{state_file}: files.{group} needs a 'file' name and its 'sha256'; the checkpoint is damaged: use another checkpoint")
        name = info["file"]
        if not _plain_name(name) or not (folder / name).resolve().is_relative_to(folder):
            raise CheckpointError(
                f"{state_file}: files.{group} names {name!r}, which is not a file inside the checkpoint folder; "
                "a checkpoint only reads its own files: use an unmodified checkpoint"
            )
    state = StateMeta(meta)
    state.source = str(state_file)
    return state


def _seal_problems(stored: str, seal: dict[str, str]) -> list[str]:
    """How the state.json whose seal is ``seal`` differs from the stored seal ``stored`` (empty when it matches)."""
    try:
        saved = json.loads(stored)
    except json.JSONDecodeError:
        return ["its seal is unreadable"]
    if not isinstance(saved, dict):
        return ["its seal is unreadable"]
    problems = [f"{k!r} was removed" for k in sorted(set(saved) - set(seal))]
    problems += [f"{k!r} was added" for k in sorted(set(seal) - set(saved))]
    problems += [f"{k!r} was changed" for k in sorted(set(seal) & set(saved)) if seal[k] != saved[k]]
    return problems


def _read_tensors(file: Path, seal: dict[str, str], state_file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, its header's seal checked against ``seal`` (absent in older checkpoints)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            stored = (f.metadata() or {}).get(SEAL_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {file} is not a readable safetensors file ({e})") from e
    problems = [] if stored is None else _seal_problems(stored, seal)
    if problems:
        raise CheckpointError(
            f"{state_file} was edited after the checkpoint was written ({', '.join(problems)}: it no longer matches the seal "
            f"in {file.name}); restore the original state.json or use another checkpoint"
        )
    return tensors


def load_checkpoint(path: str | Path, groups: tuple[str, ...] | None = None) -> Checkpoint:
    """Load a checkpoint (only ``groups`` if given), verifying format, keys, file names, hashes and the seal; never unpickles."""
    ckpt = resolve(path)
    state_file = ckpt / "state.json"
    try:
        raw = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_file} is unreadable or not valid JSON ({e}); the checkpoint is damaged") from e
    meta = _validate_state(raw, state_file)
    seal = state_seal(meta)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for group, info in meta["files"].items():
        if groups is not None and group not in groups:
            continue
        file = ckpt / info["file"]
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing")
        if _sha256(file) != info["sha256"]:
            raise CheckpointError(f"checkpoint file {file} does not match the SHA-256 in state.json: it was modified or truncated")
        tensors[group] = _read_tensors(file, seal, state_file)
    if groups is not None:
        missing = [g for g in groups if g not in tensors]
        if missing:
            raise CheckpointError(f"checkpoint {ckpt} has no {', '.join(missing)} tensors")
    return Checkpoint(ckpt, tensors, meta)


def remove_orphans(directory: str | Path) -> list[str]:
    """Clear what killed saves left in a checkpoints folder; the names removed or restored, for a message.

    ``.step_N.tmp-PID`` folders (a save that never completed) are deleted.
    ``.step_N.old-PID`` is the previous ``step_N`` moved aside while the same
    step was saved again: it is put back if the kill came before the new
    ``step_N`` was renamed into place, else deleted. Stray temporary files of
    the ``latest`` pointer are deleted. Call it only while holding the run's
    lock: a live save's temporary folder looks the same.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = []
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if name.startswith(".step_") and _OLD_MARK in name and entry.is_dir():
            final = directory / name[1:].split(_OLD_MARK)[0]
            if not final.exists() and (entry / "state.json").is_file():
                os.replace(entry, final)
                done.append(f"{name} (restored as {final.name})")
                continue
            shutil.rmtree(entry, ignore_errors=True)
            done.append(name)
        elif name.startswith(".step_") and _TMP_MARK in name and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(name)
        elif name.startswith(f".{LATEST}.") and name.endswith(".tmp") and entry.is_file():
            entry.unlink(missing_ok=True)
            done.append(name)
    if done:
        _fsync(directory)
    return done


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
    bad = sorted(
        f"{k} {list(tensors[k].shape)} in the checkpoint vs {list(own[k].shape)} in the model"
        for k in set(own) & set(tensors)
        if own[k].shape != tensors[k].shape
    )
    if missing or unexpected or bad:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", bad))
            if keys
        )
        raise CheckpointError(f"the {what} weights in the checkpoint do not fit this model ({detail}); was it trained with another config?")
    module.load_state_dict(tensors)
