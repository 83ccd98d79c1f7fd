"""The training loop: AdamW, warm-up, clipping, EMA, bf16, compile, accumulation, DDP, exact resume.

Exact resume rests on one rule: everything random in step k (the batch, the
times, the noise, dropout) is drawn from generators seeded by (seed, k), and
the learning rate is a function of k. A checkpoint after k steps (weights, EMA,
AdamW moments, time-sampler state) therefore determines steps k+1, k+2, ...
exactly, and on the CPU "N steps, stop, resume, N steps" is bitwise equal to
2N straight steps. Every rank draws the global batch's times and noise and
keeps its slice, so the gradient does not depend on the number of processes.

No fault loses work or leaves a run half-written:

- Everything is checked before the first write into the run folder: the
  config, the data, a dry run of the network (:class:`Experiment`) and of the
  loss, and with ``resume`` the checkpoint, its config, the step count
  (``train.steps`` must lie above the checkpoint's step) and the log.
- One trainer per run folder: the main rank holds ``RUN/.lock``
  (:mod:`udm.training.runlock`) from before its first write until
  :meth:`Trainer.train` returns; a second trainer is refused with
  RunLockedError naming the holder. A killed run's stale lock is taken over,
  and its unfinished checkpoint folders are cleared, at the next start.
- SIGINT and SIGTERM ask for a stop: the loop finishes its step, saves a
  checkpoint and raises :class:`TrainingInterrupted` (exit status 130 or 143)
  naming the checkpoint that is complete. Further signals meanwhile are only
  recorded, so none can interrupt a save; the previous handlers are restored.
- A non-finite loss or gradient norm: ``train.on_nonfinite: stop`` (default)
  raises DivergedError naming the step, and the weights it spoiled are never
  saved; ``skip`` drops that optimizer step (no update, no EMA, no time-sampler
  feedback) and counts it in the log's ``skipped`` column and the summary;
  :data:`MAX_CONSECUTIVE_SKIPS` skipped steps in a row are a divergence too.

With ``train.posthoc_ema`` the trainer also tracks power-function EMAs
(:mod:`udm.training.posthoc`): their state is in every checkpoint, and every
``every`` steps a snapshot goes to ``RUN/posthoc_ema/``. Snapshots above the
step a run resumes from are deleted (the rerun writes them again, bitwise).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..atomic import write_atomic
from ..config import dump
from ..errors import CheckpointError, ConfigError, DivergedError, TrainingInterrupted, UdmError
from ..samplers import sample
from . import distributed
from .checkpoint import (
    LATEST,
    Checkpoint,
    flatten_optimizer,
    load_checkpoint,
    load_module_state,
    remove_orphans,
    save_checkpoint,
    unflatten_optimizer,
)
from .ema import EMA
from .experiment import Experiment, describe_data
from .posthoc import SNAPSHOT_DIR, PosthocEMA, remove_stale_snapshots
from .runlock import RunLock
from .samples import save_samples

#: train keys that may change between a run and its resumption (they do not change the math of a finite step).
RESUMABLE_KEYS = ("steps", "log_every", "ckpt_every", "keep_checkpoints", "sample_every", "device", "compile", "on_nonfinite")
#: values of ``train.on_nonfinite``: what a non-finite loss or gradient norm does
NONFINITE_POLICIES = ("stop", "skip")
#: with ``train.on_nonfinite: skip``, this many skipped steps in a row end training with DivergedError
MAX_CONSECUTIVE_SKIPS = 100
#: the signals that ask a running training loop to save and stop
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: in stop mode, the finiteness of at most this many steps waits on the device before one host sync checks them
_PENDING_LIMIT = 256


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for stream ``stream`` of step ``step`` (independent across streams and steps)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (resolved) configs."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that a resumed run must share with its checkpoint."""
    out = {k: v for k, v in config.items() if k not in ("sample", "name")}
    train = config.get("train")
    out["train"] = {k: v for k, v in train.items() if k not in RESUMABLE_KEYS} if isinstance(train, dict) else train
    return out


