"""`udm eval --metrics` and `udm ema --sweep`: pinned feature metrics with floors and protocol, and widths ranked by them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_cli import assert_one_line_error, run_cli
from udm.cli import main
from udm.evaluate import draw_samples, feature_metrics
from udm.features import load_feature_network
from udm.sources import from_run

DIGITS = {
    "name": "tiny_digits",
    "seed": 3,
    "data": {"name": "digits", "test_fraction": 0.1},
    "process": {"name": "vp"},
    "prediction": {"name": "v"},
    "network": {"name": "mlp", "hidden": 32, "depth": 1},
    "train": {"steps": 30, "batch_size": 32, "log_every": 10, "ckpt_every": 30, "posthoc_ema": {"sigma_rels": [0.05, 0.1], "every": 5}},
    "sample": {"sampler": "ddim", "steps": 5, "n": 8, "eval_n": 50},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny digits model with post-hoc EMA snapshots every 5 steps."""
    root = tmp_path_factory.mktemp("quality")
    config = root / "digits.yaml"
    config.write_text(yaml.safe_dump(DIGITS))
    assert main(["train", str(config), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def test_eval_metrics_prints_the_table_and_writes_the_protocol_beside_the_run(run, capsys):
    code, out, err = run_cli(capsys, "eval", str(run), "--metrics", "fd,kid,pr", "--features", "digits-mlp", "--seeds", "5-44",
                             "--floor-repeats", "2", "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["metric", "value", "stderr", "floor", "floor_std"]
    assert [line.split()[0] for line in lines[1:5]] == ["fd", "kid", "precision", "recall"]
    path = Path(lines[-1])
    assert path == run / "eval" / "digits-mlp_ddim_5steps_seeds5-44.json"
    result = json.loads(path.read_text())
    network = load_feature_network("digits-mlp")
    assert result["protocol"]["features"]["sha256"] == network.sha256
    assert result["protocol"]["n"] == 40 and "first 40" in result["protocol"]["reference"]
    assert result["sampling"]["seeds"] == "5-44" and result["sampling"]["sampler"] == "ddim"
    assert set(result["rows"]) == {"fd", "kid", "precision", "recall"}
    for row in result["rows"].values():
        assert row["stderr"] is not None and row["stderr"] >= 0 and row["floor_std"] >= 0
    assert 0.0 <= result["classes"]["samples"]["confident_fraction"] <= 1.0
    assert result["classes"]["reference_accuracy"] > 0.9  # the pinned digits classifier on held-out digits
    # The command is the library: the same seeds through draw_samples and feature_metrics give the same numbers.
    src = from_run(str(run))
    train, test = src.splits()
    x, _ = draw_samples(src.model, src.shape, 40, "ddim", 5, seed=5)
    direct = feature_metrics(x, test, train, network, ("fd", "kid", "pr"), floor_repeats=2)
    for name, row in direct["rows"].items():
        assert row == pytest.approx(result["rows"][name], rel=1e-12), name
    # A trained model, however small, is not as close as real images: FD above its floor.
    assert result["rows"]["fd"]["value"] > result["rows"]["fd"]["floor"]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--metrics", "fd,bogus", "--features", "digits-mlp"], ["unknown metric 'bogus'", "fd, kid, pr"]),
        (["--metrics", "fd"], ["--metrics needs --features", "digits-mlp", "mnist-cnn"]),
        (["--features", "digits-mlp"], ["--features chooses the network of --metrics"]),
        (["--metrics", "kid", "--features", "mnist-cnn"], ["'mnist-cnn' takes (1, 28, 28)", "(1, 8, 8)"]),
        (["--metrics", "kid", "--features", "nope"], ["unknown feature network 'nope'"]),
        (["--metrics", "kid", "--features", "digits-mlp", "--nll"], ["run them as two commands"]),
        (["--metrics", "kid", "--features", "digits-mlp", "--seeds", "9-3"], ["not a range A-B"]),
        (["--metrics", "kid", "--features", "digits-mlp", "--seeds", "0-9", "--n", "20"], ["disagrees with --seeds"]),
        (["--metrics", "kid", "--features", "digits-mlp", "--n", "500"], ["more than the", "held-out samples"]),
    ],
)
def test_eval_metrics_refuses_bad_input_before_writing(run, capsys, argv, fragments):
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    code, _, err = run_cli(capsys, "eval", str(run), *argv, "--quiet")
    assert_one_line_error(code, err, *fragments)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_ema_sweep_ranks_the_widths_by_kid_and_agrees_with_eval(run, capsys, tmp_path):
    out_dir = tmp_path / "widths"
    code, out, err = run_cli(capsys, "ema", str(run), "--sweep", "--metric", "kid", "--features", "digits-mlp", "--n", "40",
                             "--sigma-rel", "0.05,0.1,0.2", "--out", str(out_dir), "--quiet")
    assert code == 0, err
    sweep = json.loads(Path(out.splitlines()[-1]).read_text())
    values = {row["sigma_rel"]: row["value"] for row in sweep["rows"]}
    assert set(values) == {0.05, 0.1, 0.2}
    assert sweep["best"] == min(values, key=values.get)
    assert f"best sigma_rel {sweep['best']:g}" in out and out.count("<- best") == 1
    # The sweep's score of a width is what `udm eval` reports for that width's folder (same seeds 0..39, same reference).
    folder = next(row["path"] for row in sweep["rows"] if row["sigma_rel"] == 0.1)
    code, out, err = run_cli(capsys, "eval", folder, "--metrics", "kid", "--features", "digits-mlp", "--n", "40",
                             "--floor-repeats", "1", "--out", str(tmp_path / "kid.json"), "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "kid.json").read_text())["rows"]["kid"]["value"] == pytest.approx(values[0.1], rel=1e-12)


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--sweep"], ["--sweep needs --metric", "fd, kid, nll"]),
        (["--sweep", "--metric", "pr", "--features", "digits-mlp"], ["cannot rank widths"]),
        (["--sweep", "--metric", "nll", "--features", "digits-mlp"], ["--features applies to --metric fd or kid"]),
        (["--sigma-rel", "0.1", "--metric", "kid"], ["--metric applies to --sweep"]),
        ([], ["give the widths to reconstruct with --sigma-rel"]),
    ],
)
def test_ema_sweep_refuses_bad_input_before_writing(run, capsys, argv, fragments):
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    code, _, err = run_cli(capsys, "ema", str(run), *argv, "--quiet")
    assert_one_line_error(code, err, *fragments)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
