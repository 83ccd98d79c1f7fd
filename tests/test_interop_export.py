"""`export_diffusers`: a udm run as a diffusers folder that diffusers alone loads and runs exactly as udm does.

Runs are tiny DDPM UNets on scikit-learn's 8x8 digits, built from a config and
saved as a sealed checkpoint with *random* weights (a freshly initialised UNet
outputs exactly 0, which would compare equal whatever the mapping). Timestep
convention: diffusers' timestep k is udm's time t = k + 1. Comparisons run in
float64; diffusers builds its scheduler tables in float32, so those are checked
against udm's to float32 precision and then replaced by udm's float64 ones
(as in tests/test_diffusers_parity.py).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import udm
from udm.errors import InteropError
from udm.interop.export import diffusers_unet, export_diffusers
from udm.nets.unet import UNet
from udm.training import Experiment, save_checkpoint

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

Tensor = torch.Tensor
ATOL = 1e-6
STEPS_K = (0, 1, 37, 500, 998, 999)
TINY_UNET = {
    "name": "unet", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4],
    "head_dim": 8, "norm_groups": 4, "dropout": 0.0,
}
RUNS = {
    "eps_linear": ({"name": "ddpm", "beta_schedule": "linear"}, "eps", {}),
    "v_cosine": ({"name": "ddpm", "beta_schedule": "cosine"}, "v", {}),
    "x0_scaled_linear": ({"name": "ddpm", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, "x0", {}),
    "eps_class_conditional": ({"name": "ddpm"}, "eps", {"num_classes": 10}),
}


def _config(process: dict, prediction: str, network: dict, data: str = "digits") -> dict[str, Any]:
    return {"name": "export_tiny", "seed": 0, "data": {"name": data, "test_fraction": 0.1}, "process": process,
            "prediction": {"name": prediction}, "network": network}


def _randomize(net: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    """Random weights of the usual scale (weights ~ 1/sqrt(fan_in), norms ~ 1), so every layer matters."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in net.state_dict().items():
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if p.ndim > 1:
            state[name] = noise / math.sqrt(p[0].numel())
        elif "norm" in name and name.endswith("weight"):
            state[name] = 1.0 + 0.1 * noise
        else:
            state[name] = 0.1 * noise
    return state


def make_run(folder: Path, process: dict, prediction: str, network: dict, data: str = "digits") -> Path:
    """A run folder whose checkpoint holds random 'model' and (different) 'ema' weights for this config."""
    exp = Experiment.from_config(_config(process, prediction, network, data))
    tensors = {"model": _randomize(exp.net, 1), "ema": _randomize(exp.net, 2)}
    save_checkpoint(folder / "checkpoints", 1, tensors, {"config": exp.config, "data": exp.data})
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {name: make_run(root / name, dict(p), pred, {**TINY_UNET, **net}) for name, (p, pred, net) in RUNS.items()}


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    return {name: export_diffusers(run, root / name) for name, run in runs.items()}


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@pytest.fixture
def diffusers_warnings() -> Iterator[list[str]]:
    """Warnings diffusers logs (it does not propagate to the root logger, so caplog misses them)."""
    handler = _Warnings()
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def _labels(exp: Experiment, n: int) -> Tensor | None:
    return None if exp.net.null_class is None else torch.arange(n) % (exp.net.null_class + 1)  # includes the null label


def _load_unet(folder: Path) -> Any:
    return diffusers.UNet2DModel.from_pretrained(folder / "unet", torch_dtype=torch.float64).eval()


def _float64(sched: Any, exp: Experiment) -> Any:
    """Replace the scheduler's float32 tables by udm's float64 ones (call before and after set_timesteps)."""
    ac = exp.process.schedule.alphas_cumprod
    sched.betas = exp.process.schedule.betas.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = ac.clone()
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


# ----------------------------------------------------------------------------- the folder


def test_folder_layout_and_configs(exported: dict[str, Path]) -> None:
    """diffusers' pipeline layout; the scheduler config names udm's schedule and prediction; `_udm` notes are private keys."""
    out = exported["v_cosine"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    ]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDIMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["beta_schedule"], sched["prediction_type"]) == ("DDIMScheduler", "squaredcos_cap_v2", "v_prediction")
    assert sched["clip_sample"] is False and sched["set_alpha_to_one"] is True and sched["num_train_timesteps"] == 1000
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert unet["norm_num_groups"] == 4 and unet["block_out_channels"] == [16, 32] and unet["attention_head_dim"] == 8
    assert unet["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"] and unet["up_block_types"] == ["AttnUpBlock2D", "UpBlock2D"]
    assert unet["_udm"]["timestep"] == "diffusers timestep k is udm time t = k + 1"
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temporary folder left


