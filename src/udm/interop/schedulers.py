"""diffusers scheduler configs mapped exactly onto udm, or refused (docs/interop.md).

A diffusers ``scheduler_config.json`` says two things: what the network was
trained on (the noise schedule, what it predicts, which ``timestep`` it reads)
and how the pipeline samples (the update rule and its time grid). Both map onto
udm nouns; :func:`scheduler_map` returns them as one :class:`SchedulerMap`, and
:func:`denoiser_from` wraps a diffusers network as a :class:`udm.Denoiser`.

| scheduler (``_class_name``)     | process        | prediction       | timestep fed to the network    | sampler                    |
|---------------------------------|----------------|------------------|--------------------------------|----------------------------|
| DDPMScheduler                   | ddpm           | prediction_type  | t - 1                          | ddpm                       |
| DDIMScheduler                   | ddpm           | prediction_type  | t - 1                          | ddim (eta 0)               |
| DPMSolverMultistepScheduler     | ddpm           | prediction_type  | t - 1, or [k(sigma~)]          | ddim / dpmpp_2m / dpmpp_3m |
| UniPCMultistepScheduler         | ddpm           | prediction_type  | t - 1, or [k(sigma~)]          | unipc                      |
| EulerDiscreteScheduler          | ddpm           | prediction_type  | k(sigma~) (t - 1 at integer t) | euler, variable sigma      |
| EDMEulerScheduler               | edm            | edm (sigma_data) | c_noise = log(sigma)/4         | euler, variable sigma      |
| FlowMatchEulerDiscreteScheduler | rectified_flow | velocity         | N t                            | euler, variable t          |

Sampler options: ddpm's ``variance`` from ``variance_type`` (fixed_small / fixed_large);
dpmpp_3m with ``diffusers_compat`` (``solver_order`` 1, 2, 3 give ddim, dpmpp_2m,
dpmpp_3m); unipc's ``order`` and ``variant`` from ``solver_order`` and ``solver_type``;
``lower_order_final`` passed on; euler in the ``variable`` "sigma" (sigma~ = sigma/alpha,
diffusers' Euler and EDM steps) or "t" (the flow-matching step).

``prediction_type``: epsilon -> eps, v_prediction -> v, sample -> x0. The ddpm
process holds the scheduler's own alphas_cumprod in float64 (``beta_schedule``
linear, scaled_linear, squaredcos_cap_v2 = udm's cosine, including the 0.999
cap on beta; ``trained_betas``; ``rescale_betas_zero_snr``, which ends the
table at alpha_bar = 0 for DDIM/DDPM and at 2^-24 for the others, as diffusers
does); udm time t is diffusers' timestep k + 1 and t = 0 is clean data.
k(sigma~) is the fractional timestep where the scheduler's interpolation of
its sigma~ = sqrt((1 - alpha_bar)/alpha_bar) table meets sigma~(t): linear in
log sigma~ (``_sigma_to_t``) for Karras, Lu and exponential sigmas, linear in
sigma~ (``np.interp``) for EulerDiscrete's fractional "linspace" timesteps.
[k] is DPM-Solver's and UniPC's integer of it: rounded for Karras (and Lu)
sigmas, truncated by their int64 cast otherwise; Euler feeds k itself, or
log(sigma~)/4 with ``timestep_type="continuous"`` and v_prediction.
EDMEuler's v_prediction output is the negative of udm's edm target (it
denoises with c_skip x - c_out F), hence ``output_sign = -1``. One deliberate
difference: UniPC with ``solver_type="bh1"`` stepping into sigma = 0 returns NaN
in diffusers (0 * B(inf)); udm's unipc takes that step finitely.

``grid(steps)`` is the scheduler's ``set_timesteps(steps)`` in udm time,
computed in float64 (diffusers rounds some of it to float32): strictly
decreasing, ``steps + 1`` points, the last the scheduler's final point (clean
data, or t = 1 for ``set_alpha_to_one=False`` and ``final_sigmas_type="sigma_min"``).
The diffusers spacings of DDIM and DDPM are udm's ``leading``, ``trailing`` and
``linspace`` grids (:mod:`udm.samplers.grids`). Anything whose samples udm
would not reproduce (clipping, thresholding, SDE variants, dynamic shifting,
other solvers, an unknown key) raises :class:`~udm.errors.InteropError` naming
the key, its value and what is supported. Keys starting with ``_`` are metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..denoiser import Denoiser, EDMParameterization, Parameterization, get_parameterization
from ..errors import InteropError
from ..processes import get_process
from ..processes.base import Process
from ..processes.gaussian import ddpm_betas
from ..registry import Registry
from ..samplers.grids import GRIDS

Tensor = torch.Tensor
Config = dict[str, Any]


@dataclass(frozen=True)
class SchedulerMap:
    """A diffusers scheduler config in udm terms (module table).

    ``process``, ``prediction``, ``timestep`` and ``output_sign`` say how to read
    the network (:func:`denoiser_from`); ``sampler``, ``sampler_options`` and
    ``grid`` reproduce the scheduler's own sampling loop with ``udm.sample``.
    """

    process: Process
    prediction: Parameterization
    #: udm time t (what the Denoiser passes to the net) -> the network's ``timestep`` argument
    timestep: Callable[[Tensor], Tensor]
    #: the network's output times this is udm's target (-1 for EDMEuler's v_prediction)
    output_sign: float
    sampler: str
    sampler_options: dict[str, Any]
    #: steps -> the scheduler's set_timesteps(steps) grid in udm time (float64, decreasing)
    grid: Callable[[int], Tensor]


#: diffusers ``_class_name`` -> fn(config) -> SchedulerMap
SCHEDULERS: Registry[Callable[[Config], SchedulerMap]] = Registry("diffusers scheduler")

#: diffusers ``prediction_type`` -> udm parameterization
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "original_sample": "x0"}
#: diffusers ``beta_schedule`` -> udm DDPMSchedule ``beta_schedule`` (same betas; tests/test_interop_schedulers.py)
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
#: alphas_cumprod[-1] diffusers' Euler, DPM-Solver and UniPC use when rescale_betas_zero_snr makes it 0
CLAMPED_TERMINAL = 2.0**-24


# ----------------------------------------------------------------------------- reading a config


@dataclass(frozen=True)
class ConfigKeys:
    """What one scheduler's config may hold: every key read (with diffusers' default), the values
    reproduced exactly where not every value is, and the keys that do not change the samples."""

    defaults: dict[str, Any]
    allowed: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()


def read_config(config: Config, keys: ConfigKeys) -> Config:
    """``config`` completed with diffusers' defaults, or an InteropError for an unknown key or a value udm does not reproduce."""
    name = config.get("_class_name")
    known = set(keys.defaults) | set(keys.ignored)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise InteropError(
            f"{name}: config key {unknown[0]!r} (= {config[unknown[0]]!r}) is unknown to udm and may change the samples; "
            f"known keys: {', '.join(sorted(known))}"
        )
    cfg = {**keys.defaults, **{k: v for k, v in config.items() if k in keys.defaults}}
    for key, allowed in keys.allowed.items():
        refuse_unless(name, key, cfg[key], allowed)
    return cfg


