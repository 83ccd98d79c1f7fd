"""Post-hoc EMA: any averaging width after training, from snapshots of a few (Karras et al. 2024, EDM2, Sec. 3 / App. C).

During training, :class:`PosthocEMA` keeps one :class:`~udm.training.ema.PowerEMA`
per width of ``train.posthoc_ema.sigma_rels`` and every ``every`` steps writes
all of them to ``RUN/posthoc_ema/snapshot_XXXXXXX.safetensors``. The average
of width gamma after t applied steps is exactly the integral of the profile
``p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on [0, t] against the
piecewise-constant weight trajectory (the discrete identity in
:class:`~udm.training.ema.PowerEMA`). Averages are therefore linear in their
profiles: if ``sum_i x_i p_i ~ p_r`` in L2, then ``sum_i x_i theta_i`` is the
average of profile p_r, with an error ``integral (sum_i x_i p_i - p_r) theta``.
:func:`solve_coefficients` finds x by least squares on the closed-form inner
products ``A_ij = <p_i, p_j>``, ``b_i = <p_i, p_r>`` (App. C.2);
:func:`reconstruct_posthoc` combines the snapshots (float64 accumulation,
float32 result) and :func:`write_posthoc` writes each result as a checkpoint
folder that ``udm sample`` and ``udm eval`` load like a run.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from ..atomic import check_writable, write_atomic
from ..config import SIGMA_REL_MAX
from ..errors import CheckpointError, ConfigError
from .checkpoint import Checkpoint, load_checkpoint, load_module_state, save_checkpoint
from .ema import PowerEMA, sigma_rel_to_gamma

#: the folder of a run that holds the snapshots (and, by default, the reconstructions)
SNAPSHOT_DIR = "posthoc_ema"
#: the format tag in every snapshot's header
SNAPSHOT_FORMAT = "udm-posthoc-ema/1"
#: the safetensors header key of a snapshot's JSON metadata (one key: safetensors writes several in a random order)
META_KEY = "udm_posthoc_ema"
#: the fewest snapshots (up to the target step) a reconstruction accepts
MIN_SNAPSHOTS = 2
_SNAPSHOT = re.compile(r"snapshot_(\d{7,})\.safetensors")
_REMEDY = "train with train.posthoc_ema: {sigma_rels: [...], every: N}"


def _tag(sigma_rel: float) -> str:
    """The prefix of one profile's tensors in a checkpoint group or snapshot: ``'0.05/'``."""
    return f"{float(sigma_rel)!r}/"


def format_sigma_rel(sigma_rel: float) -> str:
    """``0.1`` -> ``'0.100'``; a width that three decimals do not hold exactly keeps all its digits (folder names stay distinct)."""
    short = f"{sigma_rel:.3f}"
    return short if float(short) == float(sigma_rel) else repr(float(sigma_rel))