@pytest.mark.parametrize("name", list(RUNS))
def test_network_outputs_match(name: str, runs: dict[str, Path], exported: dict[str, Path], diffusers_warnings: list[str]) -> None:
    """UNet2DModel.from_pretrained(OUT/unet)(x, k) equals udm's network at t = k + 1 (float64), with every weight mapped."""
    exp = Experiment.from_run(str(runs[name]))
    unet = _load_unet(exported[name])
    assert [w for w in diffusers_warnings if "pip install accelerate" not in w] == []  # nothing about the config or weights
    from safetensors.torch import load_file

    assert set(load_file(str(exported[name] / "unet" / "diffusion_pytorch_model.safetensors"))) == set(unet.state_dict())
    net = exp.net.to(torch.float64)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = _labels(exp, 4)
    worst = 0.0
    with torch.no_grad():
        for k in STEPS_K:
            ours = net(x, torch.full((4,), k + 1.0, dtype=torch.float64), labels)
            theirs = unet(x, torch.full((4,), k), class_labels=labels).sample
            worst = max(worst, float((ours - theirs).abs().max()))
    assert float(ours.abs().mean()) > 0.01  # the outputs are not trivially zero
    assert worst < ATOL, worst


def test_ema_or_model_weights(runs: dict[str, Path], tmp_path: Path) -> None:
    """use_ema=True exports the EMA copy, use_ema=False the trained weights."""
    from safetensors.torch import load_file

    run = runs["eps_linear"]
    ema = load_file(str(export_diffusers(run, tmp_path / "ema") / "unet" / "diffusion_pytorch_model.safetensors"))
    raw = load_file(str(export_diffusers(run, tmp_path / "raw", use_ema=False) / "unet" / "diffusion_pytorch_model.safetensors"))
    for exp, weights in ((Experiment.from_run(str(run)), ema), (Experiment.from_run(str(run), use_ema=False), raw)):
        assert torch.equal(weights["conv_in.weight"], exp.net.state_dict()["conv_in.weight"])
    assert not torch.equal(ema["conv_in.weight"], raw["conv_in.weight"])


@pytest.mark.parametrize("name", list(RUNS))
def test_ddim_samples_match(name: str, runs: dict[str, Path], exported: dict[str, Path], diffusers_warnings: list[str]) -> None:
    """DDIMScheduler.from_pretrained(OUT/scheduler) + the exported UNet sample what udm's ddim sampler samples."""
    exp = Experiment.from_run(str(runs[name]))
    unet = _load_unet(exported[name])
    sched = diffusers.DDIMScheduler.from_pretrained(exported[name] / "scheduler")
    assert [w for w in diffusers_warnings if "pip install accelerate" not in w] == []
    ours_ac = exp.process.schedule.alphas_cumprod
    assert float((sched.alphas_cumprod.to(torch.float64) - ours_ac).abs().max()) < 1e-6  # the config's schedule is udm's
    sched = _float64(sched, exp)
    sched.set_timesteps(10)
    sched = _float64(sched, exp)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = _labels(exp, 4)
    x = x_T.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            x = sched.step(unet(x, k, class_labels=labels).sample, k, x).prev_sample
        times = [float(k) + 1.0 for k in sched.timesteps] + [0.0]
        model = exp.model(exp.net.to(torch.float64))
        ours = udm.sample(model, "ddim", times=times, x_T=x_T, cond=labels, dtype=torch.float64)
    assert float(ours.abs().mean()) > 0.01
    assert float((ours - x).abs().max()) < ATOL


def test_ddpm_scheduler_export(runs: dict[str, Path], tmp_path: Path, diffusers_warnings: list[str]) -> None:
    """scheduler='ddpm' writes a DDPMPipeline whose DDPMScheduler uses udm's posterior variance and no clipping."""
    out = export_diffusers(runs["eps_linear"], tmp_path / "ddpm", scheduler="ddpm")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    sched = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    assert diffusers_warnings == []
    assert (sched.config.variance_type, sched.config.clip_sample, sched.config.prediction_type) == ("fixed_small", False, "epsilon")
    exp = Experiment.from_run(str(runs["eps_linear"]))
    sched = _float64(sched, exp)
    x_t, x0 = torch.randn(2, 3, 4, dtype=torch.float64).unbind(0)
    for k in (1, 500, 999):
        mean, var = exp.process.posterior(x_t, x0, k + 1.0, float(k))
        assert abs(float(sched._get_variance(k)) - float(var.reshape(-1)[0])) < 1e-12


