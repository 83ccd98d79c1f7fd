"""A catalogue of ordinary mistakes: each ends in one line ``udm: error: ...`` (exit 2) and writes nothing.

Every CLI case runs ``udm`` in-process in a work folder holding one small
trained run, a config and a plain file; the folder's listing (paths, sizes and
modification times) must be the same afterwards, so a refused command has not
created, changed or half-written anything. The Python API cases assert the
exception type and a message naming the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

import udm
from udm.cli import main
from udm.config import ConfigError, load_config, parse_yaml, validate

TINY = {
    "name": "tiny",
    "seed": 1,
    "data": {"name": "two_moons", "n": 400, "test_fraction": 0.25},
    "process": {"name": "vp"},
    "prediction": {"name": "v"},
    "network": {"name": "mlp", "hidden": 16, "depth": 2},
    "train": {"steps": 2, "batch_size": 32, "log_every": 1, "ckpt_every": 2, "ema": {"decay": 0.9}},
    "sample": {"sampler": "ddim", "steps": 3, "n": 8, "eval_n": 50},
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A work folder: ``tiny.yaml``, its trained run ``run/``, a plain file ``afile``, an empty folder ``empty/``."""
    root = tmp_path_factory.mktemp("ws")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (root / "afile").write_text("not a folder\n")
    (root / "empty").mkdir()
    (root / "broken.yaml").write_text("data: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    assert main(["train", str(root / "tiny.yaml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root``, files with size and modification time (a lock taken and released leaves no trace)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
    return out


T = ["train", "{ws}/tiny.yaml", "--out", "{ws}/new_run", "--quiet"]
S = ["sample", "{ws}/run", "--out", "{ws}/new_samples", "--quiet"]
E = ["eval", "{ws}/run", "--quiet"]

CLI_CASES = [
    # train: the config file
    ("missing config", ["train", "{ws}/nope.yaml"], "not found"),
    ("mistyped path of a bundled config", ["train", "{ws}/configs/demo_moons.yaml"], "not found"),
    ("bundled name with .yaml", ["train", "demo_moonz"], "not found"),
    ("config is a folder", ["train", "{ws}/empty"], "is a folder"),
    ("config not YAML", ["train", "{ws}/broken.yaml"], "not valid YAML"),
    ("config a list", ["train", "{ws}/list.yaml"], "must hold a mapping"),
    # train: --set syntax and top level
    ("--set without =", [*T, "--set", "train.steps"], "KEY=VALUE"),
    ("--set empty key part", [*T, "--set", "train..steps=3"], "dotted key"),
    ("--set bad YAML value", [*T, "--set", "train.lr=[1, 2"], "not valid YAML"),
    ("unknown section", [*T, "--set", "trian.steps=3"], "'trian' is not allowed"),
    ("name escapes runs/", ["train", "{ws}/tiny.yaml", "--set", "name=../../escape", "--quiet"], "config key 'name'"),
    ("name with slash", ["train", "{ws}/tiny.yaml", "--set", "name=a/b", "--quiet"], "config key 'name'"),
    ("negative seed", [*T, "--set", "seed=-1"], "'seed'"),
    ("seed a string", [*T, "--set", "seed=abc"], "'seed'"),
    # train: train section values
    ("lr a word", [*T, "--set", "train.lr=abc"], "train.lr"),
    ("lr negative", [*T, "--set", "train.lr=-1e-3"], "train.lr"),
    ("lr nan", [*T, "--set", "train.lr=.nan"], "train.lr"),
    ("steps zero", [*T, "--set", "train.steps=0"], "train.steps"),
    ("steps fractional", [*T, "--set", "train.steps=1.5"], "train.steps"),
    ("batch size zero", [*T, "--set", "train.batch_size=0"], "train.batch_size"),
    ("grad_accum does not divide", [*T, "--set", "train.grad_accum=3"], "must divide"),
    ("precision fp8", [*T, "--set", "train.precision=fp8"], "train.precision"),
    ("lr schedule unknown", [*T, "--set", "train.lr_schedule=linear"], "train.lr_schedule"),
    ("log format unknown", [*T, "--set", "train.log_format=xml"], "train.log_format"),
    ("keep no checkpoints", [*T, "--set", "train.keep_checkpoints=0"], "train.keep_checkpoints"),
    ("ema decay above 1", [*T, "--set", "train.ema.decay=1.5"], "train.ema.decay"),
    ("ema unknown key", [*T, "--set", "train.ema.speed=3"], "train.ema.speed"),
    ("betas one number", [*T, "--set", "train.betas=[0.9]"], "train.betas"),
    ("grad clip negative", [*T, "--set", "train.grad_clip=-1"], "train.grad_clip"),
    ("cond dropout 1", [*T, "--set", "train.cond_dropout=1"], "train.cond_dropout"),
    ("warmup negative", [*T, "--set", "train.warmup_steps=-5"], "train.warmup_steps"),
    ("unknown train key", [*T, "--set", "train.learning_rate=1e-3"], "train.learning_rate"),
    ("init_from a number", [*T, "--set", "train.init_from=3"], "train.init_from"),
    # train: registered things and their options
    ("network width negative", [*T, "--set", "network.hidden=-4"], "network"),
    ("network width a word", [*T, "--set", "network.hidden=abc"], "network.hidden"),
    ("network width fractional", [*T, "--set", "network.hidden=1.5"], "network.hidden"),
    ("network option typo", [*T, "--set", "network.hiden=3"], "network.hiden"),
    ("unknown network", [*T, "--set", "network.name=resnet"], "unknown network"),
    ("process parameter a word", [*T, "--set", "process.beta_max=abc"], "process.beta_max"),
    ("process parameter nan", [*T, "--set", "process.beta_max=.nan"], "process.beta_max"),
    ("process option typo", [*T, "--set", "process.beta_maks=3"], "process.beta_maks"),
    ("unknown process", [*T, "--set", "process.name=vpp"], "unknown process"),
    ("logits on a Gaussian run", [*T, "--set", "prediction.name=logits"], "logits"),
    ("unknown prediction", [*T, "--set", "prediction.name=score2"], "unknown parameterization"),
    ("unknown dataset", [*T, "--set", "data.name=moons3"], "unknown dataset"),
    ("test fraction above 1", [*T, "--set", "data.test_fraction=1.5"], "data.test_fraction"),
    ("data size a word", [*T, "--set", "data.n=many"], "data.n"),
    ("unknown weighting", [*T, "--set", "loss.weighting=snr2"], "loss.weighting"),
    ("unknown objective", [*T, "--set", "loss.objective=score_entropy"], "score_entropy"),
    ("objective for another network", [*T, "--set", "loss.objective=classification"], "neither goes without the other"),
    ("unknown time sampler", [*T, "--set", "loss.time_sampler.name=beta"], "unknown time sampler"),
    ("time sampler option typo", [*T, "--set", "loss.time_sampler.name=lognormal", "--set", "loss.time_sampler.mean=0"],
     "loss.time_sampler.mean"),
    ("unknown sampler in config", [*T, "--set", "sample.sampler=euler_a"], "unknown sampler"),
    ("sampler steps zero", [*T, "--set", "sample.steps=0"], "sample.steps"),
    ("sampler option unknown", [*T, "--set", "sample.options.churn=1"], "no option 'churn'"),
    ("sampler options not a mapping", [*T, "--set", "sample.options=3"], "sample.options"),
    # train: flags and output folder
    ("device banana", [*T, "--device", "banana"], "not a device"),
    ("device index past the last", [*T, "--device", "cuda:97"], "cuda"),
    ("--steps zero", [*T, "--steps", "0"], "--steps"),
    ("--steps a word", [*T, "--steps", "abc"], "--steps"),
    ("--out is a file", ["train", "{ws}/tiny.yaml", "--out", "{ws}/afile", "--quiet"], "is a file"),
    ("--out under a file", ["train", "{ws}/tiny.yaml", "--out", "{ws}/afile/run", "--quiet"], "which is a file"),
    ("resume a folder with no run", ["train", "{ws}/tiny.yaml", "--out", "{ws}/empty", "--resume", "--quiet"], "checkpoint"),
    ("unknown flag", [*T, "--stpes", "3"], "unrecognized arguments"),
    # sample
    ("sample a missing run", ["sample", "{ws}/norun"], "{ws}/norun"),
    ("sample an empty folder", ["sample", "{ws}/empty"], "checkpoint"),
    ("sample a config file", ["sample", "{ws}/tiny.yaml"], "checkpoint"),
    ("unknown sampler", [*S, "--sampler", "euler_a"], "unknown sampler"),
    ("sample steps zero", [*S, "--steps", "0"], "--steps"),
    ("sample n zero", [*S, "--n", "0"], "--n"),
    ("sample n a word", [*S, "--n", "ten"], "--n"),
    ("sample seed negative", [*S, "--seed", "-1"], "--seed"),
    ("unknown grid", [*S, "--grid", "fibonacci"], "fibonacci"),
    ("class of an unconditional model", [*S, "--class", "0"], "class-conditional"),
    ("negative class", [*S, "--class", "-1"], "--class"),
    ("cfg nan", [*S, "--class", "0", "--cfg", "nan"], "--cfg"),
    ("cfg without class", [*S, "--cfg", "1"], "needs --class"),
    ("gamma without classifier", [*S, "--gamma", "1"], "needs --classifier"),
    ("gamma negative", [*S, "--gamma", "-1"], "--gamma"),
    ("two guidances", [*S, "--class", "0", "--cfg", "1", "--classifier", "{ws}/run"], "choose one"),
    ("classifier not a classifier", [*S, "--class", "0", "--classifier", "{ws}/run"], "not a classifier run"),
    ("sample device banana", [*S, "--device", "banana"], "not a device"),
    ("sample --out is a file", ["sample", "{ws}/run", "--out", "{ws}/afile"], "is a file"),
    ("sample --out under a file", ["sample", "{ws}/run", "--out", "{ws}/afile/s"], "which is a file"),
    # eval
    ("eval n zero", [*E, "--n", "0"], "--n"),
    ("eval n above the held-out split", [*E, "--n", "100000"], "held-out"),
    ("eval rtol zero", [*E, "--nll", "--rtol", "0"], "--rtol"),
    ("eval rtol negative", [*E, "--nll", "--rtol", "-1"], "--rtol"),
    ("eval rtol nan", [*E, "--nll", "--rtol", "nan"], "--rtol"),
    ("eval probes zero", [*E, "--nll", "--probes", "0"], "--probes"),
    ("eval unknown divergence", [*E, "--nll", "--divergence", "skilling"], "--divergence"),
    ("eval --out a folder", [*E, "--out", "{ws}/empty"], "is a folder"),
    ("eval --out under a file", [*E, "--out", "{ws}/afile/m.json"], "which is a file"),
    ("eval unknown sampler", [*E, "--sampler", "euler_a"], "unknown sampler"),
    ("eval a missing run", ["eval", "{ws}/norun"], "{ws}/norun"),
    # check, demo, the command itself
    ("unknown check case", ["check", "vpp"], "vpp"),
    ("check n zero", ["check", "vp", "--n", "0"], "--n"),
    ("check alpha above 1", ["check", "vp", "--alpha", "2"], "--alpha"),
    ("check times zero", ["check", "vp", "--times", "0"], "--times"),
    ("demo unknown process", ["demo", "--process", "vpp", "--out", "{ws}/demo"], "vpp"),
    ("demo steps zero", ["demo", "--steps", "0", "--out", "{ws}/demo"], "--steps"),
    ("unknown command", ["trian"], "invalid choice"),
    ("no command", [], "required"),
]


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_mistake_is_one_line_and_writes_nothing(ws, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(ws)
    argv = [a.format(ws=ws) for a in argv]
    before = listing(ws)
    code = main(argv)
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("udm: error: "), err
    assert fragment.format(ws=ws) in lines[0], lines[0]
    assert listing(ws) == before, "a refused command changed the work folder"
    assert not (ws.parent / "escape").exists()


def test_the_catalogue_is_large_and_distinct():
    names = [c[0] for c in CLI_CASES]
    assert len(set(names)) == len(names) and len({tuple(c[1]) for c in CLI_CASES}) == len(CLI_CASES)
    assert len(CLI_CASES) + len(API_CASES) >= 80


def test_yaml_numbers_are_read_the_way_people_write_them(tmp_path):
    """``1e-3`` is a float in a config file and in --set (plain YAML 1.1 reads it as a string)."""
    config = {**TINY, "train": {**TINY["train"]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config).replace("batch_size: 32", "batch_size: 32\n  lr: 1e-4"))
    assert load_config(path)["train"]["lr"] == pytest.approx(1e-4)
    assert parse_yaml("2E+3") == 2000.0 and parse_yaml("-1.5e-2") == -0.015 and parse_yaml("abc") == "abc"


def _sample(**kw):
    den = udm.Denoiser(lambda x, t, c=None: torch.zeros_like(x), udm.get_process("vp"), "x0")
    return udm.sample(den, **{"sampler": "ddim", "steps": 3, "shape": (2, 2), **kw})


API_CASES = [
    ("validate not a mapping", lambda: validate([1, 2]), ConfigError, "mapping"),
    ("validate missing network", lambda: validate({"data": "two_moons", "process": "vp"}), ConfigError, "'network' is missing"),
    ("validate bad process option type", lambda: validate({**TINY, "process": {"name": "vp", "beta_max": "x"}}), ConfigError,
     "process.beta_max"),
    ("validate bad name", lambda: validate({**TINY, "name": "../x"}), ConfigError, "'name'"),
    ("unknown process", lambda: udm.get_process("vpp"), ValueError, "vpp"),
    ("unknown sampler", lambda: _sample(sampler="euler_a"), ValueError, "euler_a"),
    ("sampler option typo", lambda: _sample(eta2=1.0), ValueError, "eta2"),
    ("old K2 keyword", lambda: _sample(sampler="udm", kernel="K2", sigma_tilde=0.5), ValueError, "mix"),
    ("steps zero", lambda: _sample(steps=0), ValueError, "steps"),
    ("unknown grid", lambda: _sample(grid="fibonacci"), ValueError, "fibonacci"),
]


@pytest.mark.parametrize(("call", "kind", "fragment"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_mistake_raises_a_named_error(call, kind, fragment):
    with pytest.raises(kind) as info:
        call()
    assert fragment in str(info.value) and "\n" not in str(info.value)
