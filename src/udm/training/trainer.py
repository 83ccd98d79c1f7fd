"""The training loop: AdamW, warm-up, clipping, EMA, bf16, compile, accumulation, DDP, exact resume.

Exact resume rests on one rule: everything random in step k (the batch, the
times, the noise, dropout) is drawn from generators seeded by (seed, k), and
the learning rate is a function of k. A checkpoint after k steps (weights, EMA,
AdamW moments, time-sampler state) therefore determines steps k+1, k+2, ...
exactly, and on the CPU "N steps, stop, resume, N steps" is bitwise equal to
2N straight steps. Every rank draws the global batch's times and noise and
keeps its slice, so the gradient does not depend on the number of processes.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..atomic import write_atomic
from ..config import ConfigError, dump
from ..samplers import sample
from . import distributed
from .checkpoint import (
    CheckpointError,
    flatten_optimizer,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
    unflatten_optimizer,
)
from .ema import EMA
from .experiment import Experiment, describe_data
from .samples import save_samples

#: train keys that may change between a run and its resumption (they do not change the math).
RESUMABLE_KEYS = ("steps", "log_every", "ckpt_every", "keep_checkpoints", "sample_every", "device", "compile")


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
    out["train"] = {k: v for k, v in config["train"].items() if k not in RESUMABLE_KEYS}
    return out


class RunLog:
    """Per-step metrics as CSV or JSON lines; on resume, rows after the checkpoint's step are dropped."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "steps_per_s", "samples_per_s", "elapsed_s")

    def __init__(self, path: Path, fmt: str, resume_step: int | None) -> None:
        self.path, self.fmt = path, fmt
        if resume_step is None or not path.exists():
            self._rewrite([])
        else:
            self._rewrite([r for r in read_log(path) if int(r["step"]) <= resume_step])

    def _encode(self, rows: list[dict[str, Any]]) -> str:
        if self.fmt == "jsonl":
            return "".join(json.dumps(r) + "\n" for r in rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.FIELDS, lineterminator="\n")
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


def read_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of a run log (CSV or JSON lines) as dicts of floats."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


