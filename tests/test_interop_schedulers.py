"""diffusers scheduler configs in udm (udm.interop.schedulers): tables, grids, refusals and sampling parity.

A tiny random ``UNet2DModel`` (class-conditional, float64) goes through ``save_pretrained`` and
``from_pretrained``; udm's sampler on ``denoiser_from(model, scheduler_config)`` over ``grid(steps)``
must give the images of diffusers' own loop (``scale_model_input``, the model, ``step``) from the
same noise. diffusers builds its tables and sigmas in float32 and casts the sample to float32
inside ``step``; every scheduler call here runs under :func:`_float64`, which turns each float32
the scheduler asks of torch (dtype arguments, ``.float()``, the default dtype) or of its module's
numpy into float64, so both sides compute in float64 (the network runs outside it; its time
embedding is float32 on both sides). Then the two agree to rounding: every case is asserted at
1e-5 and measures 1e-12 or below. (This generalizes tests/test_diffusers_parity.py's table swap.)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import udm
from udm.errors import InteropError
from udm.interop.schedulers import SCHEDULERS, DiffusersNet, denoiser_from, scheduler_map

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

Tensor = torch.Tensor
LABELS = torch.tensor([0, 1, 2, 0])
TOL = 1e-5
#: schedulers whose sample is x / alpha (the VE state); the others step x itself
VE_STATE = {"EulerDiscreteScheduler"}
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


class _Float64Mode(TorchFunctionMode):
    """Each float32 a torch call asks for (a dtype argument, ``.float()``) becomes float64."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        kwargs = {k: torch.float64 if v is torch.float32 else v for k, v in (kwargs or {}).items()}
        return (torch.Tensor.double if func is torch.Tensor.float else func)(*args, **kwargs)


class _Float64Numpy:
    """numpy, except that ``np.float32`` is float64 (the scheduler modules' casts of their sigmas and timesteps)."""

    float32 = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@contextmanager
def _float64(cls: type) -> Iterator[None]:
    """Run a diffusers scheduler's code in float64 (module docstring)."""
    module = sys.modules[cls.__module__]
    patch = mock.patch.object(module, "np", _Float64Numpy()) if hasattr(module, "np") else nullcontext()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # tensors made without a dtype (EDMEuler's exponential sigmas)
    try:
        with patch, _Float64Mode():
            yield
    finally:
        torch.set_default_dtype(default)


def _scheduler(config: dict[str, Any], folder: Path) -> tuple[Any, dict[str, Any]]:
    """The diffusers scheduler of ``config`` (built in float64) and its saved scheduler_config.json, read back."""
    cls = getattr(diffusers, config["_class_name"])
    with _float64(cls):
        sched = cls.from_config({k: v for k, v in config.items() if k != "_class_name"})
    sched.save_config(folder)
    return sched, json.loads((folder / "scheduler_config.json").read_text())


def _diffusers_sample(sched: Any, model: torch.nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
    """The pipelines' loop: x <- step(model(scale_model_input(x, t), t), t, x) over ``sched.timesteps``."""
    cls = type(sched)
    stochastic = {"generator": generator} if cls is diffusers.DDPMScheduler else {}
    for t in sched.timesteps:
        with _float64(cls):
            x_in = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        out = model(x_in, t, class_labels=LABELS).sample
        with _float64(cls):
            x = sched.step(out, t, x, **stochastic).prev_sample
    return x


def _noise(seed: int = 1) -> Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """A tiny class-conditional UNet2DModel with random weights, saved and loaded back as a diffusers folder, float64."""
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=3,
    )
    with torch.no_grad():
        model.conv_out.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(0))  # outputs of about unit size
    folder = tmp_path_factory.mktemp("unet")
    model.double().save_pretrained(folder)
    loaded = diffusers.UNet2DModel.from_pretrained(folder, torch_dtype=torch.float64).eval().requires_grad_(False)
    assert loaded.dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    return loaded


# ----------------------------------------------------------------------------- sampling parity


