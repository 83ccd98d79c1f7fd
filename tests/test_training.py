"""Trainer, checkpoints and resume: bitwise-exact resume, crash-safe writes, tamper detection, DDP equivalence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from udm.config import apply_overrides, validate
from udm.training import CheckpointError, Trainer, load_checkpoint, load_trained, read_log
from udm.training.checkpoint import flatten_optimizer, save_checkpoint, unflatten_optimizer

REPO = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> dict:
    """A two-moons MLP run small enough to train in a second."""
    base = {
        "name": "tiny",
        "seed": 3,
        "data": {"name": "two_moons", "n": 600, "test_fraction": 0.2},
        "process": {"name": "vp"},
        "prediction": {"name": "v"},
        "network": {"name": "mlp", "hidden": 32, "depth": 2, "dropout": 0.1},
        "train": {"steps": 12, "batch_size": 64, "lr": 1e-3, "warmup_steps": 3, "lr_schedule": "cosine", "log_every": 2, "ckpt_every": 5, "ema": {"decay": 0.9}},
        "sample": {"sampler": "ddim", "steps": 5, "n": 16, "eval_n": 100},
    }
    return validate(apply_overrides(base, overrides))


def all_state(run: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run)
    return {f"{g}/{k}": v for g, tensors in ckpt.tensors.items() for k, v in tensors.items()}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"train.grad_accum": 2, "loss.time_sampler": {"name": "adaptive", "bins": 4, "history": 2}},
        {"train.ema": {"half_life": 500, "rampup_ratio": 0.05}, "loss.weighting": "min_snr"},
    ],
    ids=["plain", "accum+adaptive", "halflife+minsnr"],
)
def test_resume_is_bitwise_exact(tmp_path, overrides):
    cfg = tiny_config(**overrides)
    Trainer(cfg, tmp_path / "straight", progress=False).train()
    Trainer(cfg, tmp_path / "split", progress=False).train(steps=7)
    Trainer(cfg, tmp_path / "split", resume=True, progress=False).train()
    a, b = all_state(tmp_path / "straight"), all_state(tmp_path / "split")
    assert a.keys() == b.keys() and {"model", "ema", "optimizer"} <= {k.split("/")[0] for k in a}
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    rows = read_log(tmp_path / "split" / "log.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 7, 8, 10, 12], "the resumed log must continue without repeats"


def test_training_reduces_loss_and_keeps_last_checkpoints(tmp_path):
    cfg = tiny_config(**{"train.steps": 200, "train.ckpt_every": 50, "train.keep_checkpoints": 2, "train.log_every": 20, "prediction.name": "x0"})
    summary = Trainer(cfg, tmp_path, progress=False).train()
    rows = read_log(tmp_path / "log.csv")
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"]
    assert summary["steps"] == 200
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_0000150", "step_0000200"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_0000200"


def test_optimizer_state_round_trip():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = flatten_optimizer(opt.state_dict())
    restored = unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt2.load_state_dict(restored)
    for (_, s1), (_, s2) in zip(sorted(opt.state_dict()["state"].items()), sorted(opt2.state_dict()["state"].items())):
        for k in s1:
            assert torch.equal(torch.as_tensor(s1[k]), torch.as_tensor(s2[k]))


def test_checkpoint_damage_is_reported(tmp_path):
    Trainer(tiny_config(**{"train.steps": 2}), tmp_path, progress=False).train()
    ckpt = tmp_path / "checkpoints" / "step_0000002"
    model = ckpt / "model.safetensors"
    blob = bytearray(model.read_bytes())
    blob[-3] ^= 0xFF
    model.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path)
    model.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(CheckpointError, match="modified or truncated"):
        load_checkpoint(tmp_path)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_truncated_safetensors_with_matching_hash_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(100)}}, {"config": {}})
    file = tmp_path / "step_0000001" / "model.safetensors"
    file.write_bytes(file.read_bytes()[:40])
    state = json.loads((tmp_path / "step_0000001" / "state.json").read_text())
    import hashlib

    state["files"]["model"]["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    (tmp_path / "step_0000001" / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    Trainer(tiny_config(**{"train.steps": 2}), tmp_path, progress=False).train()

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must not be used to read checkpoints")

    monkeypatch.setattr(torch, "load", forbidden)
    denoiser, ckpt = load_trained(tmp_path)
    assert ckpt.step == 2
    Trainer(tiny_config(**{"train.steps": 3}), tmp_path, resume=True, progress=False).train()
    raw = load_file(str(tmp_path / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert set(raw) == set(denoiser.net.state_dict())


def test_resume_with_another_config_is_refused(tmp_path):
    Trainer(tiny_config(**{"train.steps": 2}), tmp_path, progress=False).train()
    with pytest.raises(CheckpointError, match="different config.*network.hidden"):
        Trainer(tiny_config(**{"network.hidden": 16}), tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        Trainer(tiny_config(), tmp_path, progress=False)


KILL_CHILD = textwrap.dedent(
    """
    import sys, time
    import udm.training.checkpoint as ck
    from udm.training import Trainer
    sys.path.insert(0, {tests!r})
    from test_training import tiny_config

    trainer = Trainer(tiny_config(**{{"train.steps": 4}}), {out!r}, progress=False)
    trainer.train()
    real_save = ck.save_file

    def slow_save(tensors, path, **kwargs):
        real_save(tensors, path, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(10)
        print("WRITING", flush=True)
        time.sleep(60)

    ck.save_file = slow_save
    trainer.train(steps=6)
    """
)


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    script = KILL_CHILD.format(tests=str(REPO / "tests"), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "WRITING", child.stderr.read()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers, "the killed write should have left its temporary folder behind"
    ckpt = load_checkpoint(out)
    assert ckpt.step == 4
    capsys.readouterr()
    Trainer(tiny_config(**{"train.steps": 6}), out, resume=True, progress=False).train()
    assert load_checkpoint(out).step == 6
    err = capsys.readouterr().err
    assert f"taking over the stale lock of process {child.pid}" in err and f".step_0000005.tmp-{child.pid}" in err, err
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")], "the next start clears a killed save's folder"
    assert not (out / ".lock").exists(), "the killed run's lock is taken over and released"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_WORKER = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import save_file
    from udm.training import Trainer, distributed
    sys.path.insert(0, {tests!r})
    from test_training import tiny_config

    info = distributed.init("cpu")
    cfg = tiny_config(**{{"network.dropout": 0.0, "train.batch_size": 64}})
    trainer = Trainer(cfg, {out!r}, progress=False, dist_info=info)
    trainer.accumulate_gradients(0)
    if info.rank == 0:
        save_file({{k: p.grad.contiguous() for k, p in trainer.net.named_parameters()}}, {grads!r})
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.train()
    distributed.shutdown()
    """
)


