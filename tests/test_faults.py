"""No work is ever lost: signals, run locks, killed saves, non-finite losses, bad resumes and edited checkpoints.

Each test trains a tiny MLP on two moons for a few steps (seeded), so the
properties are exact: an interrupted and resumed run ends bitwise equal to an
uninterrupted one, a refused start leaves the run folder as it was.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import udm.config
import udm.training.checkpoint as ck
import udm.training.trainer as trainer_module
from test_cli import TINY, assert_one_line_error, run_cli, write_config
from test_training import all_state, tiny_config
from udm.errors import CheckpointError, ConfigError, DivergedError, RunLockedError, TrainingInterrupted
from udm.training import Experiment, Trainer, load_checkpoint, read_log, remove_orphans, save_checkpoint
from udm.training.ema import ema_note_from_meta, ema_warmup_note
from udm.training.runlock import RunLock


def assert_same_state(a: Path, b: Path) -> None:
    """Every tensor of the two runs' latest checkpoints (weights, EMA, AdamW moments, time sampler) is bitwise equal."""
    sa, sb = all_state(a), all_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def listing(run: Path) -> dict[str, bytes]:
    """Every file under ``run`` with its content (to show a refused start wrote nothing)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


# --- signals ---------------------------------------------------------------------------------------------------------


def wait_for(path: Path, child: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.poll() is not None:
            pytest.fail(f"the training process ended early ({child.returncode}): {child.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_at_a_step_boundary_and_the_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path, capsys, sig):
    """`udm train` stopped by SIGTERM / SIGINT exits 143 / 130 naming its complete checkpoint; --resume continues exactly.

    While it runs, a second `udm train` into the same folder is refused, naming the first one's pid.
    """
    config = {**TINY, "train": {**TINY["train"], "steps": 1_000_000, "ckpt_every": 10, "log_every": 10}}
    cfg = write_config(tmp_path / "long.yaml", config)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # bitwise equality needs the same reduction order
    child = subprocess.Popen([sys.executable, "-m", "udm", "train", str(cfg), "--out", str(run), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(run / "checkpoints" / "latest", child)
        if sig == signal.SIGTERM:
            code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--resume", "--quiet")
            assert_one_line_error(code, err, f"is being trained by process {child.pid} on {socket.gethostname()}", "choose another --out")
        child.send_signal(sig)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 128 + sig, err
    step = load_checkpoint(run).step
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name} at step {step}" in lines[0], err
    assert f"step_{step:07d} is complete" in lines[0] and "--resume" in lines[0], err
    assert not (run / ".lock").exists() and not leftovers(run)
    end = str(step + 3)
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--resume", "--steps", end, "--quiet")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "straight"), "--steps", end, "--quiet")
    assert code == 0, err
    assert_same_state(run, tmp_path / "straight")


def _guard(signum, frame):
    raise AssertionError(f"signal {signum} reached the test's own handler: the trainer did not catch it")


@pytest.fixture
def guarded_signals():
    """Test-owned SIGINT/SIGTERM handlers (a stray signal fails the test instead of killing pytest); restored after."""
    previous = {s: signal.signal(s, _guard) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def interrupt_at(monkeypatch, trainer: Trainer, step: int, sig: int = signal.SIGINT) -> None:
    """Make ``trainer`` receive ``sig`` right after step index ``step`` (as Ctrl-C would)."""
    real = trainer.train_step

    def step_then_signal(k):
        loss = real(k)
        if k == step:
            signal.raise_signal(sig)
        return loss

    monkeypatch.setattr(trainer, "train_step", step_then_signal)


def test_a_second_signal_during_the_save_waits_until_the_checkpoint_is_complete(tmp_path, monkeypatch, guarded_signals):
    cfg = tiny_config(**{"train.steps": 12, "train.ckpt_every": 5})
    run = tmp_path / "run"
    trainer = Trainer(cfg, run, progress=False)
    interrupt_at(monkeypatch, trainer, 6)
    real_save = ck.save_file
    sent = []

    def save_and_get_sigterm(tensors, path, **kwargs):
        if ".step_0000007" in path and not sent:
            sent.append(path)
            signal.raise_signal(signal.SIGTERM)  # arrives with the first tensor file written half-way through the save
        real_save(tensors, path, **kwargs)

    monkeypatch.setattr(ck, "save_file", save_and_get_sigterm)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    assert sent, "the second signal was never sent"
    assert info.value.exit_code == 130 and info.value.signum == signal.SIGINT
    message = str(info.value)
    assert "\n" not in message and "stopped by SIGINT at step 7" in message and f"{run / 'checkpoints' / 'step_0000007'} is complete" in message
    assert signal.getsignal(signal.SIGINT) is _guard and signal.getsignal(signal.SIGTERM) is _guard, "handlers restored"
    assert load_checkpoint(run).step == 7 and not leftovers(run) and not (run / ".lock").exists()
    monkeypatch.undo()
    Trainer(cfg, run, resume=True, progress=False).train()
    Trainer(cfg, tmp_path / "straight", progress=False).train()
    assert_same_state(run, tmp_path / "straight")
    assert [int(r["step"]) for r in read_log(run / "log.csv")] == [2, 4, 6, 7, 8, 10, 12]


def test_a_failed_save_after_a_signal_names_the_previous_checkpoint(tmp_path, monkeypatch, guarded_signals):
    cfg = tiny_config(**{"train.steps": 12, "train.ckpt_every": 5})
    run = tmp_path / "run"
    trainer = Trainer(cfg, run, progress=False)
    interrupt_at(monkeypatch, trainer, 6, signal.SIGTERM)
    real_save = ck.save_file

    def disk_full(tensors, path, **kwargs):
        if ".step_0000007" in path:
            raise OSError(28, "No space left on device")
        real_save(tensors, path, **kwargs)

    monkeypatch.setattr(ck, "save_file", disk_full)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    message = str(info.value)
    assert info.value.exit_code == 143
    assert "saving its checkpoint failed" in message and "No space left" in message
    assert f"the last complete checkpoint is {run / 'checkpoints' / 'step_0000005'} (step 5)" in message
    assert "step_0000007" not in message, "never report a save that did not happen"
    assert load_checkpoint(run).step == 5 and not leftovers(run), "the failed save removed its temporary folder"
    monkeypatch.undo()
    Trainer(cfg, run, resume=True, progress=False).train()
    Trainer(cfg, tmp_path / "straight", progress=False).train()
    assert_same_state(run, tmp_path / "straight")


# --- the run lock and a killed run's leftovers ---------------------------------------------------------------------


def test_a_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "yesterday"}))
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--quiet")
    assert code == 0, err
    assert f"taking over the stale lock of process {dead.pid}" in err
    assert not (run / ".lock").exists(), "released at the end of training"

    (run / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "today"}))
    before = listing(run)
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--resume", "--steps", "6", "--quiet")
    assert_one_line_error(code, err, "is being trained by process 4242 on elsewhere", f"delete {run / '.lock'}")
    assert listing(run) == before, "a refused start writes nothing"

    other = tmp_path / "other"
    first = Trainer(tiny_config(), other, progress=False)  # holds the lock until it trains or closes
    with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
        Trainer(tiny_config(), other, progress=False)
    first.close()
    assert Trainer(tiny_config(**{"train.steps": 2}), other, progress=False).train()["steps"] == 2


def test_lock_file_is_complete_when_it_appears_and_released_only_by_its_owner(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    info = json.loads((tmp_path / "run" / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
    with pytest.raises(RunLockedError):
        RunLock(tmp_path / "run").acquire()
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    lock.release()
    assert (tmp_path / "run" / ".lock").exists(), "another process's lock is never removed"


def test_orphans_of_a_kill_between_the_two_renames_are_restored(tmp_path):
    """A kill while the same step was saved again leaves step_N moved aside: the next start puts it back."""
    save_checkpoint(tmp_path, 2, {"model": {"w": torch.ones(3)}}, {"config": {}})
    os.replace(tmp_path / "step_0000002", tmp_path / ".step_0000002.old-999")
    (tmp_path / ".step_0000002.tmp-999").mkdir()
    (tmp_path / ".latest.x1y2.tmp").write_text("step_")
    done = remove_orphans(tmp_path)
    assert len(done) == 3 and any("restored as step_0000002" in d for d in done)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000002"]
    assert torch.equal(load_checkpoint(tmp_path).tensors["model"]["w"], torch.ones(3))


# --- non-finite losses --------------------------------------------------------------------------------------------


def poison(monkeypatch, steps: set[int]) -> None:
    """Make the loss and gradients of the given step indices NaN (as an overflow would)."""
    real = Trainer.accumulate_gradients

    def poisoned(self, step):
        total, t, objective = real(self, step)
        if step in steps:
            total = total * float("nan")
            for p in self.net.parameters():
                p.grad.mul_(float("nan"))
        return total, t, objective

    monkeypatch.setattr(Trainer, "accumulate_gradients", poisoned)


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path / "tiny.yaml", {**TINY, "train": {**TINY["train"], "steps": 8}})
    run = tmp_path / "run"
    poison(monkeypatch, {4})
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--quiet")
    last_good = run / "checkpoints" / "step_0000004"
    assert_one_line_error(code, err, "training diverged: loss is nan at step 5", f"the last good checkpoint is {last_good}",
                          "train.on_nonfinite: skip")
    ckpt = load_checkpoint(run)
    assert ckpt.path == last_good and all(bool(v.isfinite().all()) for g in ckpt.tensors.values() for v in g.values())
    assert [int(r["step"]) for r in read_log(run / "log.csv")] == [2, 4], "no log row from the spoiled weights"
    assert not (run / ".lock").exists()


@pytest.fixture
def on_nonfinite_key(monkeypatch):
    """Let the config accept ``train.on_nonfinite`` (until config.py lists it in TRAIN_DEFAULTS)."""
    monkeypatch.setitem(udm.config.TRAIN_DEFAULTS, "on_nonfinite", udm.config.TRAIN_DEFAULTS.get("on_nonfinite", "stop"))


def test_skip_drops_the_nonfinite_step_and_counts_it(tmp_path, monkeypatch, on_nonfinite_key):
    clean = Trainer.accumulate_gradients
    cfg = {"train.steps": 5, "train.on_nonfinite": "skip", "train.lr_schedule": "constant"}
    poison(monkeypatch, {1, 4})
    summary = Trainer(tiny_config(**cfg), tmp_path / "skip", progress=False).train()
    assert summary["steps"] == 5 and summary["skipped_steps"] == 2
    rows = read_log(tmp_path / "skip" / "log.csv")
    assert [(int(r["step"]), int(r["skipped"])) for r in rows] == [(2, 1), (4, 0), (5, 1)]
    ckpt = load_checkpoint(tmp_path / "skip")
    assert ckpt.meta["nonfinite"]["skipped"] == 2 and ckpt.meta["ema"]["updates"] == 3, "no EMA update on a skipped step"
    # a skipped step changes nothing: with its last step skipped, a run equals the same run stopped one step earlier
    monkeypatch.setattr(Trainer, "accumulate_gradients", clean)
    poison(monkeypatch, {4})
    Trainer(tiny_config(**cfg), tmp_path / "last", progress=False).train()
    monkeypatch.setattr(Trainer, "accumulate_gradients", clean)
    Trainer(tiny_config(**{**cfg, "train.steps": 4}), tmp_path / "four", progress=False).train()
    assert_same_state(tmp_path / "last", tmp_path / "four")


def test_too_many_skips_in_a_row_are_a_divergence(tmp_path, monkeypatch, on_nonfinite_key):
    monkeypatch.setattr(trainer_module, "MAX_CONSECUTIVE_SKIPS", 3)
    poison(monkeypatch, {2, 3, 4, 5})
    with pytest.raises(DivergedError, match=r"not finite at 3 steps in a row \(3\.\.5\), all skipped; the last good checkpoint is .*step_0000004"):
        Trainer(tiny_config(**{"train.steps": 8, "train.ckpt_every": 2, "train.on_nonfinite": "skip"}), tmp_path, progress=False).train()
    two, four = (load_checkpoint(tmp_path / "checkpoints" / f"step_000000{k}") for k in (2, 4))
    for group in ("model", "ema", "optimizer"):
        for name, value in two.tensors[group].items():
            assert torch.equal(value, four.tensors[group][name]), "skipped steps must leave the weights and moments as they were"


def test_an_unknown_nonfinite_policy_is_refused_before_anything_is_written(tmp_path, monkeypatch, on_nonfinite_key):
    with pytest.raises(ConfigError, match="train.on_nonfinite.*stop, skip"):
        Trainer(tiny_config(**{"train.on_nonfinite": "ignore"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --- nothing half-written -------------------------------------------------------------------------------------------


def test_a_loss_that_fails_is_reported_before_the_run_folder_exists(tmp_path, capsys, monkeypatch):
    """The trainer dry-runs the loss (not only the network) before its first write."""
    import udm.losses

    def broken(self, *args, **kwargs):
        raise RuntimeError("The size of tensor a (2) must match the size of tensor b (3)")

    monkeypatch.setattr(udm.losses.Loss, "__call__", broken)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", str(write_config(tmp_path / "tiny.yaml", TINY)), "--out", str(run), "--quiet")
    assert_one_line_error(code, err, "loss cannot be computed on data 'two_moons' with network 'mlp'", "must match the size")
    assert not run.exists()


# --- resuming -----------------------------------------------------------------------------------------------------


def test_resume_to_fewer_or_the_same_steps_is_refused_and_changes_nothing(tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    run = tmp_path / "run"
    assert run_cli(capsys, "train", str(cfg), "--out", str(run), "--quiet")[0] == 0
    before = listing(run)
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--resume", "--steps", "2", "--quiet")
    assert_one_line_error(code, err, "is already at step 4", "--steps", "must be above it")
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--resume", "--quiet")
    assert_one_line_error(code, err, "is complete", "already at step 4", "larger --steps")
    assert listing(run) == before
    reused = Trainer(udm.config.load_config(cfg), run, resume=True, progress=False, reuse_complete=True)
    assert reused.complete and reused.train()["steps"] == 4
    assert listing(run) == before, "reusing a complete run writes nothing"


def test_a_malformed_log_row_does_not_block_resume(tmp_path, capsys):
    cfg = tiny_config(**{"train.steps": 4, "train.ckpt_every": 4})
    run = tmp_path / "run"
    Trainer(cfg, run, progress=False).train()
    log = run / "log.csv"
    with open(log, "a") as f:
        f.write("6,0.5,0.001,1.0,100.0,6400.0,0.1,0\n")  # a row after the checkpoint (written before a kill)
        f.write("8,0.4,0.0")  # the kill cut this line short
    capsys.readouterr()
    Trainer(tiny_config(**{"train.steps": 6, "train.ckpt_every": 4}), run, resume=True, progress=False).train()
    err = capsys.readouterr().err
    assert "dropping 1 malformed row(s) and 1 row(s) after step 4" in err, err
    assert [int(r["step"]) for r in read_log(log)] == [2, 4, 6]


# --- checkpoint metadata validated like a config ----------------------------------------------------------------


@pytest.fixture
def trained(tmp_path, capsys) -> Path:
    run = tmp_path / "run"
    assert run_cli(capsys, "train", str(write_config(tmp_path / "tiny.yaml", TINY)), "--out", str(run), "--quiet")[0] == 0
    return run


def edit_state(run: Path, edit) -> None:
    path = load_checkpoint(run).path / "state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda s: s.pop("rng"), ("'rng' was removed", "restore the original state.json")),
        (lambda s: s.pop("data"), ("'data' was removed",)),
        (lambda s: s["config"]["process"].update(name="ve"), ("was edited after the checkpoint was written", "'config' was changed")),
        (lambda s: s.update(step=9), ("'step' was changed",)),
        (lambda s: s["files"]["model"].update(file="../../model.safetensors"), ("files.model names '../../model.safetensors'", "not a file inside")),
        (lambda s: s["files"]["ema"].update(file="/etc/passwd"), ("files.ema names '/etc/passwd'", "not a file inside")),
        (lambda s: s.pop("files"), ("has no 'files' entry",)),
    ],
    ids=["no-rng", "no-data", "process-changed", "step-changed", "dotdot-path", "absolute-path", "no-files"],
)
def test_an_edited_state_json_is_one_clear_checkpoint_error(trained, capsys, tmp_path, edit, fragments):
    edit_state(trained, edit)
    code, _, err = run_cli(capsys, "sample", str(trained), "--n", "4", "--out", str(tmp_path / "s"))
    assert_one_line_error(code, err, *fragments)
    code, _, err = run_cli(capsys, "train", str(tmp_path / "tiny.yaml"), "--out", str(trained), "--resume", "--steps", "6", "--quiet")
    assert_one_line_error(code, err, *fragments)
    assert not (trained / ".lock").exists()


def test_a_missing_key_of_an_unsealed_checkpoint_is_named(tmp_path):
    """Checkpoints written before the seal: a missing entry is still a CheckpointError naming it, not a KeyError."""
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {"config": {}, "rng": {}}, keep=None)
    ckpt = load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="has no 'data' entry"):
        ckpt.meta["data"]
    with pytest.raises(CheckpointError, match="has no 'rng.torch_cpu_state' entry"):
        ckpt.field("rng", "torch_cpu_state")


def test_weights_that_do_not_fit_their_stored_config_name_the_tensor(trained, capsys, tmp_path):
    narrow = tmp_path / "narrow"
    config = {**TINY, "network": {**TINY["network"], "hidden": 16}}
    assert run_cli(capsys, "train", str(write_config(tmp_path / "narrow.yaml", config)), "--out", str(narrow), "--quiet")[0] == 0
    wide = load_checkpoint(trained)
    meta = {k: v for k, v in wide.meta.items() if k not in ("files", "format", "step")}
    save_checkpoint(tmp_path / "mixed", 4, load_checkpoint(narrow).tensors, meta)
    code, _, err = run_cli(capsys, "sample", str(tmp_path / "mixed"), "--n", "4", "--out", str(tmp_path / "s"))
    assert_one_line_error(code, err, "do not fit this model", "in the checkpoint vs", "shape mismatch")
    with pytest.raises(CheckpointError, match=r"\[16.*\] in the checkpoint vs \[32.*\] in the model"):
        Experiment.from_run(str(tmp_path / "mixed"))


# --- EMA warm-up ---------------------------------------------------------------------------------------------------


def test_ema_warmup_note_when_the_average_is_mostly_initialisation(tmp_path):
    assert ema_warmup_note(0.999, 300) is not None and "74%" in ema_warmup_note(0.999, 300)
    assert ema_warmup_note(0.999, 5000) is None and ema_warmup_note(None, 10) is None
    Trainer(tiny_config(**{"train.steps": 4, "train.ema": {"decay": 0.99}}), tmp_path / "young", progress=False).train()
    meta = load_checkpoint(tmp_path / "young").meta
    assert meta["ema"]["updates"] == 4 and meta["ema"]["decay"] == 0.99
    assert meta["ema"]["init_share"] == pytest.approx(0.99**4) and "--raw-weights" in meta["ema"]["warmup_note"]
    assert ema_note_from_meta(meta) == meta["ema"]["warmup_note"]
    assert ema_note_from_meta({"config": {"train": {"ema": {"decay": 0.9}}}, "step": 100}) is None