def same_value(value: Any, allowed: Any) -> bool:
    """``value == allowed``, except that a bool equals only a bool (JSON's true is not the solver order 1)."""
    return value is allowed or (value == allowed and not isinstance(value, bool) and not isinstance(allowed, bool))


def refuse_unless(name: str, key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """InteropError naming ``key``, its ``value`` and the ``allowed`` values, unless the value is one of them."""
    if not any(same_value(value, a) for a in allowed):
        raise InteropError(
            f"{name}: {key}={value!r} cannot be reproduced exactly in udm; supported values: {', '.join(map(repr, allowed))} "
            "(set one in the scheduler config, or give another config with --scheduler PATH)"
        )


def scheduler_map(config: Config) -> SchedulerMap:
    """The udm equivalent of a diffusers scheduler config (``scheduler_config.json`` as a dict, with ``_class_name``)."""
    name = config.get("_class_name")
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise InteropError(
            f"unknown diffusers scheduler {name!r} (the config's _class_name); supported: {', '.join(SCHEDULERS.names())}"
        )
    return SCHEDULERS.get(name)(dict(config))


# ----------------------------------------------------------------------------- the network


class DiffusersNet(nn.Module):
    """A diffusers network as a udm net: ``net(x, t[, cond]) = output_sign * model(x, timestep(t), class_labels=cond).sample``.

    ``model`` is a diffusers ``UNet2DModel`` or any module with that forward;
    ``timestep`` maps udm time to the network's timestep (:class:`SchedulerMap`).
    A network with a learned time embedding (``time_embedding_type="learned"``,
    a table row per training timestep) takes integer timesteps only:
    ``integer_timesteps`` casts them and refuses a fractional one. The output
    keeps the model's dtype. ``null_class`` is the label the network was trained
    to read as "no label" (classifier-free guidance needs one; diffusers has no
    convention for it, udm's exports record theirs); with one, no label means the null label.
    """

    def __init__(
        self, model: nn.Module, timestep: Callable[[Tensor], Tensor], output_sign: float = 1.0, integer_timesteps: bool = False,
        null_class: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.null_class = null_class
        self.timestep = timestep
        self.output_sign = float(output_sign)
        self.integer_timesteps = integer_timesteps

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The network's output at udm time ``t``, as udm's parameterization target."""
        k = self.timestep(t)
        if self.integer_timesteps:
            rounded = torch.round(k)
            if not torch.equal(rounded, k):
                raise InteropError(
                    f"this network has a learned time embedding, a table of integer timesteps, but the sampler asked for timestep "
                    f"{float(k.reshape(-1)[0]):g}; use a grid of integer times (--grid trailing, leading or linspace) and a fixed-step sampler"
                )
            k = rounded.long()
        if cond is None and self.null_class is not None:
            cond = torch.full((x.shape[0],), self.null_class, dtype=torch.long, device=x.device)
        out = self.model(x, k, class_labels=cond).sample
        return out if self.output_sign == 1.0 else self.output_sign * out


def denoiser_from(model: nn.Module, config: Config, *, integer_timesteps: bool = False, null_class: int | None = None) -> Denoiser:
    """A :class:`udm.Denoiser` for a diffusers network trained with the scheduler ``config`` (see :func:`scheduler_map`).

    ``integer_timesteps`` and ``null_class``: see :class:`DiffusersNet`.
    """
    mapping = scheduler_map(config)
    net = DiffusersNet(model, mapping.timestep, mapping.output_sign, integer_timesteps, null_class)
    return Denoiser(net, mapping.process, mapping.prediction)


# ----------------------------------------------------------------------------- the DDPM table


TABLE_KEYS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
              "trained_betas": None, "rescale_betas_zero_snr": False}
TABLE_ALLOWED = {"beta_schedule": tuple(BETA_SCHEDULES)}
SPACINGS = ("leading", "trailing", "linspace")
THRESHOLD_KEYS = ("dynamic_thresholding_ratio", "sample_max_value")  # used only with thresholding=True (refused)


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. (2024, Alg. 1) in float64: shift sqrt(alpha_bar) so its last value is 0, scale to keep the first."""
    root = np.sqrt(alphas_cumprod)
    first, last = root[0], root[-1]
    return ((root - last) * (first / (first - last))) ** 2


def ddpm_process(cfg: Config, name: str, terminal: float) -> Process:
    """The ddpm process of a beta-table config; a zero-SNR table ends at ``terminal`` (0 or :data:`CLAMPED_TERMINAL`)."""
    n = cfg["num_train_timesteps"]
    if cfg["trained_betas"] is None and not cfg["rescale_betas_zero_snr"]:
        return get_process("ddpm", beta_schedule=BETA_SCHEDULES[cfg["beta_schedule"]], num_train_steps=n,
                           beta_start=cfg["beta_start"], beta_end=cfg["beta_end"])
    if cfg["trained_betas"] is None:
        betas = ddpm_betas(BETA_SCHEDULES[cfg["beta_schedule"]], n, cfg["beta_start"], cfg["beta_end"])
    else:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float64)
        if betas.shape != (n,):
            raise InteropError(f"{name}: trained_betas has {betas.size} values but num_train_timesteps={n}; make them agree")
    ac = np.cumprod(1.0 - betas)
    if cfg["rescale_betas_zero_snr"]:
        ac = rescale_zero_terminal_snr(ac)
        if terminal >= ac[-2]:
            raise InteropError(
                f"{name}: rescale_betas_zero_snr makes alphas_cumprod end at {ac[-2]:.3g}, {terminal:.3g} ({name} raises a "
                "final 0 to 2^-24), which is not decreasing, so no udm process has it; use DDIMScheduler or another beta schedule"
            )
        ac[-1] = terminal
    return get_process("ddpm", alphas_cumprod=ac)


def prediction_of(cfg: Config) -> Parameterization:
    """The udm parameterization of diffusers' ``prediction_type``."""
    return get_parameterization(PREDICTIONS[cfg["prediction_type"]])


def sigma_table(process: Process) -> Tensor:
    """diffusers' sigmas sqrt((1 - alpha_bar_k) / alpha_bar_k), k = 0..N-1, in float64."""
    ac = process.schedule.alphas_cumprod
    return ((1.0 - ac) / ac).sqrt()


def table_index(value: Tensor, table: Tensor) -> Tensor:
    """The fractional k where the piecewise-linear interpolation of the increasing ``table`` equals ``value``.

    diffusers' ``_sigma_to_t`` on log sigmas and the inverse of ``np.interp`` on sigmas:
    the segment is the last one starting at or below ``value`` (clamped to the table),
    the weight clipped to [0, 1].
    """
    low = (torch.searchsorted(table, value.contiguous(), right=True) - 1).clamp(0, table.numel() - 2)
    w = ((table[low] - value) / (table[low] - table[low + 1])).clamp(0.0, 1.0)
    return low + w


def identity(t: Tensor) -> Tensor:
    """The input unchanged (EDM: the timestep is the c_noise the parameterization already feeds)."""
    return t


def integer_timestep(t: Tensor) -> Tensor:
    """diffusers' timestep k = t - 1 on the integer grid."""
    return t - 1


#: How a scheduler makes its fractional timesteps k(sigma~) integers: not at all (Euler), ``np.round`` (DPM-Solver's
#: and UniPC's Karras sigmas), or by the int64 cast alone, which truncates (their other sigma schedules).
ROUNDINGS: dict[str | None, Callable[[Tensor], Tensor]] = {None: identity, "round": torch.round, "floor": torch.floor}


def table_timestep(process: Process, log_sigma: bool, rounding: str | None) -> Callable[[Tensor], Tensor]:
    """t -> t - 1 at integer t, else k(sigma~(t)) in the scheduler's interpolation (log or linear in sigma~), made integer by ``rounding``."""
    table = sigma_table(process)
    coordinate = table.log() if log_sigma else table
    to_integer = ROUNDINGS[rounding]

    def timestep(t: Tensor) -> Tensor:
        t64 = t.to(torch.float64)
        level = process.sigma_tilde(t64)
        k = to_integer(table_index(level.clamp_min(1e-10).log() if log_sigma else level, coordinate.to(t64.device)))
        return torch.where(t64 == t64.round(), t64 - 1, k).to(t.dtype)

    return timestep


# ----------------------------------------------------------------------------- grids


def check_steps(name: str, steps: int, most: int | None = None) -> None:
    """An InteropError unless ``steps`` is an integer in [1, most]."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1 or (most is not None and steps > most):
        limit = "" if most is None else f" and <= num_train_timesteps={most}"
        raise InteropError(f"{name}: cannot take {steps!r} steps; give an integer number of steps >= 1{limit}")


def close(name: str, positive: Tensor, end: float) -> Tensor:
    """The positive times then the scheduler's final time ``end``; a zero-length last step is refused."""
    if float(positive[-1]) <= end:
        raise InteropError(
            f"{name}: its last step goes from t={float(positive[-1]):g} to t={end:g} (zero length: diffusers spends an "
            "evaluation on it, or divides by zero); udm grids strictly decrease: use final_sigmas_type='zero' / "
            "set_alpha_to_one=true or another spacing"
        )
    return torch.cat([positive, torch.tensor([end], dtype=torch.float64)])


def spaced(process: Process, spacing: str, steps: int, offset: int) -> Tensor:
    """DDIM/DDPM's timestep_spacing (udm's ``leading``/``trailing``/``linspace`` grids): t = k + 1, then 0."""
    options = {"offset": offset} if spacing == "leading" else {}
    return GRIDS.get(spacing)(process, steps, **options)


def multistep_spaced(process: Process, spacing: str, steps: int, offset: int) -> Tensor:
    """DPM-Solver/UniPC's timestep_spacing: "leading" and "linspace" take steps + 1 points and drop the last positive one."""
    if spacing == "trailing":
        return spaced(process, spacing, steps, offset)
    grid = spaced(process, spacing, steps + 1, offset)
    return torch.cat([grid[:-2], grid[-1:]])


def level_grid(process: Process, kind: str, steps: int, t_start: float, t_end: float, rho: float = 7.0) -> Tensor:
    """``steps`` positive times from t_start to t_end uniform in sigma~^(1/rho) ("karras") or log sigma~ ("logsnr")."""
    if steps == 1:
        return torch.tensor([t_start], dtype=torch.float64)
    options = {"rho": rho} if kind == "karras" else {}
    return GRIDS.get(kind)(process, steps, t_start=t_start, t_end=t_end, **options)[:-1]


def time_of_sigma(name: str, process: Process, key: str, sigma: float) -> float:
    """The udm time where sigma~ = ``sigma``; refused outside the table (diffusers would clip the network's timestep there)."""
    table = sigma_table(process)
    if not float(table[0]) <= sigma <= float(table[-1]):
        raise InteropError(
            f"{name}: {key}={sigma!r} lies outside the trained sigmas [{float(table[0]):.6g}, {float(table[-1]):.6g}]; "
            "udm cannot reproduce the clipped timesteps there: leave it null or pick a value inside"
        )
    return float(process.t_from_sigma_tilde(sigma))


# ----------------------------------------------------------------------------- DDPM and DDIM


DDIM_KEYS = ConfigKeys(
    {**TABLE_KEYS, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon",
     "thresholding": False, "timestep_spacing": "leading"},
    {**TABLE_ALLOWED, "clip_sample": (False,), "thresholding": (False,), "prediction_type": ("epsilon", "v_prediction", "sample"),
     "timestep_spacing": SPACINGS, "set_alpha_to_one": (True, False)},
    ("clip_sample_range", *THRESHOLD_KEYS),
)


def ddim_grid(process: Process, cfg: Config, steps: int) -> Tensor:
    """DDIMScheduler steps from k to k - N // steps: its timesteps must be that chain; the last lands on its final alpha."""
    name, n = "DDIMScheduler", cfg["num_train_timesteps"]
    check_steps(name, steps, n)
    k = spaced(process, cfg["timestep_spacing"], steps, cfg["steps_offset"])[:-1] - 1
    prev = k - n // steps
    if not bool((prev[:-1] == k[1:]).all()):
        raise InteropError(
            f"{name}: with timestep_spacing={cfg['timestep_spacing']!r} and {steps} steps each step goes from timestep k to "
            f"k - {n // steps}, which is not the next timestep (timesteps {k.long().tolist()}); pick steps dividing {n} "
            "or timestep_spacing 'leading'"
        )
    last = float(prev[-1])
    end = last + 1 if last >= 0 else (0.0 if cfg["set_alpha_to_one"] else 1.0)
    return close(name, k + 1, end)


@SCHEDULERS.register("DDIMScheduler")
def ddim_scheduler(config: Config) -> SchedulerMap:
    """DDIMScheduler (eta = 0): udm's ddim on the DDPM process."""
    cfg = read_config(config, DDIM_KEYS)
    process = ddpm_process(cfg, "DDIMScheduler", 0.0)
    return SchedulerMap(process, prediction_of(cfg), integer_timestep, 1.0, "ddim", {"eta": 0.0},
                        partial(ddim_grid, process, cfg))


DDPM_KEYS = ConfigKeys(
    {**TABLE_KEYS, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon", "thresholding": False,
     "timestep_spacing": "leading", "steps_offset": 0},
    {**TABLE_ALLOWED, "variance_type": ("fixed_small", "fixed_large"), "clip_sample": (False,), "thresholding": (False,),
     "prediction_type": ("epsilon", "v_prediction", "sample"), "timestep_spacing": SPACINGS},
    ("clip_sample_range", *THRESHOLD_KEYS),
)


def ddpm_grid(process: Process, cfg: Config, steps: int) -> Tensor:
    """DDPMScheduler's timesteps then clean data; fixed_large noise on a last step from k > 0 is refused (udm adds none).

    (fixed_small there adds noise of standard deviation 1e-10, its variance clamp; udm adds none.)
    """
    name = "DDPMScheduler"
    check_steps(name, steps, cfg["num_train_timesteps"])
    times = spaced(process, cfg["timestep_spacing"], steps, cfg["steps_offset"])
    if cfg["variance_type"] == "fixed_large" and float(times[-2]) > 1:
        raise InteropError(
            f"{name}: variance_type='fixed_large' adds noise of variance 1 - alpha_bar on its last step (from timestep "
            f"{float(times[-2]) - 1:g} to clean data), which udm's ddpm does not; use fixed_small or a grid ending at timestep 0"
        )
    return times


@SCHEDULERS.register("DDPMScheduler")
def ddpm_scheduler(config: Config) -> SchedulerMap:
    """DDPMScheduler: udm's ancestral ddpm (fixed_small: posterior variance; fixed_large: beta)."""
    cfg = read_config(config, DDPM_KEYS)
    process = ddpm_process(cfg, "DDPMScheduler", 0.0)
    variance = {"fixed_small": "small", "fixed_large": "large"}[cfg["variance_type"]]
    return SchedulerMap(process, prediction_of(cfg), integer_timestep, 1.0, "ddpm", {"variance": variance},
                        partial(ddpm_grid, process, cfg))


# ----------------------------------------------------------------------------- DPM-Solver and UniPC


def multistep_grid(name: str, process: Process, cfg: Config, sigmas: str, ends: tuple[float, float], steps: int) -> Tensor:
    """DPM-Solver/UniPC's set_timesteps: the spacing, or Karras / log-uniform sigmas between ``ends``; then zero or sigma_min."""
    check_steps(name, steps, None if sigmas != "spaced" else cfg["num_train_timesteps"])
    if sigmas == "spaced":
        positive = multistep_spaced(process, cfg["timestep_spacing"], steps, cfg["steps_offset"])[:-1]
    else:
        positive = level_grid(process, sigmas, steps, *ends)
    return close(name, positive, 0.0 if cfg["final_sigmas_type"] == "zero" else 1.0)


def refuse_repeated_last_sigma(name: str, cfg: Config, sigmas: str) -> None:
    """final_sigmas_type='sigma_min' after Karras, Lu or exponential sigmas repeats their last sigma: refused."""
    if sigmas != "spaced" and cfg["final_sigmas_type"] == "sigma_min":
        raise InteropError(
            f"{name}: final_sigmas_type='sigma_min' repeats the last of its {sigmas} sigmas (a zero-length last step, "
            "which diffusers' multistep update divides by); supported with these sigmas: final_sigmas_type='zero'"
        )


DPM_KEYS = ConfigKeys(
    {**TABLE_KEYS, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False, "algorithm_type": "dpmsolver++",
     "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
     "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
     "final_sigmas_type": "zero", "lambda_min_clipped": -math.inf, "variance_type": None, "timestep_spacing": "linspace",
     "steps_offset": 0, "use_dynamic_shifting": False},
    {**TABLE_ALLOWED, "solver_order": (1, 2, 3), "prediction_type": ("epsilon", "v_prediction", "sample"),
     "thresholding": (False,), "algorithm_type": ("dpmsolver++", "deis"),  # diffusers runs "deis" as dpmsolver++
     "solver_type": ("midpoint", "logrho", "bh1", "bh2"),  # diffusers runs the last three as midpoint
     "lower_order_final": (True, False), "euler_at_final": (False, True), "use_karras_sigmas": (False, True),
     "use_exponential_sigmas": (False, True), "use_beta_sigmas": (False,), "use_lu_lambdas": (False, True),
     "use_flow_sigmas": (False,), "final_sigmas_type": ("zero", "sigma_min"), "variance_type": (None,),
     "timestep_spacing": SPACINGS, "use_dynamic_shifting": (False,)},
    (*THRESHOLD_KEYS, "flow_shift", "time_shift_type"),
)


def dpm_sigmas(cfg: Config) -> tuple[str, str]:
    """(grid kind, rounding of the timesteps) in diffusers' order of precedence: Karras, Lu, exponential, else the spacing.

    DPM-Solver rounds Karras and Lu timesteps except for squaredcos_cap_v2; its int64 cast truncates the others.
    """
    rounding = "floor" if cfg["beta_schedule"] == "squaredcos_cap_v2" else "round"
    if cfg["use_karras_sigmas"]:
        return "karras", rounding
    if cfg["use_lu_lambdas"]:
        return "logsnr", rounding
    if cfg["use_exponential_sigmas"]:
        return "logsnr", "floor"
    return "spaced", "floor"


@SCHEDULERS.register("DPMSolverMultistepScheduler")
def dpm_solver_multistep(config: Config) -> SchedulerMap:
    """DPMSolverMultistepScheduler (dpmsolver++, midpoint): ddim (order 1), dpmpp_2m or dpmpp_3m(diffusers_compat)."""
    name = "DPMSolverMultistepScheduler"
    cfg = read_config(config, DPM_KEYS)
    if cfg["euler_at_final"] and cfg["final_sigmas_type"] != "zero":
        raise InteropError(
            f"{name}: euler_at_final=True with final_sigmas_type='sigma_min' makes the last step first order, which udm's "
            "dpmpp samplers do not; supported: euler_at_final=False, or final_sigmas_type='zero' (last step first order anyway)"
        )
    process = ddpm_process(cfg, name, CLAMPED_TERMINAL)
    lowest = float(process.log_snr(float(process.t_max))) / 2
    if cfg["lambda_min_clipped"] > lowest:
        raise InteropError(
            f"{name}: lambda_min_clipped={cfg['lambda_min_clipped']!r} clips the schedule (its lowest half log-SNR is "
            f"{lowest:.6g}) and shortens the spacing; udm does not reproduce that: leave it at -inf"
        )
    sigmas, rounding = dpm_sigmas(cfg)
    refuse_repeated_last_sigma(name, cfg, sigmas)
    order = cfg["solver_order"]
    sampler, options = {1: ("ddim", {"eta": 0.0}), 2: ("dpmpp_2m", {"lower_order_final": cfg["lower_order_final"]}),
                        3: ("dpmpp_3m", {"lower_order_final": cfg["lower_order_final"], "diffusers_compat": True})}[order]
    timestep = integer_timestep if sigmas == "spaced" else table_timestep(process, True, rounding)
    grid = partial(multistep_grid, name, process, cfg, sigmas, (process.t_max, 1.0))
    return SchedulerMap(process, prediction_of(cfg), timestep, 1.0, sampler, options, grid)


UNIPC_KEYS = ConfigKeys(
    {**TABLE_KEYS, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False, "predict_x0": True,
     "solver_type": "bh2", "lower_order_final": True, "disable_corrector": [], "solver_p": None, "use_karras_sigmas": False,
     "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_flow_sigmas": False, "timestep_spacing": "linspace",
     "steps_offset": 0, "final_sigmas_type": "zero", "use_dynamic_shifting": False, "sigma_min": None, "sigma_max": None,
     "shift_terminal": None},
    {**TABLE_ALLOWED, "prediction_type": ("epsilon", "v_prediction", "sample"), "thresholding": (False,), "predict_x0": (True,),
     "solver_type": ("bh1", "bh2", "midpoint", "heun", "logrho"),  # diffusers runs the last three as bh2
     "lower_order_final": (True, False), "disable_corrector": ([],), "solver_p": (None,), "use_karras_sigmas": (False, True),
     "use_exponential_sigmas": (False, True), "use_beta_sigmas": (False,), "use_flow_sigmas": (False,),
     "timestep_spacing": SPACINGS, "final_sigmas_type": ("zero", "sigma_min"), "use_dynamic_shifting": (False,),
     "shift_terminal": (None,)},
    (*THRESHOLD_KEYS, "flow_shift", "time_shift_type"),
)


@SCHEDULERS.register("UniPCMultistepScheduler")
def unipc_multistep(config: Config) -> SchedulerMap:
    """UniPCMultistepScheduler (predict_x0, corrector on every step): udm's unipc."""
    name = "UniPCMultistepScheduler"
    cfg = read_config(config, UNIPC_KEYS)
    order = cfg["solver_order"]
    if not isinstance(order, int) or order < 1:
        raise InteropError(f"{name}: solver_order={order!r} is not a positive integer; supported values: 1, 2, 3, ...")
    process = ddpm_process(cfg, name, CLAMPED_TERMINAL)
    sigmas = "karras" if cfg["use_karras_sigmas"] else "logsnr" if cfg["use_exponential_sigmas"] else "spaced"
    refuse_repeated_last_sigma(name, cfg, sigmas)
    ends = (process.t_max, 1.0)
    if sigmas != "spaced":
        ends = tuple(t if cfg[key] is None else time_of_sigma(name, process, key, cfg[key])
                     for key, t in (("sigma_max", process.t_max), ("sigma_min", 1.0)))
    rounding = "round" if sigmas == "karras" else "floor"  # UniPC rounds Karras timesteps; its int64 cast truncates the others
    timestep = integer_timestep if sigmas == "spaced" else table_timestep(process, True, rounding)
    variant = cfg["solver_type"] if cfg["solver_type"] in ("bh1", "bh2") else "bh2"
    options = {"order": order, "variant": variant, "lower_order_final": cfg["lower_order_final"]}
    grid = partial(multistep_grid, name, process, cfg, sigmas, ends)
    return SchedulerMap(process, prediction_of(cfg), timestep, 1.0, "unipc", options, grid)


# ----------------------------------------------------------------------------- Euler: discrete, EDM, flow matching


EULER_KEYS = ConfigKeys(
    {**TABLE_KEYS, "prediction_type": "epsilon", "interpolation_type": "linear", "use_karras_sigmas": False,
     "use_exponential_sigmas": False, "use_beta_sigmas": False, "sigma_min": None, "sigma_max": None,
     "timestep_spacing": "linspace", "timestep_type": "discrete", "steps_offset": 0, "final_sigmas_type": "zero"},
    {**TABLE_ALLOWED, "prediction_type": tuple(PREDICTIONS), "interpolation_type": ("linear",),
     "use_karras_sigmas": (False, True, None), "use_exponential_sigmas": (False, True, None), "use_beta_sigmas": (False, None),
     "timestep_spacing": SPACINGS, "timestep_type": ("discrete", "continuous"), "final_sigmas_type": ("zero", "sigma_min")},
)


def euler_spaced(process: Process, cfg: Config, steps: int) -> Tensor:
    """EulerDiscreteScheduler's spaced times: DDIM's leading/trailing; "linspace" is not rounded, so its times
    are where sigma~ equals the table's linear interpolation at the fractional timesteps."""
    if cfg["timestep_spacing"] != "linspace":
        return spaced(process, cfg["timestep_spacing"], steps, cfg["steps_offset"])[:-1]
    k = torch.from_numpy(np.linspace(0, cfg["num_train_timesteps"] - 1, steps)[::-1].copy())
    table = sigma_table(process)
    low = k.floor().long().clamp(max=table.numel() - 2)
    level = table[low] + (k - low) * (table[low + 1] - table[low])
    return torch.where(k == k.round(), k + 1, process.t_from_sigma_tilde(level))


def euler_grid(process: Process, cfg: Config, sigmas: str, steps: int) -> Tensor:
    """EulerDiscreteScheduler's set_timesteps: spaced sigmas, or Karras / log-uniform ones between their ends or the config's."""
    name = "EulerDiscreteScheduler"
    check_steps(name, steps, cfg["num_train_timesteps"])
    positive = euler_spaced(process, cfg, steps)
    if sigmas != "spaced":
        t_max = positive[0] if cfg["sigma_max"] is None else time_of_sigma(name, process, "sigma_max", cfg["sigma_max"])
        t_min = positive[-1] if cfg["sigma_min"] is None else time_of_sigma(name, process, "sigma_min", cfg["sigma_min"])
        positive = level_grid(process, sigmas, steps, float(t_max), float(t_min))
    return close(name, positive, 0.0 if cfg["final_sigmas_type"] == "zero" else 1.0)


def log_level(process: Process, t: Tensor) -> Tensor:
    """log(sigma~(t)) / 4: EulerDiscrete's "continuous" timestep for v_prediction (EDM's c_noise)."""
    return (0.25 * process.sigma_tilde(t.to(torch.float64)).log()).to(t.dtype)


@SCHEDULERS.register("EulerDiscreteScheduler")
def euler_discrete(config: Config) -> SchedulerMap:
    """EulerDiscreteScheduler (no churn): udm's euler in the sigma~ variable on the DDPM process."""
    name = "EulerDiscreteScheduler"
    cfg = read_config(config, EULER_KEYS)
    process = ddpm_process(cfg, name, CLAMPED_TERMINAL)
    sigmas = "karras" if cfg["use_karras_sigmas"] else "logsnr" if cfg["use_exponential_sigmas"] else "spaced"
    if cfg["timestep_type"] == "continuous" and cfg["prediction_type"] == "v_prediction":
        timestep = partial(log_level, process)
    else:
        timestep = table_timestep(process, sigmas != "spaced", None)
    grid = partial(euler_grid, process, cfg, sigmas)
    return SchedulerMap(process, prediction_of(cfg), timestep, 1.0, "euler", {"variable": "sigma"}, grid)


EDM_KEYS = ConfigKeys(
    {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "sigma_schedule": "karras", "prediction_type": "epsilon",
     "rho": 7.0, "final_sigmas_type": "zero"},
    {"sigma_schedule": ("karras", "exponential"), "prediction_type": ("epsilon", "v_prediction"), "final_sigmas_type": ("zero",)},
    ("num_train_timesteps",),  # sizes the training table only; set_timesteps does not read it
)


def edm_grid(process: Process, cfg: Config, steps: int) -> Tensor:
    """EDMEulerScheduler's set_timesteps: Karras (rho) or log-uniform sigmas from sigma_max to sigma_min, then 0."""
    check_steps("EDMEulerScheduler", steps)
    kind = "karras" if cfg["sigma_schedule"] == "karras" else "logsnr"
    positive = level_grid(process, kind, steps, cfg["sigma_max"], cfg["sigma_min"], cfg["rho"])
    return close("EDMEulerScheduler", positive, 0.0)


@SCHEDULERS.register("EDMEulerScheduler")
def edm_euler(config: Config) -> SchedulerMap:
    """EDMEulerScheduler (no churn): udm's euler on the EDM process with EDM preconditioning."""
    cfg = read_config(config, EDM_KEYS)
    process = get_process("edm", sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"])
    sign = -1.0 if cfg["prediction_type"] == "v_prediction" else 1.0
    return SchedulerMap(process, EDMParameterization(cfg["sigma_data"]), identity, sign, "euler", {"variable": "sigma"},
                        partial(edm_grid, process, cfg))


FLOW_KEYS = ConfigKeys(
    {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "invert_sigmas": False, "shift_terminal": None,
     "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False, "stochastic_sampling": False},
    {"use_dynamic_shifting": (False,), "invert_sigmas": (False,), "shift_terminal": (None, 0.0), "use_karras_sigmas": (False,),
     "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,), "stochastic_sampling": (False,)},
    ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type"),  # dynamic shifting only
)


def shifted(shift: float, sigma: np.ndarray | float) -> np.ndarray | float:
    """SD3's time shift sigma -> shift sigma / (1 + (shift - 1) sigma)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_grid(cfg: Config, steps: int) -> Tensor:
    """FlowMatchEulerDiscreteScheduler's set_timesteps: shift(linspace(1, shift(1/N), steps)), then 0 (t = sigma)."""
    check_steps("FlowMatchEulerDiscreteScheduler", steps)
    n, shift = cfg["num_train_timesteps"], cfg["shift"]
    sigma_max, sigma_min = shifted(shift, 1.0), shifted(shift, 1.0 / n)  # the shifted training table's ends, shifted again
    sigmas = shifted(shift, np.linspace(sigma_max * n, sigma_min * n, steps) / n)
    return torch.cat([torch.from_numpy(sigmas), torch.zeros(1, dtype=torch.float64)])


def flow_timestep(n: int, t: Tensor) -> Tensor:
    """The network's timestep N sigma, with sigma = t on the rectified-flow path."""
    return n * t


@SCHEDULERS.register("FlowMatchEulerDiscreteScheduler")
def flow_match_euler(config: Config) -> SchedulerMap:
    """FlowMatchEulerDiscreteScheduler (static shift): udm's euler in t on rectified flow; the network predicts eps - x0."""
    name = "FlowMatchEulerDiscreteScheduler"
    cfg = read_config(config, FLOW_KEYS)
    if not cfg["shift"] > 0:
        raise InteropError(f"{name}: shift={cfg['shift']!r} must be positive; supported values: any number > 0")
    return SchedulerMap(get_process("rectified_flow"), get_parameterization("velocity"),
                        partial(flow_timestep, cfg["num_train_timesteps"]), 1.0, "euler", {"variable": "t"},
                        partial(flow_grid, cfg))


__all__ = ["SCHEDULERS", "DiffusersNet", "SchedulerMap", "denoiser_from", "scheduler_map"]