def test_torchrun_two_processes_match_one_process_with_the_full_batch(tmp_path):
    """2 gloo ranks with 32 samples each average to the gradient of one process with 64 (and train alike)."""
    script = tmp_path / "worker.py"
    grads = tmp_path / "grads.safetensors"
    script.write_text(DDP_WORKER.format(tests=str(REPO / "tests"), out=str(tmp_path / "ddp"), grads=str(grads)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[:3000] + "\n...\n" + res.stderr[-2000:]

    single = Trainer(tiny_config(**{"network.dropout": 0.0, "train.batch_size": 64}), tmp_path / "one", progress=False)
    single.accumulate_gradients(0)
    ddp_grads = load_file(str(grads))
    for name, p in single.net.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")
    single.optimizer.zero_grad(set_to_none=True)
    single.train()
    a, b = all_state(tmp_path / "one"), all_state(tmp_path / "ddp")
    for key in a:
        if key.startswith(("model/", "ema/")):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    meta = json.loads((tmp_path / "ddp" / "checkpoints" / "step_0000012" / "state.json").read_text())
    assert meta["world_size"] == 2


def test_sample_grid_and_jsonl_log_written_during_training(tmp_path):
    Trainer(tiny_config(**{"train.steps": 4, "train.sample_every": 2, "train.log_format": "jsonl"}), tmp_path, progress=False).train()
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000002.png", "step_0000004.png"]
    rows = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and all(r["samples_per_s"] > 0 and r["loss"] > 0 for r in rows)


def test_latest_pointing_at_a_missing_folder_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(3)}}, {"config": {}}, keep=None)
    save_checkpoint(tmp_path, 2, {"model": {"w": torch.full((3,), 2.0)}}, {"config": {}}, keep=None)
    (tmp_path / "latest").write_text("step_0000009")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 2 and torch.equal(ckpt.tensors["model"]["w"], torch.full((3,), 2.0))