def check_sigma_rel(sigma_rel: float, what: str = "sigma_rel") -> float:
    """``sigma_rel`` as a float, or a ConfigError when it is not a width in (0, 1/sqrt(12)]."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0.0 < sigma_rel <= SIGMA_REL_MAX:
        raise ConfigError(
            f"{what} {sigma_rel!r} is out of range; give widths in (0, {SIGMA_REL_MAX:.4f}] "
            "(1/sqrt(12) is the uniform average of the run; EDM2's best lie near 0.05-0.2)"
        )
    return float(sigma_rel)


# --- the profiles and the least squares (App. C.2) ------------------------------------------------------------------
def profile_inner(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> np.ndarray:
    """<p_a, p_b>: the integral over [0, min(t_a, t_b)] of two power profiles' product (elementwise, broadcast, float64).

    With t_a <= t_b it is ``(gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) t_b) * (t_a / t_b)^gamma_b``
    (EDM2, App. C.2): written with the ratio t_a / t_b <= 1, so no power of a large t is formed.
    """
    t_a, g_a, t_b, g_b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b)))
    a_first = t_a <= t_b
    t_max = np.where(a_first, t_b, t_a)
    ratio = np.where(a_first, t_a / t_b, t_b / t_a)
    gamma_long = np.where(a_first, g_b, g_a)
    return (g_a + 1.0) * (g_b + 1.0) / ((g_a + g_b + 1.0) * t_max) * ratio**gamma_long


def solve_coefficients(
    ts: Sequence[float], gammas: Sequence[float], t_r: float, gamma_r: float, *, sum_to_one: bool = True
) -> tuple[np.ndarray, float]:
    """(x, residual): coefficients with ``sum_i x_i p_{t_i, gamma_i} ~ p_{t_r, gamma_r}`` in L2, and the fit's relative error.

    Least squares on the Gram system ``A x = b``, ``A_ij = <p_i, p_j>``,
    ``b_i = <p_i, p_r>`` (EDM2, App. C.2; ``lstsq``, which copes with the near
    collinear profiles of many snapshots), with the times divided by t_r so the
    entries do not scale with the run's length. ``residual`` is
    ``||sum_i x_i p_i - p_r|| / ||p_r||`` (closed form from A, b and <p_r, p_r>).

    ``sum_to_one`` (default) adds the constraint ``sum_i x_i = 1`` (a KKT
    system): every profile integrates to 1, so the constrained fit reproduces
    a weight that never moved exactly, whereas the free fit scales every
    weight by ``sum_i x_i`` (1 + 3.4e-5 with 20 snapshots per width). On the
    training runs of tests/test_posthoc_ema.py both fits have the same profile
    residual, and the constrained one a weight error 7-20x smaller with up to
    40 snapshots per width (2.1e-7 vs 2.2e-6 at 40), the same with 80 or more;
    so it is the default.
    """
    ts = np.asarray(ts, dtype=np.float64) / t_r
    gammas = np.asarray(gammas, dtype=np.float64)
    a = profile_inner(ts[:, None], gammas[:, None], ts[None, :], gammas[None, :])
    b = profile_inner(ts, gammas, 1.0, gamma_r)
    n = len(ts)
    if sum_to_one:
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = a
        kkt[:n, n] = kkt[n, :n] = 1.0
        x = np.linalg.lstsq(kkt, np.append(b, 1.0), rcond=None)[0][:n]
    else:
        x = np.linalg.lstsq(a, b, rcond=None)[0]
    rr = float(profile_inner(1.0, gamma_r, 1.0, gamma_r))
    residual = math.sqrt(max(float(x @ a @ x - 2.0 * x @ b + rr), 0.0) / rr)
    return x, residual


# --- training: the tracked averages and their snapshots ---------------------------------------------------------------
def snapshot_path(run_dir: str | Path, step: int) -> Path:
    """``RUN/posthoc_ema/snapshot_XXXXXXX.safetensors``."""
    return Path(run_dir) / SNAPSHOT_DIR / f"snapshot_{step:07d}.safetensors"


class PosthocEMA:
    """The power-function EMAs a run tracks (``train.posthoc_ema``): their updates, checkpoint state and snapshots.

    Every profile is updated after every applied optimizer step (a skipped
    step is no step: t counts updates). Checkpoints hold :meth:`tensors` (group
    ``power_ema``, keys prefixed ``'<sigma_rel>/'``) and :meth:`state` (JSON),
    so a resumed run continues bitwise; snapshots hold the same tensors and
    state plus the trainer's step and the buffer names (buffers are copied, not
    averaged, by every EMA: a reconstruction takes them from its target step).
    """

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float]) -> None:
        self.emas = [PowerEMA(model, s) for s in sigma_rels]
        saved = self.emas[0].module.state_dict()
        self.buffers = [name for name, _ in self.emas[0].module.named_buffers() if name in saved]

    @property
    def sigma_rels(self) -> list[float]:
        return [e.sigma_rel for e in self.emas]

    @property
    def gammas(self) -> list[float]:
        return [e.gamma for e in self.emas]

    @property
    def updates(self) -> int:
        """The applied optimizer steps averaged so far: the profiles' t."""
        return self.emas[0].updates

    def update(self, model: nn.Module) -> None:
        """One applied optimizer step: every profile's ``theta_ema <- beta_t theta_ema + (1 - beta_t) theta``."""
        for ema in self.emas:
            ema.update(model)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every profile's weights, keyed ``'<sigma_rel>/<name>'``."""
        return {_tag(e.sigma_rel) + k: v for e in self.emas for k, v in e.module.state_dict().items()}

    def state(self) -> dict[str, Any]:
        """What checkpoints and snapshots record (JSON): the widths, their exponents and t."""
        return {"sigma_rels": self.sigma_rels, "gammas": self.gammas, "updates": self.updates}

    def load(self, ckpt: Checkpoint) -> None:
        """Restore the profiles from a checkpoint's ``power_ema`` group and ``posthoc_ema`` record; damage is a CheckpointError."""
        tensors = ckpt.group("power_ema")
        updates = ckpt.field("posthoc_ema", "updates", kind=int)
        if ckpt.field("posthoc_ema", "sigma_rels", kind=list) != self.sigma_rels or updates < 0:
            raise CheckpointError(
                f"{ckpt.path / 'state.json'}: 'posthoc_ema' does not match the config's train.posthoc_ema; the checkpoint is damaged: "
                "use another checkpoint"
            )
        for ema in self.emas:
            prefix = _tag(ema.sigma_rel)
            mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            load_module_state(ema.module, mine, f"post-hoc EMA (sigma_rel {ema.sigma_rel:g})")
            ema.load_state({"updates": updates, "init_share": 0.0 if updates else 1.0})

    def write_snapshot(self, run_dir: str | Path, step: int) -> Path:
        """Write every profile at trainer step ``step`` to :func:`snapshot_path` atomically (temporary file, fsync, rename)."""
        meta = {"format": SNAPSHOT_FORMAT, "step": int(step), **self.state(), "buffers": self.buffers}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
        return write_atomic(snapshot_path(run_dir, step), save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)}))