def _cases() -> list[Any]:
    """(config, steps) per scheduler family and prediction type."""
    cases = []

    def add(name: str, steps: int, predictions: tuple[str, ...], **config: Any) -> None:
        for prediction in predictions:
            extra = {} if prediction is None else {"prediction_type": prediction}
            cases.append(pytest.param({"_class_name": name, **config, **extra}, steps, id=f"{name}-{prediction}-{steps}"))

    every = ("epsilon", "v_prediction", "sample")
    add("DDIMScheduler", 6, every, clip_sample=False, set_alpha_to_one=False, steps_offset=1, **SD)
    add("DDIMScheduler", 5, ("v_prediction", "sample"), clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    add("DDPMScheduler", 6, ("epsilon",), clip_sample=False)
    add("DDPMScheduler", 5, ("v_prediction",), clip_sample=False, variance_type="fixed_large", timestep_spacing="linspace")
    add("DPMSolverMultistepScheduler", 8, every, use_karras_sigmas=True, **SD)
    add("DPMSolverMultistepScheduler", 7, ("epsilon",), solver_order=3, timestep_spacing="leading", steps_offset=1,
        beta_schedule="squaredcos_cap_v2")
    add("DPMSolverMultistepScheduler", 6, ("v_prediction",), solver_order=1, rescale_betas_zero_snr=True, timestep_spacing="trailing",
        **SD)
    add("UniPCMultistepScheduler", 6, ("epsilon",), solver_order=3, timestep_spacing="trailing")
    add("UniPCMultistepScheduler", 6, ("v_prediction",), use_karras_sigmas=True)
    add("EulerDiscreteScheduler", 7, every, use_karras_sigmas=True, **SD)
    add("EulerDiscreteScheduler", 7, ("epsilon",))  # "linspace": fractional timesteps, sigma~ interpolated linearly
    add("EulerDiscreteScheduler", 5, ("v_prediction",), rescale_betas_zero_snr=True, timestep_spacing="trailing", **SD)
    add("EulerDiscreteScheduler", 6, ("v_prediction",), use_exponential_sigmas=True, timestep_type="continuous")
    add("EDMEulerScheduler", 6, ("epsilon", "v_prediction"))
    add("EDMEulerScheduler", 5, ("epsilon",), sigma_schedule="exponential", sigma_data=1.0)
    add("FlowMatchEulerDiscreteScheduler", 6, (None,), shift=3.0)
    return cases


@pytest.mark.parametrize(("config", "steps"), _cases())
def test_sampling_matches_the_diffusers_loop(unet: torch.nn.Module, tmp_path: Path, config: dict, steps: int) -> None:
    """udm's sampler, options and grid from the map reproduce the scheduler's loop in float64 (module docstring).

    DDPM draws its noise from the same generator on both sides (one N(0, I) draw per step but the last).
    """
    sched, saved = _scheduler(config, tmp_path)
    mapping = scheduler_map(saved)
    with _float64(type(sched)):
        sched.set_timesteps(steps)
    start = getattr(sched, "init_noise_sigma", 1.0) * _noise()  # flow matching starts from plain noise
    ref = _diffusers_sample(sched, unet, start.clone(), torch.Generator().manual_seed(2))
    times = mapping.grid(steps)
    x_T = start * float(mapping.process.alpha(times[0])) if config["_class_name"] in VE_STATE else start
    out, info = udm.sample(
        denoiser_from(unet, saved), mapping.sampler, times=times, x_T=x_T, cond=LABELS, dtype=torch.float64,
        return_info=True, generator=torch.Generator().manual_seed(2), **mapping.sampler_options,
    )
    err = float((out - ref).abs().max())
    print(f"{config['_class_name']} {config.get('prediction_type', 'velocity')} {steps} steps: max |udm - diffusers| = {err:.3g}")
    assert info["nfe"] == steps
    assert bool(torch.isfinite(ref).all()) and float(ref.abs().max()) > 0.1
    assert err <= TOL


def test_diffusers_net_keeps_dtype_and_sign(unet: torch.nn.Module) -> None:
    """DiffusersNet = output_sign * model(x, timestep(t), class_labels).sample, in the model's dtype."""
    x, t = _noise(), torch.full((4,), 500.0, dtype=torch.float64)
    net = DiffusersNet(unet, lambda s: s - 1, -1.0)
    out = net(x, t, LABELS)
    assert out.dtype == torch.float64
    assert torch.equal(out, -unet(x, t - 1, class_labels=LABELS).sample)


# ----------------------------------------------------------------------------- tables


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "trained", "zero_snr"])
@pytest.mark.parametrize("name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_process_table_is_the_schedulers(tmp_path: Path, schedule: str, name: str) -> None:
    """The map's alphas_cumprod is diffusers' (float64 on both sides, 1e-12), including the cosine cap at beta = 0.999.

    Zero terminal SNR ends DDIM's table at 0 and Euler's at 2^-24, as diffusers does.
    """
    config: dict[str, Any] = {"_class_name": name, "clip_sample": False, **SD}
    if schedule == "trained":
        config["trained_betas"] = np.linspace(1e-4, 0.03, 1000).tolist()
    elif schedule == "zero_snr":
        config["rescale_betas_zero_snr"] = True
    else:
        config["beta_schedule"] = schedule
    if name == "EulerDiscreteScheduler":
        del config["clip_sample"]
    sched, saved = _scheduler(config, tmp_path)
    ours = scheduler_map(saved).process.schedule.alphas_cumprod
    ref = sched.alphas_cumprod
    assert ref.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)
    if schedule == "squaredcos_cap_v2":
        assert float(1 - ours[-1] / ours[-2]) == pytest.approx(0.999, abs=1e-12)
    if schedule == "zero_snr":
        assert float(ours[-1]) == (0.0 if name == "DDIMScheduler" else 2.0**-24)


