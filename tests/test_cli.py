"""The `udm` command and config validation: clear one-line errors, nothing half-written, real outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import udm
from udm.cli import CONFIG_DIR, bundled_configs, main
from udm.config import ConfigError, load_config, validate
from udm.data import find_mnist

TINY = {
    "name": "tiny",
    "seed": 1,
    "data": {"name": "two_moons", "n": 400, "test_fraction": 0.25},
    "process": {"name": "vp"},
    "prediction": {"name": "v"},
    "network": {"name": "mlp", "hidden": 32, "depth": 2},
    "train": {"steps": 4, "batch_size": 32, "log_every": 2, "ckpt_every": 2},
    "sample": {"sampler": "ddim", "steps": 4, "n": 16, "eval_n": 50},
}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("udm: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.mark.parametrize("name", bundled_configs())
def test_bundled_configs_validate(name):
    config = load_config(CONFIG_DIR / f"{name}.yaml")
    assert config["name"] == name and config["train"]["steps"] >= 1


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda c: c.update(trian={}), ("'trian' is not allowed", "train")),
        (lambda c: c["network"].update(hiden=3), ("network.hiden", "not an option of network 'mlp'", "hidden")),
        (lambda c: c["process"].update(name="vpp"), ("unknown process 'vpp'", "rectified_flow")),
        (lambda c: c["train"].update(precision="fp8"), ("train.precision", "fp32, bf16")),
        (lambda c: c["train"].update(batch_size=0), ("train.batch_size", ">= 1")),
        (lambda c: c["train"].update(grad_accum=3), ("grad_accum", "must divide")),
        (lambda c: c.update(loss={"weighting": "snr2"}), ("loss.weighting", "min_snr")),
        (lambda c: c.update(loss={"time_sampler": {"name": "lognormal", "mean": 0}}), ("loss.time_sampler.mean", "p_mean")),
        (lambda c: c["sample"].update(options={"eta": 1.0, "churn": 2}), ("sample.options", "no option 'churn'", "eta")),
        (lambda c: c["sample"].update(sampler="sa_solver", options={"noise": 3}), ("sample.options.noise", "per-sample Brownian paths")),
        (lambda c: c["sample"].update(sampler="sa_solver", options={"eta": -1}), ("sample.options", "eta must be a finite number >= 0")),
        (lambda c: c["sample"].update(sampler="heun", options={"churn": -2}), ("sample.options", "churn must be >= 0")),
        (lambda c: c["data"].update(noise_level=0.1), ("data.noise_level", "noise")),
        (lambda c: c.pop("network"), ("'network' is missing",)),
    ],
)
def test_config_errors_name_the_key(mutate, fragments):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    mutate(config)
    with pytest.raises(ConfigError) as info:
        validate(config)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_train_sample_eval_list(tmp_path, capsys):
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", str(cfg), "--out", str(run), "--quiet")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 4
    code, out, err = run_cli(capsys, "sample", str(run), "--sampler", "dpmpp_2m", "--steps", "5", "--n", "20", "--out", str(tmp_path / "s"))
    assert code == 0, err
    x = load_file(str(tmp_path / "s" / "samples.safetensors"))["samples"]
    assert x.shape == (20, 2) and bool(x.isfinite().all())
    assert Image.open(tmp_path / "s" / "samples.png").size[0] > 100
    code, _, err = run_cli(capsys, "sample", str(run), "--sampler", "sa_solver", "--steps", "6", "--n", "8", "--out", str(tmp_path / "sde"))
    assert code == 0, err
    assert bool(load_file(str(tmp_path / "sde" / "samples.safetensors"))["samples"].isfinite().all())
    code, out, err = run_cli(capsys, "eval", str(run), "--n", "50", "--out", str(tmp_path / "m.json"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 50 and metrics["sliced_wasserstein"] > 0 and metrics["sliced_wasserstein_floor"] > 0
    code, out, _ = run_cli(capsys, "list")
    for word in ("processes:", "vp", "dpmpp_2m", "karras", "unet", "dit", "two_moons", "mnist", "demo_moons", "velocity"):
        assert word in out


def test_sample_and_eval_honour_the_runs_sample_section(tmp_path, capsys):
    """`udm sample`/`udm eval` without flags use the run's sampler, steps, n and its options (here DDIM's eta = 1)."""
    from udm.training import load_trained

    config = {**TINY, "sample": {**TINY["sample"], "n": 12, "eval_n": 40, "options": {"eta": 1.0}}}
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", str(write_config(tmp_path / "tiny.yaml", config)), "--out", str(run), "--quiet")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", str(run), "--out", str(tmp_path / "s"))
    assert code == 0, err
    x = load_file(str(tmp_path / "s" / "samples.safetensors"))["samples"]
    model, _ = load_trained(str(run))
    with torch.no_grad():
        stochastic = udm.sample(model, "ddim", 4, shape=(12, 2), seeds=range(12), eta=1.0)
        deterministic = udm.sample(model, "ddim", 4, shape=(12, 2), seeds=range(12))
    torch.testing.assert_close(x, stochastic)
    assert (x - deterministic).abs().max() > 1e-3
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["sampler"] == "ddim" and metrics["steps"] == 4 and metrics["n"] == 40
    code, _, err = run_cli(capsys, "sample", str(run), "--steps", "0")
    assert_one_line_error(code, err, "--steps", "must be >= 1")


def test_python_dash_m_is_the_same_command():
    res = subprocess.run([sys.executable, "-m", "udm", "list"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "samplers:" in res.stdout
    res = subprocess.run([sys.executable, "-m", "udm", "train", "no_such_config"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().startswith("udm: error: config 'no_such_config' not found")


def test_unknown_config_key(tmp_path, capsys):
    cfg = write_config(tmp_path / "bad.yaml", {**TINY, "optimiser": {"lr": 1}})
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "'optimiser' is not allowed")
    assert not (tmp_path / "run").exists()


def test_wrong_data_shape_for_network(tmp_path, capsys):
    config = {**TINY, "data": {"name": "digits"}, "network": {"name": "unet", "in_channels": 3, "channels": 32, "channel_mult": [1, 2], "attn_resolutions": []}}
    cfg = write_config(tmp_path / "bad.yaml", config)
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "per-sample shape (1, 8, 8)", "unet")
    assert not (tmp_path / "run").exists()


def test_nan_in_data(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    x[17, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    cfg = write_config(tmp_path / "bad.yaml", {**TINY, "data": {"name": "array", "path": str(tmp_path / "x.npy"), "kind": "points"}})
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "NaN", "17")
    assert not (tmp_path / "run").exists()


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    config = {**TINY, "data": {"name": "image_folder", "path": str(tmp_path / "images")}, "network": {"name": "unet"}}
    cfg = write_config(tmp_path / "bad.yaml", config)
    code, _, err = run_cli(capsys, "train", str(cfg), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "no .png/.jpg/.jpeg files found")
    assert not (tmp_path / "run").exists()


def test_checkpoint_from_another_config(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "a.yaml", TINY)
    assert run_cli(capsys, "train", str(cfg), "--out", str(run), "--quiet")[0] == 0
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    other = write_config(tmp_path / "b.yaml", {**TINY, "network": {"name": "mlp", "hidden": 64, "depth": 2}})
    code, _, err = run_cli(capsys, "train", str(other), "--out", str(run), "--resume", "--quiet")
    assert_one_line_error(code, err, "different config", "network.hidden")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    code, _, err = run_cli(capsys, "sample", str(tmp_path / "nothing-here"))
    assert_one_line_error(code, err, "no checkpoint")


@pytest.mark.skipif(find_mnist() is None, reason="MNIST IDX files not found (../shared/data/mnist or $UDM_DATA)")
def test_mnist_configs_build_on_the_idx_files():
    from udm.training import Experiment

    for name in ("mnist_unet", "mnist_dit", "blur_mnist", "mask_mnist"):
        config = load_config(CONFIG_DIR / f"{name}.yaml", {"data.limit": 200})
        exp = Experiment.from_config(config)
        assert tuple(exp.train_data.shape) == (1, 28, 28)
        assert exp.config["network"]["in_channels"] == 1 and exp.config["network"]["image_size"] == 28


def test_sample_a_class_with_classifier_free_guidance(tmp_path, capsys):
    """`udm sample RUN --class K --cfg W` on a class-conditional model trained with label dropout; clear errors otherwise."""
    config = {**TINY, "network": {**TINY["network"], "num_classes": 2}}
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", str(write_config(tmp_path / "cond.yaml", config)), "--out", str(run), "--quiet")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", str(run), "--class", "1", "--cfg", "2.0", "--steps", "4", "--n", "8", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert load_file(str(tmp_path / "s" / "samples.safetensors"))["samples"].shape == (8, 2)
    code, _, err = run_cli(capsys, "sample", str(run), "--class", "5", "--n", "4")
    assert_one_line_error(code, err, "--class 5 is outside the model's label set 0..1")
    code, _, err = run_cli(capsys, "sample", str(run), "--cfg", "1.0", "--n", "4")
    assert_one_line_error(code, err, "--cfg needs --class")
    plain = tmp_path / "plain"
    run_cli(capsys, "train", str(write_config(tmp_path / "plain.yaml", TINY)), "--out", str(plain), "--quiet")
    code, _, err = run_cli(capsys, "sample", str(plain), "--class", "0", "--n", "4")
    assert_one_line_error(code, err, "class-conditional model")


def test_train_a_noise_aware_classifier_and_guide_with_it(tmp_path, capsys):
    """`udm train` fits a classifier (loss.objective: classification), `udm eval` scores it by noise level, and
    `udm sample MODEL --classifier RUN --gamma G --class K` guides with it; mismatched classifiers fail clearly."""
    clf = {**TINY, "network": {"name": "classifier", "num_classes": 2, "channels": 16, "depth": 2}, "loss": {"objective": "classification"}}
    clf.pop("prediction")
    runs = {}
    for name, config in (("clf", clf), ("model", TINY), ("clf_ve", {**clf, "process": {"name": "ve"}})):
        runs[name] = tmp_path / name
        code, _, err = run_cli(capsys, "train", str(write_config(tmp_path / f"{name}.yaml", config)), "--out", str(runs[name]), "--quiet")
        assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(runs["clf"]))
    assert code == 0, err
    accuracy = json.loads(out)["accuracy_at_t"]
    assert len(accuracy) == 5 and all(0.0 <= a <= 1.0 for a in accuracy.values())
    code, _, err = run_cli(capsys, "eval", str(runs["clf"]), "--nll")
    assert_one_line_error(code, err, "--nll needs a generative model")
    args = ("sample", str(runs["model"]), "--classifier", str(runs["clf"]), "--steps", "4", "--n", "8")
    code, _, err = run_cli(capsys, *args, "--class", "1", "--gamma", "2.0", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert load_file(str(tmp_path / "s" / "samples.safetensors"))["samples"].shape == (8, 2)
    code, _, err = run_cli(capsys, *args, "--class", "2")
    assert_one_line_error(code, err, "--class 2 is outside the classifier's label set 0..1")
    code, _, err = run_cli(capsys, "sample", str(runs["model"]), "--classifier", str(runs["clf_ve"]), "--class", "1")
    assert_one_line_error(code, err, "the classifier was trained on process", "reads the noisy states of one process")
    code, _, err = run_cli(capsys, "sample", str(runs["model"]), "--classifier", str(runs["model"]), "--class", "1")
    assert_one_line_error(code, err, "is not a classifier run")
    code, _, err = run_cli(capsys, "sample", str(runs["clf"]))
    assert_one_line_error(code, err, "is a classifier run: it draws no samples")
    code, _, err = run_cli(capsys, "sample", str(runs["model"]), "--gamma", "2.0", "--class", "1")
    assert_one_line_error(code, err, "--gamma is the classifier-guidance scale")
    image_clf = {**clf, "data": {"name": "digits", "test_fraction": 0.1}, "network": {"name": "classifier", "num_classes": 10, "channels": 8}}
    code, _, err = run_cli(capsys, "train", str(write_config(tmp_path / "img.yaml", image_clf)), "--out", str(tmp_path / "img"), "--quiet")
    assert code == 0, err
    code, _, err = run_cli(capsys, "sample", str(runs["model"]), "--classifier", str(tmp_path / "img"), "--class", "1")
    assert_one_line_error(code, err, "the classifier takes inputs of shape (1, 8, 8) but the model generates shape (2,)")


def test_eval_nll_reports_nats_and_bits_per_dim_with_its_protocol(tmp_path, capsys):
    """`udm eval RUN --nll`: NLL through the PF-ODE, in nats for points and bits/dim (dequantized) for images."""
    for name, config, dim in (("points", TINY, 2), ("digits", {**TINY, "data": {"name": "digits", "test_fraction": 0.1},
                                                                "network": {"name": "mlp", "hidden": 16, "depth": 1}}, 64)):
        run = tmp_path / name
        assert run_cli(capsys, "train", str(write_config(tmp_path / f"{name}.yaml", config)), "--out", str(run), "--quiet")[0] == 0
        code, out, err = run_cli(capsys, "eval", str(run), "--nll", "--n", "8", "--probes", "2", "--rtol", "1e-4")
        assert code == 0, err
        metrics = json.loads(out)
        assert metrics["n"] == 8 and metrics["nfe"] > 0 and metrics["protocol"]["probes"] == 2
        assert np.isclose(metrics["nll_nats_per_dim"], metrics["nll_nats"] / dim)
        if name == "digits":
            assert np.isclose(metrics["bits_per_dim"], metrics["nll_nats_per_dim"] / np.log(2) + np.log2(17 / 2), rtol=1e-9)
        else:
            assert "bits_per_dim" not in metrics and metrics["protocol"]["dequantization"] == "none"


HEAT_FIELD = '''
import torch


class HeatODE:
    """A field a user proposes: p_t = N(0, 1 + t) in 1-D transported by the ODE dx/dt = x / (2 (1 + t))."""

    t_range = (0.2, 1.0)

    def sample(self, t, n, generator):
        gen = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator))
        return (1.0 + t) ** 0.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64)

    def velocity(self, t, x):
        return x / (2.0 * (1.0 + t))


class Backwards(HeatODE):
    def velocity(self, t, x):
        return -x / (2.0 * (1.0 + t))
'''


def test_check_prints_a_table_and_fails_wrong_fields(tmp_path, capsys, monkeypatch):
    """`udm check` passes built-in cases, exits 1 on a deliberately wrong drift, and checks a user's field by module:attr."""
    code, out, err = run_cli(capsys, "check", "vp_ode", "rectified_flow", "--n", "4000", "--times", "1")
    assert code == 0, out + err
    assert "| vp_ode" in out and "| rectified_flow" in out and "FAILED" not in out
    code, out, _ = run_cli(capsys, "check", "vp_ode:sign_flip", "--n", "4000", "--times", "1")
    assert code == 1 and "FAILED" in out
    (tmp_path / "my_fields.py").write_text(HEAT_FIELD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_fields", raising=False)
    code, out, err = run_cli(capsys, "check", "--field", "my_fields:HeatODE", "--n", "4000", "--times", "2")
    assert code == 0, out + err
    code, out, _ = run_cli(capsys, "check", "--field", "my_fields:Backwards", "--n", "4000", "--times", "2")
    assert code == 1 and "FAILED" in out
    code, _, err = run_cli(capsys, "check", "--field", "my_fields:nothing")
    assert_one_line_error(code, err, "module 'my_fields' has no attribute 'nothing'")


def test_a_token_run_samples_text_and_is_scored_as_text(tmp_path, capsys):
    """`udm sample` on a text run uses its sampler and writes decoded text; `udm eval` reports n-gram distances and a
    bits-per-character bound, not distances between character ids."""
    text = tmp_path / "abc.txt"
    text.write_text("abcabcabd" * 80)
    config = {
        "name": "text",
        "seed": 0,
        "data": {"name": "text_file", "path": str(text), "seq_len": 8, "test_fraction": 0.2},
        "process": {"name": "mask", "schedule": "linear"},
        "prediction": {"name": "logits"},
        "network": {"name": "sequence_transformer", "hidden": 16, "depth": 1, "num_heads": 2},
        "loss": {"weighting": "elbo"},
        "train": {"steps": 3, "batch_size": 16, "log_every": 1, "ckpt_every": 3, "ema": None},
        "sample": {"sampler": "udm_deterministic", "steps": 8, "n": 6, "eval_n": 20},
    }
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", str(write_config(tmp_path / "t.yaml", config)), "--out", str(run), "--quiet")
    assert code == 0, err
    code, out, err = run_cli(capsys, "sample", str(run), "--out", str(tmp_path / "s"), "--quiet")
    assert code == 0, err
    assert (tmp_path / "s" / "samples.txt").is_file() and "samples_step3_udm_deterministic_8" not in out
    bodies = [line for line in (tmp_path / "s" / "samples.txt").read_text().splitlines() if line and not line.startswith("---")]
    assert len(bodies) == 6 and all(len(b) == 8 and set(b) <= set("abcd") for b in bodies), bodies
    assert load_file(str(tmp_path / "s" / "samples.safetensors"))["samples"].shape == (6, 8)
    code, out, err = run_cli(capsys, "eval", str(run), "--quiet")
    assert code == 0, err
    metrics = json.loads(out)
    assert "sliced_wasserstein" not in metrics and metrics["unigram_tv"] >= 0 and metrics["bigram_tv_floor"] >= 0
    assert 0 < metrics["nll_bound_bits_per_token"] < 8
    code, out, err = run_cli(capsys, "eval", str(run), "--nll", "--n", "10", "--quiet")
    assert code == 0, err
    assert json.loads(out)["n"] == 10 and json.loads(out)["nll_bound_bits_per_token"] > 0