def test_pipeline_runs_without_udm(exported: dict[str, Path]) -> None:
    """A Python that cannot import udm loads the folder with diffusers' DDIMPipeline and samples from it."""
    code = (
        "import sys; sys.modules['udm'] = None\n"
        "import torch, diffusers\n"
        f"pipe = diffusers.DDIMPipeline.from_pretrained({str(exported['eps_linear'])!r})\n"
        "out = pipe(batch_size=2, num_inference_steps=3, output_type='np', generator=torch.Generator().manual_seed(0))\n"
        "print(type(pipe.unet).__name__, type(pipe.scheduler).__name__, out.images.shape)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[-2] == "UNet2DModel DDIMScheduler (2, 8, 8, 1)"


# ----------------------------------------------------------------------------- the other time embedding, options, schedules


def test_positional_time_embedding_folds_the_shift(runs: dict[str, Path], tmp_path: Path) -> None:
    """time_embedding='positional': diffusers' sinusoid of k with k -> k + 1 folded into linear_1.

    Exact once diffusers' sinusoid is evaluated in float64 with udm's frequencies;
    stock diffusers rounds k w to float32, which moves the outputs by ~1e-7 here.
    """
    run = runs["eps_linear"]
    out = export_diffusers(run, tmp_path / "positional", time_embedding="positional")
    assert json.loads((out / "unet" / "config.json").read_text())["time_embedding_type"] == "positional"
    exp = Experiment.from_run(str(run))
    net, unet = exp.net.to(torch.float64), _load_unet(out)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ks = torch.tensor(STEPS_K)
    x = x[:1].expand(len(ks), -1, -1, -1)
    with torch.no_grad():
        ours = net(x, ks.to(torch.float64) + 1.0)
        stock = unet(x, ks).sample
        freqs = net.cond_embed.time.embed.freqs.to(torch.float64)

        def sinusoid64(k: Tensor) -> Tensor:
            args = k.to(torch.float64)[:, None] * freqs[None, :]
            return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

        unet.time_proj.forward = sinusoid64
        exact = unet(x, ks).sample
    assert float((ours - exact).abs().max()) < ATOL
    assert float((ours - stock).abs().max()) < 1e-5


def _random_unet(**options: Any) -> UNet:
    net = UNet(**{"in_channels": 1, "image_size": 8, "channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1,
                  "attn_resolutions": (4,), "head_dim": 8, "norm_groups": 4, "dropout": 0.0, **options}).eval()
    net.load_state_dict(_randomize(net, 0))
    return net.to(torch.float64)


@pytest.mark.parametrize(
    "options",
    [{"scale_shift": True}, {"resblock_updown": True}, {"attn_resolutions": (8, 4), "num_res_blocks": 2},
     {"attn_resolutions": ()}, {"channel_mult": (1, 2, 2), "resblock_updown": True, "scale_shift": True, "num_classes": 3},
     {"time_embedding": "fourier", "time_scale": 0.02}, {"out_channels": 2}],
)
def test_unet_options_map_exactly(options: dict[str, Any]) -> None:
    """scale_shift, resblock_updown, attention anywhere, class labels, Fourier time embeddings: exact, every key mapped."""
    net = _random_unet(**options)
    config, weights = diffusers_unet(net, 1000)
    unet = diffusers.UNet2DModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    assert set(unet.state_dict()) == set(weights)
    unet.load_state_dict(weights)
    unet = unet.eval().to(torch.float64)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 2, 3]) if "num_classes" in options else None
    with torch.no_grad():
        for k in (0, 999):
            ours = net(x, torch.full((3,), k + 1.0, dtype=torch.float64), labels)
            assert float((ours - unet(x, k, class_labels=labels).sample).abs().max()) < ATOL