def remove_stale_snapshots(run_dir: str | Path, step: int) -> list[str]:
    """Delete the snapshots above trainer step ``step`` (a resumed run's checkpoint step; 0 for a new run); their names.

    They were written after the checkpoint a run resumes from, by a process
    that was stopped before its next checkpoint; the deterministic rerun
    writes them again, bitwise the same.
    """
    folder = Path(run_dir) / SNAPSHOT_DIR
    removed = []
    for path in sorted(folder.glob("snapshot_*.safetensors")) if folder.is_dir() else []:
        match = _SNAPSHOT.fullmatch(path.name)
        if match and int(match.group(1)) > step:
            path.unlink()
            removed.append(path.name)
    return removed


# --- after training: reading snapshots and reconstructing ---------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One snapshot file's header: the trainer step, the profiles' t (``updates``), widths, exponents and buffer names."""

    path: Path
    step: int
    updates: int
    sigma_rels: tuple[float, ...]
    gammas: tuple[float, ...]
    buffers: tuple[str, ...]


def read_snapshot(path: str | Path) -> Snapshot:
    """The header of one snapshot (its tensors are not read); a damaged or foreign file is a CheckpointError naming it."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        meta = json.loads(raw) if raw is not None else None
        if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a {SNAPSHOT_FORMAT} snapshot")
        snap = Snapshot(path, int(meta["step"]), int(meta["updates"]), tuple(map(float, meta["sigma_rels"])),
                        tuple(map(float, meta["gammas"])), tuple(map(str, meta.get("buffers", []))))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"post-hoc EMA snapshot {path} is unreadable ({e}); delete it and resume the run to rewrite it") from e
    if len(snap.gammas) != len(snap.sigma_rels) or snap.updates < 1:
        raise CheckpointError(f"post-hoc EMA snapshot {path} has an inconsistent header; delete it and resume the run to rewrite it")
    return snap


def list_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """The snapshots of a run, by step (headers only); they must all track the same widths."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    paths = sorted(p for p in folder.glob("snapshot_*.safetensors") if _SNAPSHOT.fullmatch(p.name)) if folder.is_dir() else []
    snaps = [read_snapshot(p) for p in paths]
    for snap in snaps[1:]:
        if snap.sigma_rels != snaps[0].sigma_rels:
            raise CheckpointError(
                f"post-hoc EMA snapshots {snaps[0].path.name} and {snap.path.name} track different widths "
                f"({list(snaps[0].sigma_rels)} vs {list(snap.sigma_rels)}); they come from two runs: keep one run's snapshots"
            )
    return snaps


