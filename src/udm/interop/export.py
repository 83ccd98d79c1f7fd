"""udm runs written as diffusers folders: ``export_diffusers(RUN, OUT)`` (``udm export RUN --to diffusers OUT``).

The folder is diffusers' own pipeline layout, loadable with diffusers alone (no
udm import):

    OUT/model_index.json                              DDIMPipeline (or DDPMPipeline)
    OUT/unet/config.json                              UNet2DModel config
    OUT/unet/diffusion_pytorch_model.safetensors      the run's weights (EMA by default)
    OUT/scheduler/scheduler_config.json               DDIMScheduler (or DDPMScheduler)

so ``UNet2DModel.from_pretrained(OUT / "unet")``, ``DDIMScheduler.from_pretrained(OUT / "scheduler")``
and ``DDIMPipeline.from_pretrained(OUT)`` work. Only what diffusers computes
*exactly* as udm does is exported; everything else is refused with one
:class:`~udm.errors.InteropError` naming the part that has no diffusers
equivalent and what to do instead.

What is exported, and how
-------------------------

| udm                                        | diffusers                                                  |
|--------------------------------------------|------------------------------------------------------------|
| process ``ddpm``, N steps                  | ``num_train_timesteps=N``; timestep k is udm time t = k + 1 |
| beta_schedule linear / scaled_linear       | ``beta_schedule`` linear / scaled_linear (same betas)      |
| beta_schedule cosine                       | ``squaredcos_cap_v2`` (same betas, max_beta 0.999)         |
| custom ``alphas_cumprod``                  | ``trained_betas`` = 1 - abar_k / abar_{k-1}                |
| prediction eps / v / x0                    | ``prediction_type`` epsilon / v_prediction / sample        |
| samplers: no clipping, last step to t = 0  | ``clip_sample=False``, ``set_alpha_to_one=True`` (DDIM)    |
| ddpm sampler's posterior variance          | ``variance_type="fixed_small"`` (DDPM)                     |
| default uniform grid from t = N            | ``timestep_spacing="trailing"``                            |
| network ``unet``                           | ``UNet2DModel``                                            |
| level i with / without attention           | ``Attn{Down,Up}Block2D`` / ``{Down,Up}Block2D``            |
| ``resblock_updown``                        | ``Resnet{Downsample,Upsample}Block2D``, ``{down,up}sample_type="resnet"`` |
| ``channels * channel_mult``                | ``block_out_channels``                                     |
| ``num_res_blocks``                         | ``layers_per_block``                                       |
| ``norm_groups`` G (GroupNorm eps 1e-6)     | ``norm_num_groups = attn_norm_num_groups = G``, ``norm_eps=1e-6`` |
| attention heads of width d                 | ``attention_head_dim=d``                                   |
| ``scale_shift``                            | ``resnet_time_scale_shift="scale_shift"``                  |
| ``num_classes`` K (+ null label K)         | ``num_class_embeds=K+1`` (pass ``class_labels``; K = null) |
| time embedding of t = k + 1                | ``time_proj`` and ``time_embedding`` (below)               |

The time embedding, two ways (``time_embedding=``):

* ``"learned"`` (default): ``time_embedding_type="learned"``; ``time_proj`` is
  the table of udm's embedding of t = k + 1 for k = 0..N-1, so any embedding
  (sinusoidal, Fourier) and any time_scale export exactly;
* ``"positional"``: diffusers' sinusoid of k (``flip_sin_to_cos=True``,
  ``freq_shift=0``), the shift k -> k + 1 folded into ``time_embedding.linear_1``
  (sinusoidal embeddings with time_scale 1 only).

The fold: cos/sin(w (k + 1)) is a fixed rotation of cos/sin(w k), so each
(cos, sin) column pair of linear_1 is rotated by the angle w (:func:`_fold_shift`).
Level i maps to ``down_blocks[i]`` and ``up_blocks[L - 1 - i]``.

Parameter names, module by module (:data:`RESBLOCK_KEYS`, :data:`ATTENTION_KEYS`,
:data:`RESAMPLE_KEYS`, :data:`TOP_KEYS`): ``down.{n}.0`` -> ``down_blocks.{i}.resnets.{j}``
(or ``.downsamplers.0``), ``down.{n}.1`` -> ``down_blocks.{i}.attentions.{j}``,
``mid.{0,1,2}`` -> ``mid_block.resnets.0 / attentions.0 / resnets.1``,
``up.{n}.*`` -> ``up_blocks.{i}.resnets.{j} / attentions.{j} / upsamplers.0``;
the fused ``attn.qkv`` is split into ``to_q``, ``to_k``, ``to_v``.

What is refused
---------------

* any process but discrete ``ddpm`` with Gaussian noise: continuous VP / VE /
  sub-VP, EDM, blur, masking, ... (diffusers' DDPM and DDIM schedulers run the
  discrete chain only); rectified flow too: FlowMatchEulerDiscreteScheduler
  takes the same Euler steps on timestep 1000 t, but no diffusers pipeline
  pairs it with UNet2DModel, its ``step`` rounds the sample to float32 and
  its fractional timesteps rule out the exact ``"learned"`` time table;
* predictions other than eps, v and x0 (score, velocity, edm, pfgm, logits);
* networks other than ``unet`` (mlp, dit, transformers, classifier);
* UNets whose GroupNorms do not share one group count (udm's default
  ``num_groups`` rule gives 16 groups at 64 channels; set ``network.norm_groups``),
  whose attention layers differ in head width, that use ``skip_rescale``
  (UNet2DModel rescales the middle block only), or whose image size is not
  divisible by 2^(levels - 1) (diffusers upsamples by exactly 2);
* ``time_embedding="positional"`` with a Fourier embedding or time_scale != 1.

Numerics: diffusers evaluates its ``"positional"`` sinusoid in float32 (k w
rounded to float32, up to ~6e-5 rad at k = 999, with float32 frequencies that
differ from udm's in the last bit), which no export can undo. The default
``"learned"`` table holds udm's own embedding rounded once to float32, so a
float64 diffusers UNet matches udm's network to ~1e-9 and 10-step DDIM samples
to ~1e-7 (tests/test_interop_export.py); with ``"positional"`` the network
differs by ~1e-7 and eps-prediction samples by ~1e-5 (x0 = (x - sigma eps) / alpha
multiplies an eps error by sigma/alpha ~ 160 at k = 999). The table's price: timesteps must be integers in [0, N),
which is what the DDPM, DDIM, PNDM, DPM-Solver and UniPC schedulers pass;
schedulers with fractional timesteps (Euler, Heun, LMS) need ``"positional"``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .._version import __version__
from ..atomic import check_writable
from ..errors import InteropError
from ..nets.embeddings import SinusoidalEmbedding
from ..nets.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample
from ..processes import DDPMSchedule, GaussianProcess, Process

Tensor = torch.Tensor

#: the diffusers release the written folders were checked against (recorded as ``_diffusers_version``)
DIFFUSERS_VERSION = "0.42.1"
#: udm prediction -> diffusers ``prediction_type``
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
#: udm ``DDPMSchedule.beta_schedule`` -> diffusers ``beta_schedule`` (the same betas; "custom" becomes ``trained_betas``)
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
#: ``scheduler=`` -> (pipeline class, scheduler class)
PIPELINES = {"ddim": ("DDIMPipeline", "DDIMScheduler"), "ddpm": ("DDPMPipeline", "DDPMScheduler")}
#: ``time_embedding=`` choices (diffusers' ``time_embedding_type``)
TIME_EMBEDDINGS = ("learned", "positional")
#: why a process that looks close to a diffusers scheduler is still refused (added to the refusal)
PROCESS_REASONS = {
    "vp": "continuous-time VP has no table of N discrete alphas_cumprod",
    "vp_cosine": "continuous-time VP has no table of N discrete alphas_cumprod",
    "rectified_flow": "FlowMatchEulerDiscreteScheduler steps rectified flow, but no diffusers pipeline pairs it with UNet2DModel, "
    "its step rounds the sample to float32 and its fractional timesteps 1000 t rule out the exact time table",
}
#: diffusers' timestep k is udm's time t = k + TIME_OFFSET on a DDPM process (udm.processes.gaussian)
TIME_OFFSET = 1.0

#: udm ResBlock submodule -> ResnetBlock2D submodule
RESBLOCK_KEYS: dict[str, str | tuple[str, ...]] = {
    "norm1": "norm1", "conv1": "conv1", "emb": "time_emb_proj", "norm2": "norm2", "conv2": "conv2", "skip": "conv_shortcut",
}
#: udm AttentionBlock submodule -> diffusers Attention submodule (a tuple: the rows are split in that order)
ATTENTION_KEYS: dict[str, str | tuple[str, ...]] = {"norm": "group_norm", "attn.qkv": ("to_q", "to_k", "to_v"), "attn.proj": "to_out.0"}
#: udm Downsample / Upsample -> Downsample2D / Upsample2D
RESAMPLE_KEYS: dict[str, str | tuple[str, ...]] = {"conv": "conv"}
#: udm UNet top-level module -> UNet2DModel module (the time MLP's first layer may be folded, see the module docstring)
TOP_KEYS: dict[str, str | tuple[str, ...]] = {
    "conv_in": "conv_in",
    "cond_embed.time.mlp.0": "time_embedding.linear_1",
    "cond_embed.time.mlp.2": "time_embedding.linear_2",
    "cond_embed.classes.embedding": "class_embedding",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
#: udm parameters the time embedding replaces (the Fourier frequencies are baked into the "learned" table)
TIME_BUFFERS = ("cond_embed.time.embed.freqs",)


def _refuse(what: str, todo: str) -> InteropError:
    return InteropError(f"{what}; {todo}")


# ----------------------------------------------------------------------------- process and prediction


def diffusers_scheduler_config(process: Process, prediction: str, scheduler: str = "ddim") -> dict[str, Any]:
    """The diffusers scheduler config of a udm DDPM process and prediction, or an InteropError saying why none is exact.

    Why these values: udm's samplers never clip x0_hat and end at clean data
    (``set_alpha_to_one``), its DDPM sampler uses the posterior variance
    (``fixed_small``), and its default uniform grid starting at t = N is
    diffusers' ``"trailing"`` spacing.
    """
    if scheduler not in PIPELINES:
        raise InteropError(f"unknown diffusers scheduler {scheduler!r}; choose one of: {', '.join(PIPELINES)}")
    if not (isinstance(process, GaussianProcess) and isinstance(process.schedule, DDPMSchedule)):
        why = PROCESS_REASONS.get(process.name, "")
        raise _refuse(
            f"process {process.name!r} has no diffusers equivalent: diffusers' DDPM and DDIM schedulers, those of "
            f"UNet2DModel's pipelines, run the discrete DDPM chain only{f' ({why})' if why else ''}",
            "export a run trained with process 'ddpm'",
        )
    if prediction not in PREDICTION_TYPES:
        raise _refuse(
            f"prediction {prediction!r} has no diffusers prediction_type (diffusers has {', '.join(PREDICTION_TYPES.values())})",
            f"export a run trained with prediction {', '.join(PREDICTION_TYPES)}",
        )
    schedule: DDPMSchedule = process.schedule
    config: dict[str, Any] = {
        "_class_name": PIPELINES[scheduler][1],
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": schedule.num_train_steps,
        "prediction_type": PREDICTION_TYPES[prediction],
        "clip_sample": False,
        "thresholding": False,
        "timestep_spacing": "trailing",
        "steps_offset": 0,
    }
    if schedule.beta_schedule in BETA_SCHEDULES:
        config.update(
            beta_schedule=BETA_SCHEDULES[schedule.beta_schedule], beta_start=schedule._beta_start,
            beta_end=schedule._beta_end, trained_betas=None,
        )
    else:
        config.update(beta_schedule="linear", trained_betas=[float(b) for b in schedule.betas])
    if scheduler == "ddim":
        config.update(set_alpha_to_one=True, rescale_betas_zero_snr=False)
    else:
        config.update(variance_type="fixed_small")
    return config


# ----------------------------------------------------------------------------- network


def _is_down(layer: nn.Module) -> bool:
    return isinstance(layer, Downsample) or (isinstance(layer, ResBlock) and layer.resample == "down")


def _is_up(layer: nn.Module) -> bool:
    return isinstance(layer, Upsample) or (isinstance(layer, ResBlock) and layer.resample == "up")


def _block_pairs(net: UNet) -> tuple[list[tuple[str, str, Mapping]], list[bool], list[bool]]:
    """(udm prefix, diffusers prefix, key table) for every block, and which down / up levels have attention.

    Levels are read off the module lists: a down level ends at its resampler
    (or the list's end), an up level at its upsampler (or the list's end).
    """
    pairs: list[tuple[str, str, Mapping]] = []
    down_attn: list[bool] = []
    level, j = 0, 0
    for n, layers in enumerate(net.down):
        if _is_down(layers[0]):
            pairs.append((f"down.{n}.0", f"down_blocks.{level}.downsamplers.0",
                          RESBLOCK_KEYS if isinstance(layers[0], ResBlock) else RESAMPLE_KEYS))
            level, j = level + 1, 0
            continue
        pairs.append((f"down.{n}.0", f"down_blocks.{level}.resnets.{j}", RESBLOCK_KEYS))
        if len(layers) > 1:
            pairs.append((f"down.{n}.1", f"down_blocks.{level}.attentions.{j}", ATTENTION_KEYS))
        if j == 0:
            down_attn.append(len(layers) > 1)
        j += 1
    pairs += [("mid.0", "mid_block.resnets.0", RESBLOCK_KEYS), ("mid.1", "mid_block.attentions.0", ATTENTION_KEYS),
              ("mid.2", "mid_block.resnets.1", RESBLOCK_KEYS)]
    up_attn: list[bool] = []
    level, j = 0, 0
    for n, layers in enumerate(net.up):
        pairs.append((f"up.{n}.0", f"up_blocks.{level}.resnets.{j}", RESBLOCK_KEYS))
        if len(layers) > 1 and isinstance(layers[1], AttentionBlock):
            pairs.append((f"up.{n}.1", f"up_blocks.{level}.attentions.{j}", ATTENTION_KEYS))
        if j == 0:
            up_attn.append(len(layers) > 1 and isinstance(layers[1], AttentionBlock))
        j += 1
        if _is_up(layers[-1]):
            pairs.append((f"up.{n}.{len(layers) - 1}", f"up_blocks.{level}.upsamplers.0",
                          RESBLOCK_KEYS if isinstance(layers[-1], ResBlock) else RESAMPLE_KEYS))
            level, j = level + 1, 0
    return pairs, down_attn, up_attn


def _check_unet(net: nn.Module, time_embedding: str, name: str | None = None) -> None:
    """Refuse, naming the part, a network that UNet2DModel cannot reproduce exactly."""
    if time_embedding not in TIME_EMBEDDINGS:
        raise InteropError(f"unknown time_embedding {time_embedding!r}; choose one of: {', '.join(TIME_EMBEDDINGS)}")
    if not isinstance(net, UNet):
        name = name or type(net).__name__
        raise _refuse(
            f"network {name!r} has no diffusers equivalent: only udm's 'unet' maps onto diffusers' UNet2DModel",
            "export a run trained with network 'unet'",
        )
    groups = sorted({m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)})
    if len(groups) > 1:
        raise _refuse(
            f"the UNet's GroupNorms use {groups} groups (udm's default picks the count by width) and UNet2DModel has one "
            "norm_num_groups for every GroupNorm",
            "retrain with network.norm_groups set (32 for DDPM's layout, or any divisor of every level width)",
        )
    if any(m.out_scale != 1.0 for m in net.modules() if isinstance(m, (ResBlock, AttentionBlock))):
        raise _refuse(
            "the UNet uses skip_rescale (every residual sum divided by sqrt(2)), which UNet2DModel applies in its middle block only",
            "retrain with network.skip_rescale: false",
        )
    widths = sorted({m.norm.num_channels // m.attn.num_heads for m in net.modules() if isinstance(m, AttentionBlock)})
    if len(widths) > 1:
        raise _refuse(
            f"the UNet's attention heads have different widths {widths} and UNet2DModel has one attention_head_dim",
            "retrain with network.num_heads unset and head_dim dividing every attended width",
        )
    levels = len(net.sizes)
    if net.image_size % 2 ** (levels - 1):
        raise _refuse(
            f"image size {net.image_size} is not divisible by 2^{levels - 1}: udm's UNet upsamples to the skip's odd size "
            "and UNet2DModel always doubles",
            "export a UNet for an image size divisible by 2^(len(channel_mult) - 1)",
        )
    time = net.cond_embed.time
    if time_embedding == "positional" and not (isinstance(time.embed, SinusoidalEmbedding) and time.time_scale == 1.0):
        raise _refuse(
            f"the UNet's time embedding ({time.kind}, time_scale {time.time_scale:g}) is not diffusers' positional sinusoid "
            "of the timestep (sinusoidal, time_scale 1)",
            "export with time_embedding='learned', which tabulates any time embedding exactly",
        )


def _time_table(net: UNet, num_steps: int, offset: float) -> Tensor:
    """udm's time embedding of t = k + offset for k = 0..num_steps-1, in float64: the "learned" ``time_proj`` table."""
    time = net.cond_embed.time
    t = (torch.arange(num_steps, dtype=torch.float64) + offset) * time.time_scale
    with torch.no_grad():
        return time.embed(t)  # the embedding computes in t's dtype