class Trainer:
    """Train an :class:`Experiment` (or the one a validated config describes), writing everything under ``out_dir``.

    ``out_dir`` receives ``config.yaml``, ``checkpoints/step_*/`` (see
    :mod:`udm.training.checkpoint`), ``log.csv`` (or ``log.jsonl``) and, when
    ``train.sample_every`` > 0, ``samples/step_*.png``.
    """

    def __init__(
        self,
        experiment: Experiment | dict[str, Any],
        out_dir: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        dist_info: distributed.DistInfo | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        device = (experiment.config if isinstance(experiment, Experiment) else experiment)["train"]["device"]
        self.info = dist_info or distributed.init(device)
        self.device = self.info.device
        self.progress = progress and self.info.is_main
        if not resume and (self.ckpt_dir / "latest").exists():
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
                f"({self.info.world_size}) times train.grad_accum ({self.tc['grad_accum']})"
            )
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
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=self.tc["lr"],
            betas=tuple(self.tc["betas"]),
            eps=self.tc["adam_eps"],
            weight_decay=self.tc["weight_decay"],
        )
        ema_cfg = self.tc["ema"]
        self.ema = EMA(self.net, ema_cfg.get("decay"), ema_cfg.get("half_life"), ema_cfg.get("rampup_ratio")) if ema_cfg else None
        self.step = 0
        self.recent_loss: float | None = None
        if resume:
            self._resume()
        elif self.tc["init_from"]:
            self._init_from(self.tc["init_from"])
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_atomic(self.out / "config.yaml", dump(self.config).encode())
            self.log = RunLog(self.out / f"log.{self.tc['log_format']}", self.tc["log_format"], self.step if resume else None)
        distributed.barrier(self.info)

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

        Returns this rank's loss (a detached tensor: no host sync, no collective; the
        loop averages over ranks only when it logs).
        """
        total, t, objective = self.accumulate_gradients(step)
        params = [p for p in self.net.parameters() if p.grad is not None]
        clip = self.tc["grad_clip"]
        self._grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf")).detach()
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.net, self.tc["batch_size"], (step + 1) * self.tc["batch_size"])
        if self.loss.time_sampler.learns:
            self.loss.time_sampler.observe(self.process, t, distributed.gather(objective, self.info))
        return total

    # --- the loop -----------------------------------------------------------------------------------
    def train(self, steps: int | None = None) -> dict[str, Any]:
        """Run until ``steps`` (default ``train.steps``) steps are done; checkpoint at the end."""
        steps = self.tc["steps"] if steps is None else int(steps)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, desc=self.config["name"], dynamic_ncols=True)
        start_time, start_step = time.perf_counter(), self.step
        window_time, window_step = start_time, self.step
        acc = torch.zeros((), device=self.device)
        try:
            while self.step < steps:
                self.net.train()
                acc += self.train_step(self.step)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % self.tc["log_every"] == 0 or self.step == steps:
                    now = time.perf_counter()
                    n = self.step - window_step
                    rate = n / max(now - window_time, 1e-9)
                    row = {
                        "step": self.step,
                        "loss": float(distributed.mean_across(acc, self.info)) / max(n, 1),
                        "lr": self.lr_at(self.step - 1),
                        "grad_norm": float(self._grad_norm),
                        "steps_per_s": rate,
                        "samples_per_s": rate * self.tc["batch_size"],
                        "elapsed_s": now - start_time,
                    }
                    self.recent_loss = row["loss"]
                    if self.info.is_main:
                        self.log.append(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4g}", it_s=f"{rate:.1f}", img_s=f"{row['samples_per_s']:.0f}")
                    acc.zero_()
                    window_time, window_step = now, self.step
                if self.tc["sample_every"] and self.step % self.tc["sample_every"] == 0:
                    self.write_samples(self.out / "samples" / f"step_{self.step:07d}")
                if self.step % self.tc["ckpt_every"] == 0 and self.step < steps:
                    self.save()
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            if bar is not None:
                bar.close()
        path = self.save()
        elapsed = time.perf_counter() - start_time
        return {
            "steps": self.step,
            "loss": self.recent_loss,
            "seconds": elapsed,
            "steps_per_s": (self.step - start_step) / max(elapsed, 1e-9),
            "checkpoint": str(path) if path else None,
        }

    # --- checkpoints ----------------------------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """(tensor groups, optimizer JSON) describing the run exactly."""
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        groups = {"model": self.net.state_dict(), "optimizer": opt_tensors}
        if self.ema is not None:
            groups["ema"] = self.ema.module.state_dict()
        sampler_state = self.loss.state_dict()
        if sampler_state:
            groups["time_sampler"] = sampler_state
        return groups, opt_meta

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (main rank only); others wait at the barrier."""
        path = None
        if self.info.is_main:
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
            }
            path = save_checkpoint(self.ckpt_dir, self.step, groups, meta, keep=self.tc["keep_checkpoints"])
        distributed.barrier(self.info)
        return path

    def _init_from(self, path: str) -> None:
        """Start from another run's weights (its EMA copy if it has one), e.g. reflow's 2-rectified flow from the 1-rectified.

        Only the weights move: the optimizer, the step and the randomness start fresh, as for a new run.
        """
        try:
            ckpt = load_checkpoint(path)
        except (CheckpointError, OSError, ValueError) as e:
            raise ConfigError(f"train.init_from: cannot load {path}: {e}") from e
        group = "ema" if "ema" in ckpt.tensors else "model"
        load_module_state(self.net, ckpt.tensors[group], f"train.init_from ({group})")
        if self.ema is not None:
            self.ema.module.load_state_dict(self.net.state_dict())

    def _resume(self) -> None:
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
        load_module_state(self.net, ckpt.tensors["model"], "model")
        if self.ema is not None:
            load_module_state(self.ema.module, ckpt.tensors["ema"], "EMA")
        self.optimizer.load_state_dict(unflatten_optimizer(ckpt.tensors["optimizer"], ckpt.meta["optimizer"]))
        if "time_sampler" in ckpt.tensors:
            self.loss.load_state_dict(ckpt.tensors["time_sampler"])
        state = base64.b64decode(ckpt.meta["rng"]["torch_cpu_state"])
        torch.set_rng_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
        self.step = ckpt.step

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