@dataclass
class Reconstruction:
    """A post-hoc EMA of width ``sigma_rel`` at trainer step ``step`` (the profile's t = ``t`` applied steps).

    ``coefficients[i][j]`` multiplies profile j of snapshot ``snapshot_steps[i]``;
    ``residual`` is the profile fit's relative L2 error (:func:`solve_coefficients`);
    ``state`` is the averaged state dict (float32).
    """

    sigma_rel: float
    gamma: float
    step: int
    t: int
    snapshot_steps: list[int]
    coefficients: list[list[float]]
    residual: float
    state: dict[str, torch.Tensor]

    def record(self) -> dict[str, Any]:
        """What the written checkpoint's ``state.json`` says of this reconstruction (``posthoc_ema``)."""
        return {"sigma_rel": self.sigma_rel, "gamma": self.gamma, "step": self.step, "t": self.t,
                "snapshot_steps": self.snapshot_steps, "coefficients": self.coefficients, "residual": self.residual}


def _used_snapshots(run_dir: Path, step: int | None) -> list[Snapshot]:
    """The snapshots up to the target step (default: the last one), checked to be enough; every refusal a ConfigError."""
    if not run_dir.is_dir():
        raise ConfigError(f"run {run_dir} does not exist; give the folder of a run trained with train.posthoc_ema")
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise ConfigError(f"run {run_dir} has no post-hoc EMA snapshots; {_REMEDY}")
    steps = [s.step for s in snaps]
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ConfigError(
            f"step {step} of run {run_dir} has no post-hoc EMA snapshot ({len(steps)} snapshots at steps {steps[0]}..{steps[-1]}); "
            "choose the step of a snapshot, or leave it out for the last one"
        )
    used = [s for s in snaps if s.step <= step]
    if len(used) < MIN_SNAPSHOTS:
        raise ConfigError(
            f"run {run_dir} has {len(used)} post-hoc EMA snapshot(s) up to step {step}; a reconstruction needs at least "
            f"{MIN_SNAPSHOTS}: choose a later step, train longer, or {_REMEDY} with a smaller N"
        )
    return used


def reconstruct_posthoc(
    run_dir: str | Path, sigma_rels: Sequence[float], step: int | None = None, *, sum_to_one: bool = True
) -> dict[float, Reconstruction]:
    """The post-hoc EMA of each width in ``sigma_rels`` at trainer step ``step`` (a snapshot's; default the last one).

    Uses every snapshot up to ``step`` (EDM2, App. C.2): coefficients from
    :func:`solve_coefficients` with each snapshot's t (applied steps) and
    gamma, then ``theta_r = sum x_i theta_i`` accumulated in float64, one
    snapshot file at a time, and returned in float32. Buffers are the target
    snapshot's. All inputs are checked before any tensor is read: a run without
    snapshots, a width outside (0, 1/sqrt(12)], a step without a snapshot or
    fewer than :data:`MIN_SNAPSHOTS` snapshots is a ConfigError.
    """
    run_dir = Path(run_dir)
    widths = list(dict.fromkeys(check_sigma_rel(s) for s in sigma_rels))
    if not widths:
        raise ConfigError(f"no sigma_rel to reconstruct; give at least one width in (0, {SIGMA_REL_MAX:.4f}]")
    used = _used_snapshots(run_dir, step)
    target = used[-1]
    ts = np.array([s.updates for s in used for _ in s.sigma_rels], dtype=np.float64)
    gammas = np.array([g for s in used for g in s.gammas])
    profiles = len(target.sigma_rels)
    solved = {w: solve_coefficients(ts, gammas, target.updates, sigma_rel_to_gamma(w), sum_to_one=sum_to_one) for w in widths}
    acc: dict[float, dict[str, torch.Tensor]] = {}
    buffers: dict[str, torch.Tensor] = {}
    for i, snap in enumerate(used):
        tensors = _load_snapshot_tensors(snap)
        for j, sigma_rel in enumerate(snap.sigma_rels):
            prefix = _tag(sigma_rel)
            mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            names = [k for k in mine if k not in snap.buffers]
            weights = [mine[k].double() for k in names]
            for w, (x, _) in solved.items():
                sums = acc.setdefault(w, {k: torch.zeros_like(v) for k, v in zip(names, weights)})
                if sums.keys() != set(names) or any(sums[k].shape != v.shape for k, v in zip(names, weights)):
                    raise CheckpointError(f"post-hoc EMA snapshot {snap.path} holds other weights than {used[0].path.name}; "
                                          "its run's snapshots do not fit together: delete the odd one")
                torch._foreach_add_([sums[k] for k in names], weights, alpha=float(x[i * profiles + j]))
            if snap is target and j == 0:
                buffers = {k: mine[k] for k in snap.buffers if k in mine}
    return {
        w: Reconstruction(
            sigma_rel=w, gamma=sigma_rel_to_gamma(w), step=target.step, t=target.updates, snapshot_steps=[s.step for s in used],
            coefficients=x.reshape(len(used), profiles).tolist(), residual=residual,
            state={**{k: v.float() for k, v in acc[w].items()}, **buffers},
        )
        for w, (x, residual) in solved.items()
    }