def test_custom_schedule_exports_as_trained_betas(tmp_path: Path) -> None:
    """A custom alphas_cumprod (50 steps, network time_scale 20) becomes trained_betas and a 50-row time table."""
    ac = torch.cumprod(1.0 - torch.linspace(1e-3, 0.2, 50, dtype=torch.float64), 0)
    run = make_run(tmp_path / "run", {"name": "ddpm", "alphas_cumprod": ac.tolist()}, "eps", TINY_UNET)
    out = export_diffusers(run, tmp_path / "out")
    sched = diffusers.DDIMScheduler.from_pretrained(out / "scheduler")
    assert sched.config.num_train_timesteps == 50 and sched.config.trained_betas is not None
    assert float((sched.alphas_cumprod.to(torch.float64) - ac).abs().max()) < 1e-6
    exp = Experiment.from_run(str(run))
    assert exp.net.cond_embed.time.time_scale == 20.0
    net, unet = exp.net.to(torch.float64), _load_unet(out)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for k in (0, 25, 49):
            assert float((net(x, k + 1.0) - unet(x, k).sample).abs().max()) < ATOL
    with pytest.raises(InteropError, match=r"time_scale 20\) is not diffusers' positional sinusoid.*time_embedding='learned'"):
        export_diffusers(run, tmp_path / "positional", time_embedding="positional")


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("process", "prediction", "network", "data", "message"),
    [
        ({"name": "vp"}, "eps", TINY_UNET, "digits",
         "process 'vp' has no diffusers equivalent: diffusers' DDPM and DDIM schedulers, those of UNet2DModel's pipelines, "
         "run the discrete DDPM chain only (continuous-time VP has no table of N discrete alphas_cumprod); "
         "export a run trained with process 'ddpm'"),
        ({"name": "rectified_flow"}, "velocity", TINY_UNET, "digits",
         "process 'rectified_flow' has no diffusers equivalent: diffusers' DDPM and DDIM schedulers, those of UNet2DModel's "
         "pipelines, run the discrete DDPM chain only (FlowMatchEulerDiscreteScheduler steps rectified flow, "
         "but no diffusers pipeline pairs it with UNet2DModel"),
        ({"name": "edm"}, "edm", TINY_UNET, "digits", "process 'edm' has no diffusers equivalent"),
        ({"name": "ddpm"}, "score", TINY_UNET, "digits",
         "prediction 'score' has no diffusers prediction_type (diffusers has epsilon, v_prediction, sample); "
         "export a run trained with prediction eps, v, x0"),
        ({"name": "ddpm"}, "eps", {"name": "mlp", "hidden": 16, "depth": 1}, "two_moons",
         "network 'mlp' has no diffusers equivalent: only udm's 'unet' maps onto diffusers' UNet2DModel; "
         "export a run trained with network 'unet'"),
        ({"name": "ddpm"}, "eps", {**TINY_UNET, "norm_groups": None}, "digits",
         "the UNet's GroupNorms use [4, 8, 12, 16] groups (udm's default picks the count by width) and UNet2DModel has one "
         "norm_num_groups for every GroupNorm; retrain with network.norm_groups set"),
    ],
)
def test_refusals_name_the_part(tmp_path: Path, process: dict, prediction: str, network: dict, data: str, message: str) -> None:
    """What has no exact diffusers equivalent is one InteropError naming it; nothing is written."""
    network = {k: v for k, v in network.items() if v is not None}
    run = make_run(tmp_path / "run", process, prediction, network, data)
    with pytest.raises(InteropError) as info:
        export_diffusers(run, tmp_path / "out")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_norm_groups_option_keeps_the_default_unet() -> None:
    """network.norm_groups (added for this export) fixes every GroupNorm's groups; unset, the UNet is as before.

    Parameter names and shapes do not depend on it, so existing checkpoints load unchanged.
    """
    from udm.nets.unet import num_groups

    options = {"in_channels": 1, "image_size": 8, "channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1}
    default, fixed = UNet(**options), UNet(**options, norm_groups=4)
    norms = [m for m in default.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(m.num_groups == num_groups(m.num_channels) for m in norms) and len({m.num_groups for m in norms}) > 1
    assert {m.num_groups for m in fixed.modules() if isinstance(m, torch.nn.GroupNorm)} == {4}
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in fixed.state_dict().items()}
    with pytest.raises(ValueError, match=r"norm_groups must be >= 1 and divide every level width \[16, 32\], got 5"):
        UNet(**options, norm_groups=5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"skip_rescale": True}, "the UNet uses skip_rescale"),
        ({"image_size": 6, "channel_mult": (1, 2, 2)}, "image size 6 is not divisible by 2^2"),
        ({"attn_resolutions": (8, 4), "num_heads": 2}, "the UNet's attention heads have different widths [8, 16]"),
    ],
)
def test_unet_refusals(options: dict[str, Any], message: str) -> None:
    net = UNet(**{"in_channels": 1, "image_size": 8, "channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1,
                  "attn_resolutions": (4,), "head_dim": 8, "norm_groups": 4, **options})
    with pytest.raises(InteropError) as info:
        diffusers_unet(net, 1000)
    assert message in str(info.value)


def test_existing_output_and_bad_options_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    """A non-empty OUT is never overwritten; an empty folder is filled; unknown options are named."""
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(InteropError, match=r"export folder .*busy already exists and is not empty; choose a new folder or remove it"):
        export_diffusers(runs["eps_linear"], busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert (export_diffusers(runs["eps_linear"], tmp_path / "empty") / "model_index.json").is_file()
    with pytest.raises(InteropError, match="unknown diffusers scheduler 'euler'; choose one of: ddim, ddpm"):
        export_diffusers(runs["eps_linear"], tmp_path / "x", scheduler="euler")
    with pytest.raises(InteropError, match="unknown time_embedding 'fourier'; choose one of: learned, positional"):
        export_diffusers(runs["eps_linear"], tmp_path / "y", time_embedding="fourier")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]