def test_zero_terminal_ddpm_schedule() -> None:
    """alphas_cumprod may end at 0: alpha_N = 0, sigma_N = 1; alpha^2 is linear on the last segment and invertible there."""
    ac = udm.get_process("ddpm").schedule.alphas_cumprod.clone()
    ac[-1] = 0.0
    zero = udm.get_process("ddpm", alphas_cumprod=ac)
    positive = udm.get_process("ddpm", alphas_cumprod=torch.cat([ac[:-1], ac[-2:-1] / 2]))
    n = 1000.0
    assert float(zero.alpha(n)) == 0.0 and float(zero.sigma(n)) == 1.0 and float(zero.log_snr(n)) == -math.inf
    inner = torch.tensor([0.0, 0.5, 1.0, 500.25, 998.5, 999.0], dtype=torch.float64)
    assert torch.equal(zero.alpha(inner), positive.alpha(inner))  # the table before the last segment is untouched
    tail = torch.tensor([999.0, 999.25, 999.5, 999.99, 1000.0], dtype=torch.float64)
    torch.testing.assert_close(zero.alpha(tail) ** 2, float(ac[-2]) * (n - tail), rtol=1e-12, atol=0.0)
    back = zero.t_from_log_snr(zero.log_snr(torch.cat([inner[1:], tail])))
    torch.testing.assert_close(back, torch.cat([inner[1:], tail]), rtol=0.0, atol=1e-9)


# ----------------------------------------------------------------------------- grids


def _grid_cases() -> list[Any]:
    cases = [
        ("DDIMScheduler", {"steps_offset": 1}, 10), ("DDIMScheduler", {"steps_offset": 1}, 7),
        ("DDIMScheduler", {"timestep_spacing": "trailing"}, 10), ("DDIMScheduler", {"set_alpha_to_one": False, "steps_offset": 1}, 8),
        ("DDPMScheduler", {"steps_offset": 1}, 7), ("DDPMScheduler", {"timestep_spacing": "trailing"}, 7),
        ("DDPMScheduler", {"timestep_spacing": "linspace"}, 7),
        ("DPMSolverMultistepScheduler", {"timestep_spacing": "leading", "steps_offset": 1}, 7),
        ("DPMSolverMultistepScheduler", {}, 6), ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}, 7),
        ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min", "timestep_spacing": "leading"}, 5),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 7), ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True}, 7),
        ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True}, 7),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "beta_schedule": "squaredcos_cap_v2"}, 7),
        ("UniPCMultistepScheduler", {"timestep_spacing": "leading", "steps_offset": 1}, 5),
        ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "sigma_max": 20.0, "sigma_min": 0.1}, 6),
        ("UniPCMultistepScheduler", {"use_exponential_sigmas": True}, 6),
        ("EulerDiscreteScheduler", {}, 7), ("EulerDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1}, 7),
        ("EulerDiscreteScheduler", {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"}, 7),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}, 6),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_max": 50.0}, 6),
        ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}, 6),
        ("EDMEulerScheduler", {}, 6), ("EDMEulerScheduler", {"sigma_schedule": "exponential", "rho": 5.0}, 6),
        ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, 6), ("FlowMatchEulerDiscreteScheduler", {}, 1),
    ]
    return [pytest.param(name, cfg, steps, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in cfg.items())}-{steps}")
            for name, cfg, steps in cases]