def _load_snapshot_tensors(snap: Snapshot) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(snap.path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"post-hoc EMA snapshot {snap.path} is unreadable ({e}); delete it and resume the run to rewrite it") from e


def _source_checkpoint(run_dir: Path, step: int) -> Checkpoint:
    """The run's checkpoint at ``step`` if it is kept, else its latest: the raw weights, config and data description written beside a reconstruction."""
    at_step = run_dir / "checkpoints" / f"step_{step:07d}"
    return load_checkpoint(at_step if (at_step / "state.json").is_file() else run_dir)


def write_posthoc(
    run_dir: str | Path, reconstructions: Mapping[float, Reconstruction], out: str | Path | None = None, *, keep: int | None = None
) -> dict[float, Path]:
    """Write each reconstruction as ``OUT/sigma_rel_<width>/step_XXXXXXX`` (OUT defaults to ``RUN/posthoc_ema``); the paths.

    Each is a checkpoint (:func:`~udm.training.checkpoint.save_checkpoint`,
    with its own ``latest``) that ``udm sample`` / ``udm eval`` /
    ``Experiment.from_run`` load like a run: group ``ema`` is the
    reconstruction, ``model`` the run's raw weights from its checkpoint at the
    same step if kept, else its latest; ``state.json`` copies that
    checkpoint's config and data description and adds the ``posthoc_ema``
    record (width, gamma, snapshot steps, coefficients, residual, where the raw
    weights come from). Everything is loaded and checked before the first folder is written.
    """
    run_dir = Path(run_dir)
    root = check_writable(Path(out) if out is not None else run_dir / SNAPSHOT_DIR, "post-hoc EMA output folder", folder=True)
    sources: dict[int, Checkpoint] = {}
    plans = []
    for sigma_rel, rec in reconstructions.items():
        if rec.step not in sources:
            sources[rec.step] = _source_checkpoint(run_dir, rec.step)
        src = sources[rec.step]
        raw = src.group("model")
        if raw.keys() != rec.state.keys() or any(raw[k].shape != rec.state[k].shape for k in raw):
            raise CheckpointError(f"the post-hoc EMA snapshots of {run_dir} do not fit the weights of {src.path}; they come from another run")
        record = {**rec.record(), "raw_weights": {"checkpoint": str(src.path), "step": src.step}}
        meta = {
            "config": src.config,
            "data": src.meta["data"],
            "versions": src.meta.get("versions"),
            "ema": {"decay": None, "half_life": None, "rampup_ratio": None, "updates": rec.t, "init_share": 0.0, "warmup_note": None},
            "posthoc_ema": record,
        }
        plans.append((sigma_rel, root / f"sigma_rel_{format_sigma_rel(sigma_rel)}", rec.step, {"model": raw, "ema": rec.state}, meta))
    return {w: save_checkpoint(folder, step, groups, meta, keep=keep) for w, folder, step, groups, meta in plans}