def _fold_shift(weight: Tensor, freqs: Tensor, shift: float) -> Tensor:
    """linear_1's weight for inputs [cos(w k), sin(w k)] from ours for [cos(w (k + shift)), sin(w (k + shift))].

    cos(w(k+d)) = cos(wk) cos(wd) - sin(wk) sin(wd) and sin(w(k+d)) = sin(wk) cos(wd) + cos(wk) sin(wd),
    so W_cos' = W_cos cos(wd) + W_sin sin(wd) and W_sin' = W_sin cos(wd) - W_cos sin(wd) (exact; odd widths keep their zero column).
    """
    w = weight.to(torch.float64)
    h = freqs.numel()
    c, s = torch.cos(freqs.to(torch.float64) * shift), torch.sin(freqs.to(torch.float64) * shift)
    wc, ws = w[:, :h], w[:, h:2 * h]
    out = w.clone()
    out[:, :h] = wc * c + ws * s
    out[:, h:2 * h] = ws * c - wc * s
    return out.to(weight.dtype)


def diffusers_unet(
    net: nn.Module,
    num_train_timesteps: int,
    *,
    time_embedding: str = "learned",
    time_offset: float = TIME_OFFSET,
    name: str | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(UNet2DModel config, state dict) that computes ``net(x, k + time_offset, cond)`` as ``UNet2DModel(x, k, cond)``.

    The weights are copied key by key through the tables of this module (the
    fused qkv split, the time MLP's first layer folded or fed a table, see the
    module docstring); every udm parameter must land somewhere, so a layout
    this code does not know is an error, not a silent omission. ``name`` is
    the network's registry name for error messages.
    """
    _check_unet(net, time_embedding, name)
    pairs, down_attn, up_attn = _block_pairs(net)
    state = net.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def put(src: str, dst: str, table: Mapping[str, str | tuple[str, ...]]) -> None:
        prefix = f"{src}." if src else ""
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            for ours, theirs in table.items():
                if rest.startswith(f"{ours}."):
                    param = rest[len(ours) + 1:]
                    base = f"{dst}." if dst else ""
                    if isinstance(theirs, tuple):
                        for split, part in zip(theirs, value.chunk(len(theirs), dim=0)):
                            out[f"{base}{split}.{param}"] = part.clone()
                    else:
                        out[f"{base}{theirs}.{param}"] = value.clone()
                    used.add(key)
                    break

    put("", "", TOP_KEYS)
    for src, dst, table in pairs:
        put(src, dst, table)
    time = net.cond_embed.time
    if time_embedding == "learned":
        out["time_proj.weight"] = _time_table(net, num_train_timesteps, time_offset).to(state["cond_embed.time.mlp.0.weight"].dtype)
    else:
        key = "time_embedding.linear_1.weight"
        out[key] = _fold_shift(out[key], time.embed.freqs, time_offset * time.time_scale)
    used.update(k for k in TIME_BUFFERS if k in state)
    left = sorted(set(state) - used)
    if left:
        raise InteropError(f"udm UNet parameters {left[:3]} have no place in UNet2DModel; this UNet layout is not exportable")

    res = [m for m in net.modules() if isinstance(m, ResBlock)]
    attn = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    updown = any(m.resample is not None for m in res)
    widths = [layers[0].conv1.out_channels for layers in net.down if not _is_down(layers[0])]
    per_level = len(widths) // len(down_attn)
    norm = next(m for m in net.modules() if isinstance(m, nn.GroupNorm))
    down_types = ["AttnDownBlock2D" if a else ("ResnetDownsampleBlock2D" if updown else "DownBlock2D") for a in down_attn]
    up_types = ["AttnUpBlock2D" if a else ("ResnetUpsampleBlock2D" if updown else "UpBlock2D") for a in up_attn]
    config: dict[str, Any] = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": net.image_size,
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "center_input_sample": False,
        "time_embedding_type": time_embedding,
        "time_embedding_dim": None,
        "freq_shift": 0,
        "flip_sin_to_cos": True,
        "down_block_types": down_types,
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": up_types,
        "block_out_channels": widths[::per_level],
        "layers_per_block": per_level,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "dropout": res[0].drop.p,
        "act_fn": "silu",
        "attention_head_dim": attn[0].norm.num_channels // attn[0].attn.num_heads,
        "norm_num_groups": norm.num_groups,
        "attn_norm_num_groups": norm.num_groups,
        "norm_eps": norm.eps,
        "resnet_time_scale_shift": "scale_shift" if res[0].scale_shift else "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": None if net.cond_embed.classes is None else net.cond_embed.classes.embedding.num_embeddings,
        "num_train_timesteps": num_train_timesteps if time_embedding == "learned" else None,
    }
    return config, out


# ----------------------------------------------------------------------------- the folder


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh temporary folder beside ``out`` and rename it onto ``out`` (never half-written)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        if out.is_dir():
            out.rmdir()  # empty (checked by the caller): replaced by the finished folder
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_diffusers(
    run_path: str | Path,
    out: str | Path,
    *,
    use_ema: bool = True,
    scheduler: str = "ddim",
    time_embedding: str = "learned",
) -> Path:
    """Write the run at ``run_path`` (a run folder or checkpoint) as a diffusers pipeline folder ``out``; return ``out``.

    Why: a udm model can then be used by anything that loads diffusers models
    (``UNet2DModel.from_pretrained(out / "unet")``, ``DDIMPipeline.from_pretrained(out)``)
    with no udm installed. ``use_ema`` picks the EMA weights when the
    checkpoint has them; ``scheduler`` is ``"ddim"`` (DDIMPipeline) or
    ``"ddpm"`` (DDPMPipeline); ``time_embedding`` is ``"learned"`` (exact,
    integer timesteps) or ``"positional"`` (any timestep, float32 sinusoid in
    diffusers); see the module docstring for the mapping and what is refused.
    ``out`` must not exist or be an empty folder; it appears complete or not at all.
    """
    from ..training import Experiment

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"export folder {out} already exists and is not empty; choose a new folder or remove it")
    check_writable(out, "export folder", folder=True)
    if scheduler not in PIPELINES:
        raise InteropError(f"unknown diffusers scheduler {scheduler!r}; choose one of: {', '.join(PIPELINES)}")
    exp = Experiment.from_run(str(run_path), use_ema=use_ema)
    prediction = exp.config["prediction"]["name"]
    sched = diffusers_scheduler_config(exp.process, prediction, scheduler)
    unet_config, weights = diffusers_unet(
        exp.net, sched["num_train_timesteps"], time_embedding=time_embedding, name=exp.config["network"]["name"]
    )
    group = "ema" if use_ema and "ema" in exp.checkpoint.tensors else "model"
    note = {
        "udm_version": __version__,
        "checkpoint_step": exp.checkpoint.step,
        "weights": group,
        "process": {k: v for k, v in exp.config["process"].items() if k != "alphas_cumprod"},
        "prediction": prediction,
        "timestep": "diffusers timestep k is udm time t = k + 1",
        "null_class": exp.net.null_class,
    }
    pipeline, scheduler_class = PIPELINES[scheduler]

    def write(root: Path) -> None:
        _write_json(root / "model_index.json", {
            "_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", scheduler_class], "unet": ["diffusers", "UNet2DModel"],
        })
        _write_json(root / "unet" / "config.json", {**unet_config, "_udm": note})
        save_file({k: v.contiguous() for k, v in weights.items()}, str(root / "unet" / "diffusion_pytorch_model.safetensors"),
                  metadata={"format": "pt"})
        _write_json(root / "scheduler" / "scheduler_config.json", {**sched, "_udm": note})

    _write_folder(out, write)
    return out


__all__ = ["diffusers_scheduler_config", "diffusers_unet", "export_diffusers"]