@pytest.mark.parametrize(("name", "extra", "steps"), _grid_cases())
def test_grid_and_timesteps_are_the_schedulers(tmp_path: Path, name: str, extra: dict, steps: int) -> None:
    """grid(steps) is set_timesteps(steps) in udm time: the same noise levels (sigma~, or sigma for EDM and flows),
    and ``timestep`` of its times is what the scheduler feeds the network (integer timesteps: t = k + 1 exactly)."""
    config = {"_class_name": name, **extra}
    if name in ("DDIMScheduler", "DDPMScheduler"):
        config["clip_sample"] = False
    sched, saved = _scheduler(config, tmp_path)
    mapping = scheduler_map(saved)
    with _float64(type(sched)):
        sched.set_timesteps(steps)
    grid = mapping.grid(steps)
    assert grid.dtype == torch.float64 and len(grid) == steps + 1 and bool((grid[1:] < grid[:-1]).all())
    fed = mapping.timestep(grid[:-1])
    if name == "EDMEulerScheduler":
        fed = 0.25 * grid[:-1].log()  # EDM's c_noise, fed by the edm parameterization through the identity
    torch.testing.assert_close(fed, sched.timesteps.to(torch.float64), rtol=0.0, atol=1e-9)
    if not any(extra.get(k) for k in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas")):
        if not sched.timesteps.is_floating_point():
            assert torch.equal(grid[:-1], sched.timesteps.to(torch.float64) + 1)
    if hasattr(sched, "sigmas"):
        levels = mapping.process.sigma(grid) / mapping.process.alpha(grid)
        levels = grid if name in ("EDMEulerScheduler", "FlowMatchEulerDiscreteScheduler") else levels
        torch.testing.assert_close(levels, sched.sigmas.to(torch.float64), rtol=1e-12, atol=1e-12)
    else:  # DDIM, DDPM: the final point is alphas_cumprod[-1 or 0] (set_alpha_to_one)
        assert float(grid[-1]) == (1.0 if extra.get("set_alpha_to_one") is False else 0.0)


@pytest.mark.parametrize(("spacing", "options"), [("leading", {"offset": 1}), ("trailing", {}), ("linspace", {})])
def test_diffusers_spacings_are_udm_grids(spacing: str, options: dict) -> None:
    """GRIDS leading/trailing/linspace are DDIMScheduler's timestep_spacing (t = k + 1) on any integer-time process."""
    sched = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=options.get("offset", 0))
    sched.set_timesteps(8)
    grid = udm.get_grid(spacing, udm.get_process("ddpm"), 8, **options)
    assert torch.equal(grid, torch.cat([sched.timesteps.to(torch.float64) + 1, torch.zeros(1, dtype=torch.float64)]))
    with pytest.raises(ValueError, match="integer times"):
        udm.get_grid(spacing, udm.get_process("vp"), 8)


# ----------------------------------------------------------------------------- refusals