class StopRequests:
    """While active (a ``with`` block in the main thread), SIGINT and SIGTERM only record a request to stop.

    The training loop polls :attr:`signum` at step boundaries. Because the
    handler never raises, no signal can break a checkpoint save half-way: a
    second signal during the save is recorded and the save completes first.
    The previous handlers are restored on exit. Outside the main thread
    Python delivers no signals to the loop, and nothing is installed.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


class RunLog:
    """Per-step metrics as CSV or JSON lines; the file is rewritten (atomically) with ``rows``, then appended to."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "steps_per_s", "samples_per_s", "elapsed_s", "skipped")

    def __init__(self, path: Path, fmt: str, rows: list[dict[str, Any]] | None = None) -> None:
        self.path, self.fmt = path, fmt
        self._rewrite([self._complete(r) for r in rows or []])

    @classmethod
    def _complete(cls, row: dict[str, Any]) -> dict[str, Any]:
        """A row with integer step and every field (``skipped`` is 0 in logs written before it existed)."""
        out = {k: row[k] for k in cls.FIELDS if k in row}
        out.setdefault("skipped", 0)
        out["step"], out["skipped"] = int(out["step"]), int(out["skipped"])
        return out

    def _encode(self, rows: list[dict[str, Any]]) -> str:
        if self.fmt == "jsonl":
            return "".join(json.dumps(r) + "\n" for r in rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.FIELDS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        write_atomic(self.path, self._encode(rows).encode())

    def append(self, row: dict[str, Any]) -> None:
        text = self._encode([row])
        if self.fmt == "csv":
            text = text.split("\n", 1)[1]
        with open(self.path, "a") as f:
            f.write(text)


def parse_log(path: str | Path) -> tuple[list[dict[str, float]], int]:
    """(well-formed rows of a run log as dicts of floats, number of malformed rows skipped).

    A row is malformed when it is not valid CSV / JSON, lacks a field of the
    header, or holds a value that is not a number (e.g. the last line of a
    log whose writer was killed mid-line).
    """
    path = Path(path)
    text = path.read_text(errors="replace")
    rows: list[dict[str, float]] = []
    bad = 0
    if path.suffix == ".jsonl":
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                parsed = {str(k): float(v) for k, v in row.items()} if isinstance(row, dict) else None
            except (json.JSONDecodeError, TypeError, ValueError):
                parsed = None
            if parsed is None or "step" not in parsed or not math.isfinite(parsed["step"]):
                bad += 1
            else:
                rows.append(parsed)
        return rows, bad
    lines = text.splitlines()
    if not lines:
        return [], 0
    header = next(csv.reader(lines[:1]), [])
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            record = next(csv.reader([line]))
            if len(record) != len(header):
                raise ValueError(record)
            parsed = {k: float(v) for k, v in zip(header, record)}
            if not math.isfinite(parsed.get("step", math.nan)):
                raise ValueError(record)
        except (ValueError, csv.Error):
            bad += 1
            continue
        rows.append(parsed)
    return rows, bad


def read_log(path: str | Path) -> list[dict[str, float]]:
    """The well-formed rows of a run log (CSV or JSON lines) as dicts of floats (see :func:`parse_log`)."""
    return parse_log(path)[0]


def _note(message: str) -> None:
    """A one-line note on stderr (what udm did on the user's behalf)."""
    print(f"udm: {message}", file=sys.stderr)


class Trainer:
    """Train an :class:`Experiment` (or the one a validated config describes), writing everything under ``out_dir``.

    ``out_dir`` receives ``config.yaml``, ``checkpoints/step_*/`` (see
    :mod:`udm.training.checkpoint`), ``log.csv`` (or ``log.jsonl``), when
    ``train.sample_every`` > 0 ``samples/step_*.png``, with ``train.posthoc_ema``
    ``posthoc_ema/snapshot_*.safetensors``, and while training the lock
    ``.lock``. Nothing is written until every input has been checked (module
    docstring).

    With ``resume``, ``train.steps`` must be above the checkpoint's step: a
    lower value is a ConfigError, and so is an equal one (the run is complete)
    unless ``reuse_complete``, which loads a complete run as it is, writing
    nothing (for callers that reuse finished runs, like the demo); then
    :attr:`complete` is True and :meth:`train` returns at once.
    """

    def __init__(
        self,
        experiment: Experiment | dict[str, Any],
        out_dir: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        dist_info: distributed.DistInfo | None = None,
        reuse_complete: bool = False,
    ) -> None:
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        device = (experiment.config if isinstance(experiment, Experiment) else experiment)["train"]["device"]
        self.info = dist_info or distributed.init(device)
        self.device = self.info.device
        self.progress = progress and self.info.is_main
        self.complete = False
        self._lock: RunLock | None = None
        self._locked = False  # the same on every rank: whether the main rank holds the run's lock
        self._opened = False  # whether config.yaml and the log have been written
        try:
            self._setup(experiment, resume, reuse_complete)
        except BaseException:
            self._release()
            raise

    def _setup(self, experiment: Experiment | dict[str, Any], resume: bool, reuse_complete: bool) -> None:
        """Everything ``__init__`` does: lock an existing run folder, check every input, then write (module docstring)."""
        # a folder that already exists is locked before anything in it is read; a new one only once all is checked
        self._on_main(lambda: self._take_lock() if self.out.is_dir() else None)
        if not resume and (self.ckpt_dir / LATEST).exists():
            raise ConfigError(f"{self.out} already holds a training run; pass --resume to continue it or choose another --out")
        if not isinstance(experiment, Experiment):
            torch.manual_seed(experiment["seed"])  # the network's initial weights follow the config's seed
            experiment = Experiment.from_config(experiment)
        exp = experiment
        self.config, self.exp = exp.config, exp
        self.tc = self.config["train"]
        if self.tc["batch_size"] % (self.info.world_size * self.tc["grad_accum"]):
            raise ConfigError(
                f"train.batch_size ({self.tc['batch_size']}) must be divisible by the number of processes "
                f"({self.info.world_size}) times train.grad_accum ({self.tc['grad_accum']}); change one of them"
            )
        self.on_nonfinite = self.tc.get("on_nonfinite", "stop")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"config key 'train.on_nonfinite' is {self.on_nonfinite!r}; allowed values: {', '.join(NONFINITE_POLICIES)}")
        self.net = exp.net.to(self.device)
        self.loss = exp.loss
        self.train_x = exp.train_data.x.to(self.device)
        # paired noise (reflow couplings, udm.training.reflow): row i is the eps of sample i
        noise = exp.train_data.noise
        self.train_noise = None if noise is None else noise.to(self.device, self.train_x.dtype)
        self.conditional = exp.conditional
        self.drop_labels = (
            self.conditional and exp.objective.labels_condition and self.tc["cond_dropout"] > 0 and self.net.null_class is not None
        )
        self.train_y = exp.train_data.y.to(self.device) if exp.train_data.y is not None else None
        model: nn.Module = self.net
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.ddp = model
        forward_net = torch.compile(model) if self.tc["compile"] else model
        self.model = exp.model(self.net, forward=forward_net)
        self.process = self.model.process
        self._dry_run_loss()
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=self.tc["lr"],
            betas=tuple(self.tc["betas"]),
            eps=self.tc["adam_eps"],
            weight_decay=self.tc["weight_decay"],
        )
        ema_cfg = self.tc["ema"]
        self.ema = EMA(self.net, ema_cfg.get("decay"), ema_cfg.get("half_life"), ema_cfg.get("rampup_ratio")) if ema_cfg else None
        posthoc_cfg = self.tc.get("posthoc_ema")
        self.posthoc = PosthocEMA(self.net, posthoc_cfg["sigma_rels"]) if posthoc_cfg else None
        self.step = 0
        self.recent_loss: float | None = None
        self.skipped = 0  # optimizer steps skipped for a non-finite loss (train.on_nonfinite: skip), over the whole run
        self.last_step_skipped = False
        self._consecutive_skips = 0
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, grad norm) not yet checked
        self._last_ckpt: Path | None = None  # the newest complete checkpoint of this run (main rank)
        self._saved_step: int | None = None  # its step (every rank)
        log_rows: list[dict[str, Any]] = []
        if resume:
            self._resume()
            steps = self.tc["steps"]
            if self.step > steps:
                raise ConfigError(
                    f"{self.out} is already at step {self.step}; --steps (train.steps = {steps}) must be above it to continue"
                )
            if self.step == steps:
                if not reuse_complete:
                    raise ConfigError(
                        f"{self.out} is complete: it is already at step {self.step} = train.steps; "
                        "pass a larger --steps to train it further"
                    )
                self.complete = True
                self._release()
                return
            if self.info.is_main:
                log_rows = self._resumed_log_rows()
        elif self.tc["init_from"]:
            self._init_from(self.tc["init_from"])
        self._on_main(lambda: self._open(log_rows))
        self._locked = True

    # --- the run folder: lock, leftovers, first writes ----------------------------------------------
    def _on_main(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the main rank; when it fails, every rank raises (none waits at a collective forever)."""
        error: BaseException | None = None
        if self.info.is_main:
            try:
                action()
            except Exception as e:
                error = e
        if self.info.enabled:
            failed = torch.tensor(0.0 if error is None else 1.0, device=self.device)
            if float(distributed.mean_across(failed, self.info)) > 0 and error is None:
                raise UdmError(f"the main process (rank 0) could not start the run in {self.out}; see its error")
        if error is not None:
            raise error

    def _take_lock(self) -> None:
        """Lock the run folder (main rank) and clear what a killed run left unfinished in it, with a note."""
        if self._lock is not None and self._lock.held:
            return
        self._lock = RunLock(self.out).acquire()
        left = remove_orphans(self.ckpt_dir)
        temporary = [tmp for name in ("config.yaml", "log.csv", "log.jsonl") for tmp in self.out.glob(f".{name}.*.tmp")]
        for tmp in temporary + sorted((self.out / SNAPSHOT_DIR).glob(".snapshot_*.tmp")):
            tmp.unlink(missing_ok=True)
            left.append(tmp.name)
        if left:
            _note(f"{self.out}: removed what an interrupted run left unfinished: {', '.join(left)}")

    def _open(self, log_rows: list[dict[str, Any]]) -> None:
        """Lock (if not yet), then write config.yaml and the log: the first writes of this trainer (main rank)."""
        self._take_lock()
        if self._saved_step is None and (self.ckpt_dir / LATEST).exists():
            raise ConfigError(f"{self.out} already holds a training run (another process started it meanwhile); "
                              "pass --resume to continue it or choose another --out")
        write_atomic(self.out / "config.yaml", dump(self.config).encode())
        stale = remove_stale_snapshots(self.out, self._saved_step or 0)
        if stale:
            _note(f"{self.out / SNAPSHOT_DIR}: removed {len(stale)} post-hoc EMA snapshot(s) after step {self._saved_step or 0}, "
                  f"the checkpoint's ({stale[0]}..{stale[-1]}); training writes them again")
        self.log = RunLog(self.out / f"log.{self.tc['log_format']}", self.tc["log_format"], log_rows)
        self._opened = True

    def _retake(self) -> None:
        """Lock again for another :meth:`train` call (main rank), refusing a run another process trained meanwhile."""
        self._take_lock()
        newest = None
        if (self.ckpt_dir / LATEST).exists():
            try:
                newest = load_checkpoint(self.ckpt_dir, groups=()).step
            except CheckpointError:
                newest = None
        if newest is not None and newest != self._saved_step:
            raise ConfigError(
                f"{self.out} was trained by another process since this trainer last saved (it is now at step {newest}); "
                "resume it with a new trainer (--resume)"
            )
        if not self._opened:
            self._open(self._resumed_log_rows())

    def _release(self) -> None:
        """Give the run folder's lock back (idempotent; every rank calls it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self._locked = False

    def close(self) -> None:
        """Release the run's lock; for a trainer that will not :meth:`train` (training releases it by itself)."""
        self._release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resumed_log_rows(self) -> list[dict[str, Any]]:
        """The log rows a resumed run keeps: well-formed ones up to the checkpoint's step (read-only; notes what it drops)."""
        path = self.out / f"log.{self.tc['log_format']}"
        if not path.exists():
            return []
        rows, malformed = parse_log(path)
        kept = [r for r in rows if r["step"] <= self.step]
        dropped = []
        if malformed:
            dropped.append(f"{malformed} malformed row(s)")
        if len(kept) < len(rows):
            dropped.append(f"{len(rows) - len(kept)} row(s) after step {self.step}, the checkpoint's")
        if dropped:
            _note(f"{path}: dropping {' and '.join(dropped)}")
        return kept

    def _dry_run_loss(self) -> None:
        """The training loss on one micro-batch, without gradients and with the RNG untouched.

        Experiment's dry run checks the network; this checks the objective on
        top of it, so a loss that cannot take this data fails before the run
        folder is written. Uses the plain network (no DDP, no compile).
        """
        per_rank = self.tc["batch_size"] // self.info.world_size
        n = max(1, min(per_rank // self.tc["grad_accum"], len(self.train_x)))
        x0 = self.train_x[:n]
        model = self.exp.model(self.net)
        was_training = self.net.training
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                gen = torch.Generator(device=self.device).manual_seed(0)
                t, w, eps = self.loss.draw(self.process, x0, gen)
                if self.train_noise is not None:
                    eps = self.train_noise[:n]
                cond = self.train_y[:n] if self.conditional else None
                self.net.eval()
                self.loss(model, x0, cond, t=t, w=w, eps=eps)
        except UdmError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ConfigError(
                f"the {self.exp.objective.name} loss cannot be computed on data {self.config['data']['name']!r} with network "
                f"{self.config['network']['name']!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                "fix the config's loss, prediction or network section"
            ) from e
        finally:
            self.net.train(was_training)

    # --- the pieces of one step -------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then constant or cosine decay to ``min_lr``."""
        lr, warm = self.tc["lr"], self.tc["warmup_steps"]
        if warm and step < warm:
            return lr * (step + 1) / warm
        if self.tc["lr_schedule"] == "cosine":
            span = max(1, self.tc["steps"] - warm)
            frac = min(1.0, (step - warm) / span)
            return self.tc["min_lr"] + (lr - self.tc["min_lr"]) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return lr

    def batch_indices(self, step: int) -> torch.Tensor:
        """The global batch of step ``step``: positions step*B .. step*B+B-1 of a per-epoch permutation."""
        n, b = len(self.train_x), self.tc["batch_size"]
        pos = torch.arange(step * b, (step + 1) * b, dtype=torch.int64)
        epochs, offsets = pos // n, pos % n
        out = torch.empty(b, dtype=torch.int64)
        for e in torch.unique(epochs).tolist():
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(self.config["seed"], e, 0)))
            mask = epochs == e
            out[mask] = perm[offsets[mask]]
        return out

    def accumulate_gradients(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward and backward of step ``step`` (all micro-batches) into ``.grad``.

        Returns (this rank's loss, the global batch's times, this rank's per-sample objectives).
        With DDP the gradients are already averaged over ranks when this returns.
        """
        torch.manual_seed(step_seed(self.config["seed"], step, 1))
        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.config["seed"], step, 2))
        idx = self.batch_indices(step).to(self.device)
        x_global = self.train_x[idx]
        t, w, eps = self.loss.draw(self.process, x_global, gen)
        if self.train_noise is not None:
            eps = self.train_noise[idx]  # fixed couplings (x0, x1): t and w are still drawn
        y_global = self.train_y[idx] if self.conditional else None
        # the null label of classifier-free guidance (THEORY §2.2, G4); labels an objective predicts are never dropped
        if y_global is not None and self.drop_labels:
            drop = torch.rand(y_global.shape[0], generator=gen, device=gen.device) < self.tc["cond_dropout"]
            y_global = torch.where(drop.to(y_global.device), torch.full_like(y_global, self.net.null_class), y_global)
        per_rank = self.tc["batch_size"] // self.info.world_size
        micro = per_rank // self.tc["grad_accum"]
        lo = self.info.rank * per_rank
        bf16 = self.tc["precision"] == "bf16"
        total = torch.zeros((), device=self.device)
        objectives = []
        for m in range(self.tc["grad_accum"]):
            sl = slice(lo + m * micro, lo + (m + 1) * micro)
            cond = y_global[sl] if y_global is not None else None
            sync = self.info.enabled and m < self.tc["grad_accum"] - 1
            with self.ddp.no_sync() if sync else contextlib.nullcontext():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = self.loss(self.model, x_global[sl], cond, t=t[sl], w=w[sl], eps=eps[sl])
                (out.loss * (micro / per_rank)).backward()
            total += out.loss.detach() * (micro / per_rank)
            objectives.append(out.objective)
        return total, t, torch.cat(objectives)

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step: gradients, clipping, AdamW at the step's learning rate, EMA.

        Returns this rank's loss (a detached tensor). With ``on_nonfinite:
        stop`` there is no host sync: the loss and gradient norm wait on the
        device until the loop checks them (:meth:`check_finite`). With ``skip``
        one host sync decides whether the step is applied; a skipped step
        changes nothing but the counters and sets :attr:`last_step_skipped`.
        """
        total, t, objective = self.accumulate_gradients(step)
        params = [p for p in self.net.parameters() if p.grad is not None]
        clip = self.tc["grad_clip"]
        self._grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf")).detach()
        self.last_step_skipped = False
        if self.on_nonfinite == "skip":
            if self._any_rank(~(torch.isfinite(total) & torch.isfinite(self._grad_norm))):
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped += 1
                self._consecutive_skips += 1
                self.last_step_skipped = True
                if self._consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    first = step + 2 - self._consecutive_skips
                    raise DivergedError(
                        f"training diverged: the loss or gradient norm was not finite at {self._consecutive_skips} steps in a row "
                        f"({first}..{step + 1}), all skipped; {self._last_good()}; lower train.lr"
                    )
                return total
            self._consecutive_skips = 0
        else:
            self._pending.append((step, total, self._grad_norm))
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.net, self.tc["batch_size"], (step + 1) * self.tc["batch_size"])
        if self.posthoc is not None:
            self.posthoc.update(self.net)
        if self.loss.time_sampler.learns:
            self.loss.time_sampler.observe(self.process, t, distributed.gather(objective, self.info))
        if len(self._pending) >= _PENDING_LIMIT:
            self.check_finite()
        return total

    def _any_rank(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` (a bool tensor) is true on any rank (one host sync; a collective when distributed)."""
        if self.info.enabled:
            return float(distributed.mean_across(flag.float(), self.info)) > 0
        return bool(flag)

    def _last_good(self) -> str:
        """Where the work that is safe lies, for a divergence message."""
        if self._last_ckpt is not None:
            return f"the last good checkpoint is {self._last_ckpt}"
        return "no checkpoint was saved before it"

    def check_finite(self) -> None:
        """Raise DivergedError naming the first step whose loss or gradient norm was not finite (``on_nonfinite: stop``).

        Called before anything is derived from the weights (a log row, samples,
        a checkpoint), so weights spoiled by a non-finite step are never saved.
        """
        if not self._pending:
            return
        steps = [s for s, _, _ in self._pending]
        losses = torch.stack([v.float() for _, v, _ in self._pending])
        norms = torch.stack([v.float() for _, _, v in self._pending])
        self._pending.clear()
        bad = ~(torch.isfinite(losses) & torch.isfinite(norms))
        if self.info.enabled:
            bad = distributed.mean_across(bad.float(), self.info) > 0
        bad = bad.cpu()
        if not bool(bad.any()):
            return
        i = int(bad.nonzero()[0, 0])
        loss, norm = float(losses[i]), float(norms[i])
        if not math.isfinite(loss):
            what = f"loss is {loss}"
        elif not math.isfinite(norm):
            what = f"gradient norm is {norm}"
        else:
            what = "loss is not finite on another process"
        raise DivergedError(
            f"training diverged: {what} at step {steps[i] + 1}; {self._last_good()}; lower train.lr or set train.on_nonfinite: skip"
        )

    # --- the loop -----------------------------------------------------------------------------------
    def train(self, steps: int | None = None) -> dict[str, Any]:
        """Run until ``steps`` (default ``train.steps``) steps are done; checkpoint at the end.

        SIGINT / SIGTERM save a checkpoint at the next step boundary and raise
        :class:`TrainingInterrupted`; the run's lock is released when this returns or raises.
        """
        steps = self.tc["steps"] if steps is None else int(steps)
        if steps < self.step:
            raise ConfigError(f"{self.out} is already at step {self.step}; steps ({steps}) must be above it to continue")
        start_time, start_step = time.perf_counter(), self.step
        if steps == self.step and self._saved_step == self.step:
            return self._summary(start_time, start_step, self._last_ckpt)
        if not self._locked:
            self._on_main(self._retake)
            self._locked = True
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, desc=self.config["name"], dynamic_ncols=True)
        window_time, window_step = start_time, self.step
        acc = torch.zeros((), device=self.device)
        applied = skipped = 0  # steps applied / skipped in the current log window
        try:
            with StopRequests() as stop:
                while self.step < steps:
                    self.net.train()
                    loss = self.train_step(self.step)
                    self.step += 1
                    if self.last_step_skipped:
                        skipped += 1
                    else:
                        acc += loss
                        applied += 1
                    if bar is not None:
                        bar.update(1)
                    stopping = self.step < steps and self._stop_requested(stop)
                    if self.step % self.tc["log_every"] == 0 or self.step == steps or stopping:
                        self.check_finite()
                        now = time.perf_counter()
                        rate = (self.step - window_step) / max(now - window_time, 1e-9)
                        mean = float(distributed.mean_across(acc, self.info))
                        row = {
                            "step": self.step,
                            "loss": mean / applied if applied else math.nan,
                            "lr": self.lr_at(self.step - 1),
                            "grad_norm": float(self._grad_norm),
                            "steps_per_s": rate,
                            "samples_per_s": rate * self.tc["batch_size"],
                            "elapsed_s": now - start_time,
                            "skipped": skipped,
                        }
                        self.recent_loss = row["loss"]
                        if self.info.is_main:
                            self.log.append(row)
                        if bar is not None:
                            bar.set_postfix(loss=f"{row['loss']:.4g}", it_s=f"{rate:.1f}", img_s=f"{row['samples_per_s']:.0f}")
                        acc.zero_()
                        applied = skipped = 0
                        window_time, window_step = now, self.step
                    if self.tc["sample_every"] and self.step % self.tc["sample_every"] == 0:
                        self.check_finite()
                        self.write_samples(self.out / "samples" / f"step_{self.step:07d}")
                    if self.posthoc is not None and self.step % self.tc["posthoc_ema"]["every"] == 0:
                        self.write_snapshot()
                    if stopping:
                        raise self._interrupted(stop.signum or signal.SIGTERM)
                    if self.step % self.tc["ckpt_every"] == 0 and self.step < steps:
                        self.save()
                path = self.save() if self._saved_step != self.step else self._last_ckpt
        finally:
            if bar is not None:
                bar.close()
            self._release()
        return self._summary(start_time, start_step, path)

    def _summary(self, start_time: float, start_step: int, path: Path | None) -> dict[str, Any]:
        elapsed = time.perf_counter() - start_time
        return {
            "steps": self.step,
            "loss": self.recent_loss,
            "seconds": elapsed,
            "steps_per_s": (self.step - start_step) / max(elapsed, 1e-9),
            "checkpoint": str(path) if path else None,
            "skipped_steps": self.skipped,
        }

    def _stop_requested(self, stop: StopRequests) -> bool:
        """Whether a stop signal arrived (on any rank: all ranks stop at the same step; one tiny all-reduce per step)."""
        if not self.info.enabled:
            return stop.signum is not None
        return self._any_rank(torch.tensor(stop.signum is not None, device=self.device))

    def _interrupted(self, signum: int) -> TrainingInterrupted:
        """Save the current step (unless it is saved) and the TrainingInterrupted that names the complete checkpoint.

        A failed save is reported as failed, with the previous checkpoint named
        as the one that is complete: the message never claims a save that did
        not happen.
        """
        self.check_finite()
        name = signal.Signals(signum).name
        previous, previous_step = self._last_ckpt, self._saved_step
        try:
            path = self.save() if self._saved_step != self.step else self._last_ckpt
        except Exception as e:
            if previous is not None:
                where = f"the last complete checkpoint is {previous} (step {previous_step}); continue from it with --resume"
            else:
                where = "no checkpoint of this run is complete; start it again"
            error = TrainingInterrupted(f"training stopped by {name} at step {self.step}, but saving its checkpoint failed ({e}); {where}", signum)
            error.__cause__ = e
            return error
        if path is None:
            return TrainingInterrupted(f"training stopped by {name} at step {self.step}; the main process (rank 0) names its checkpoint", signum)
        return TrainingInterrupted(
            f"training stopped by {name} at step {self.step}; checkpoint {path} is complete; "
            "continue with the same command and --resume",
            signum,
        )

    # --- checkpoints ----------------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """(tensor groups, optimizer JSON) describing the run exactly."""
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        groups = {"model": self.net.state_dict(), "optimizer": opt_tensors}
        if self.ema is not None:
            groups["ema"] = self.ema.module.state_dict()
        if self.posthoc is not None:
            groups["power_ema"] = self.posthoc.tensors()
        sampler_state = self.loss.state_dict()
        if sampler_state:
            groups["time_sampler"] = sampler_state
        return groups, opt_meta

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (main rank only); others wait at the barrier.

        Weights from a step with a non-finite loss are refused first
        (:meth:`check_finite`). A failed write raises on the main rank after
        the barrier, and the previous checkpoint stays the complete one.
        """
        self.check_finite()
        path, error = None, None
        if self.info.is_main:
            try:
                groups, opt_meta = self.state_tensors()
                meta = {
                    "config": self.config,
                    "samples_seen": self.step * self.tc["batch_size"],
                    "optimizer": opt_meta,
                    "rng": {
                        "scheme": "per-step generators seeded by (seed, step, stream)",
                        "seed": self.config["seed"],
                        "torch_cpu_state": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
                    },
                    "data": describe_data(self.exp.train_data),
                    "versions": {"udm": __version__, "torch": torch.__version__},
                    "world_size": self.info.world_size,
                    "nonfinite": {"policy": self.on_nonfinite, "skipped": self.skipped, "consecutive": self._consecutive_skips},
                }
                if self.ema is not None:
                    meta["ema"] = self.ema.state()
                if self.posthoc is not None:
                    meta["posthoc_ema"] = self.posthoc.state()
                path = save_checkpoint(self.ckpt_dir, self.step, groups, meta, keep=self.tc["keep_checkpoints"])
            except Exception as e:
                error = e
        distributed.barrier(self.info)
        if error is not None:
            raise error
        self._saved_step = self.step
        if path is not None:
            self._last_ckpt = path
        return path

    def write_snapshot(self) -> Path | None:
        """Write the post-hoc EMA snapshot of the current step (main rank; none before the first applied step).

        Weights from a step with a non-finite loss are refused first (:meth:`check_finite`).
        """
        self.check_finite()
        if not self.info.is_main or self.posthoc is None or self.posthoc.updates == 0:
            return None
        return self.posthoc.write_snapshot(self.out, self.step)

    def _init_from(self, path: str) -> None:
        """Start from another run's weights (its EMA copy if it has one), e.g. reflow's 2-rectified flow from the 1-rectified.

        Only the weights move: the optimizer, the step and the randomness start fresh, as for a new run.
        The EMA starts from the same trained weights, so it has no random initialisation to outgrow.
        """
        try:
            ckpt = load_checkpoint(path)
        except (CheckpointError, OSError, ValueError) as e:
            raise ConfigError(f"train.init_from: cannot load {path}: {e}") from e
        group = "ema" if "ema" in ckpt.tensors else "model"
        load_module_state(self.net, ckpt.group(group), f"train.init_from ({group})")
        if self.ema is not None:
            self.ema.module.load_state_dict(self.net.state_dict())
            self.ema.init_share = 0.0

    def _resume(self) -> None:
        """Load the run's latest checkpoint into the network, EMA, optimizer, time sampler and RNG; every failure a CheckpointError."""
        try:
            ckpt = load_checkpoint(self.ckpt_dir)
        except CheckpointError as e:
            raise CheckpointError(f"cannot resume from {self.out}: {e}") from e
        diffs = config_differences(_identity(ckpt.config), _identity(self.config))
        if diffs:
            raise CheckpointError(
                f"the checkpoint in {self.out} was trained with a different config ({'; '.join(diffs[:3])}); "
                "resume with the same config or choose another --out"
            )
        load_module_state(self.net, ckpt.group("model"), "model")
        if self.ema is not None:
            load_module_state(self.ema.module, ckpt.group("ema"), "EMA")
            ema_state = ckpt.meta.get("ema")
            if isinstance(ema_state, dict):
                self.ema.load_state(ema_state)
        if self.posthoc is not None:
            self.posthoc.load(ckpt)
        self._load_optimizer(ckpt)
        if "time_sampler" in ckpt.tensors:
            try:
                self.loss.load_state_dict(ckpt.tensors["time_sampler"])
            except (KeyError, RuntimeError, ValueError) as e:
                raise CheckpointError(f"the time-sampler state in {ckpt.path} does not fit this config ({e}); use another checkpoint") from e
        encoded = ckpt.field("rng", "torch_cpu_state", kind=str)
        try:
            state = base64.b64decode(encoded, validate=True)
            torch.set_rng_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(f"{ckpt.path / 'state.json'}: 'rng.torch_cpu_state' is not a torch RNG state ({e}); use another checkpoint") from e
        self.step = ckpt.step
        nonfinite = ckpt.meta.get("nonfinite")
        if isinstance(nonfinite, dict):
            self.skipped = int(nonfinite.get("skipped", 0))
            self._consecutive_skips = int(nonfinite.get("consecutive", 0))
        self._last_ckpt, self._saved_step = ckpt.path, ckpt.step

    def _load_optimizer(self, ckpt: Checkpoint) -> None:
        """AdamW's moments and hyper-parameters from ``ckpt``; a missing or mismatched piece is a CheckpointError."""
        opt_meta = ckpt.field("optimizer", kind=dict)
        ckpt.field("optimizer", "param_groups", kind=list)
        try:
            self.optimizer.load_state_dict(unflatten_optimizer(ckpt.group("optimizer"), opt_meta))
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(
                f"the optimizer state in {ckpt.path} does not fit this model ({e}); was it trained with another config?"
            ) from e

    # --- samples during training --------------------------------------------------------------------------
    def sampling_denoiser(self) -> torch.nn.Module:
        """The EMA weights (raw weights when EMA is off) as the objective's model, in eval mode."""
        return self.exp.model((self.ema.module if self.ema is not None else self.net).eval())

    def write_samples(self, stem: Path) -> None:
        """Draw ``sample.n`` samples with fixed seeds (the config's sampler and its options) and write them at ``stem``."""
        if not self.info.is_main:
            return
        sc = self.config["sample"]
        with torch.no_grad():
            x = sample(
                self.sampling_denoiser(), sc["sampler"], sc["steps"], shape=(sc["n"], *self.train_x.shape[1:]),
                seeds=range(sc["n"]), grid=sc["grid"], device=self.device, **(sc["options"] or {}),
            )
        save_samples(x, stem, self.exp.data, reference=self.exp.train_data.x[: sc["n"]], title=f"step {self.step}", raw=False)