REFUSED = [
    ({"_class_name": "PNDMScheduler"}, ["unknown diffusers scheduler 'PNDMScheduler'", "DDIMScheduler", "EulerDiscreteScheduler"]),
    ({"num_train_timesteps": 1000}, ["unknown diffusers scheduler None", "_class_name"]),
    ({"_class_name": "DDIMScheduler"}, ["clip_sample=True", "supported values: False"]),
    ({"_class_name": "DDIMScheduler", "clip_sample": False, "thresholding": True}, ["thresholding=True"]),
    ({"_class_name": "DDIMScheduler", "clip_sample": False, "karras": 1}, ["'karras'", "unknown", "known keys"]),
    ({"_class_name": "DDPMScheduler", "clip_sample": False, "variance_type": "learned_range"},
     ["variance_type='learned_range'", "'fixed_small', 'fixed_large'"]),
    ({"_class_name": "DDPMScheduler", "clip_sample": False, "beta_schedule": "sigmoid"}, ["beta_schedule='sigmoid'", "'squaredcos_cap_v2'"]),
    ({"_class_name": "DDIMScheduler", "clip_sample": False, "trained_betas": [1e-4, 2e-4]}, ["trained_betas has 2 values"]),
    ({"_class_name": "EulerDiscreteScheduler", "rescale_betas_zero_snr": True}, ["rescale_betas_zero_snr", "not decreasing"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}, ["algorithm_type='sde-dpmsolver++'", "'dpmsolver++'"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_type": "heun"}, ["solver_type='heun'", "'midpoint'"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "euler_at_final": True, "final_sigmas_type": "sigma_min"}, ["euler_at_final=True"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
     ["lambda_min_clipped=-5.1"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_beta_sigmas": True}, ["use_beta_sigmas=True"]),
    ({"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
     ["final_sigmas_type='sigma_min'", "karras", "'zero'"]),
    ({"_class_name": "UniPCMultistepScheduler", "use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"},
     ["final_sigmas_type='sigma_min'", "logsnr"]),
    ({"_class_name": "UniPCMultistepScheduler", "disable_corrector": [1]}, ["disable_corrector=[1]", "supported values: []"]),
    ({"_class_name": "UniPCMultistepScheduler", "predict_x0": False}, ["predict_x0=False"]),
    ({"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"}, ["interpolation_type='log_linear'", "'linear'"]),
    ({"_class_name": "EDMEulerScheduler", "final_sigmas_type": "sigma_min"}, ["final_sigmas_type='sigma_min'", "'zero'"]),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, ["use_dynamic_shifting=True", "False"]),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 0.1}, ["shift_terminal=0.1"]),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": True}, ["stochastic_sampling=True"]),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True}, ["invert_sigmas=True"]),
]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "; " in message
    return message


@pytest.mark.parametrize(("config", "fragments"), REFUSED, ids=[f"{c.get('_class_name')}-{f[0][:30]}" for c, f in REFUSED])
def test_refused_configs_name_key_value_and_supported(config: dict, fragments: list[str]) -> None:
    """A config udm would not reproduce is one InteropError line: the key, its value, what is supported."""
    with pytest.raises(InteropError) as err:
        scheduler_map(config)
    message = _one_line(err)
    for fragment in fragments:
        assert fragment in message


REFUSED_GRIDS = [
    ({"_class_name": "DDIMScheduler", "timestep_spacing": "trailing"}, 7, ["not the next timestep", "dividing 1000"]),
    ({"_class_name": "DDIMScheduler", "set_alpha_to_one": False}, 10, ["zero length"]),
    ({"_class_name": "DDPMScheduler", "variance_type": "fixed_large", "timestep_spacing": "trailing"}, 10, ["fixed_large"]),
    ({"_class_name": "DDIMScheduler"}, 1001, ["1001 steps", ">= 1 and <= num_train_timesteps=1000"]),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True, "sigma_max": 1e4}, 10, ["sigma_max=10000.0", "outside"]),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, 10, ["zero length"]),
    ({"_class_name": "EDMEulerScheduler"}, 0, ["cannot take 0 steps", ">= 1"]),
]


@pytest.mark.parametrize(("config", "steps", "fragments"), REFUSED_GRIDS, ids=[f[0][:30] for _, _, f in REFUSED_GRIDS])
def test_refused_grids(config: dict, steps: int, fragments: list[str]) -> None:
    """Step counts the scheduler's chain does not support exactly are refused when the grid is built."""
    if config["_class_name"] in ("DDIMScheduler", "DDPMScheduler"):
        config = {**config, "clip_sample": False}
    with pytest.raises(InteropError) as err:
        scheduler_map(config).grid(steps)
    message = _one_line(err)
    for fragment in fragments:
        assert fragment in message


def test_every_supported_scheduler_maps_its_defaults() -> None:
    """Each registered scheduler maps diffusers' own default config (clipping off where it defaults on)."""
    for name in SCHEDULERS.names():
        cls = getattr(diffusers, name)
        config = {**cls().config, "_class_name": name}
        if "clip_sample" in config:
            config["clip_sample"] = False
        mapping = scheduler_map(config)
        assert udm.SAMPLERS.get(mapping.sampler) is not None
        assert len(mapping.grid(10)) == 11
