"""Training throughput of udm's UNet and diffusers' UNet2DModel in the DDPM CIFAR-10 configuration.

Both models are built from the same configuration (widths, levels, residual
blocks, attention resolution and head size, dropout), run in the same process
on the same batches with the same optimizer (AdamW, lr 1e-4) and loss
(eps-prediction MSE on x_t = a x0 + s eps, a ~ U(0, 1), s = sqrt(1 - a^2) per
sample, t = 1000 (1 - a) as the noise-level input), one after the other.

Sizes:

* ``full`` (default on GPU): 32x32x3, widths 128 x (1, 2, 2, 2), 2 blocks per
  level, attention at 16x16, batch 128: DDPM's CIFAR-10 UNet, 35.7M parameters;
* ``tiny`` (default on CPU): 16x16x3, widths 32 x (1, 2, 2, 2), attention at
  8x8, batch 16: a smoke run that takes well under a minute on 2 CPU cores.

Attention uses 64-dimensional heads in both models (diffusers' UNet2DModel
defaults to 8-dimensional heads, which the original DDPM network does not
use); ``--head-dim`` changes it for both.

Both models start from their own initialisation: udm's output layer is zero
(loss 1 at the start), diffusers' is not, so the "last loss" column is a
sanity check, not a comparison.

Run: ``python benchmarks/train_throughput.py [--device cuda] [--bf16] [--compile] [--channels-last]``.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from udm.nets import UNet

Tensor = torch.Tensor

SIZES = {
    "full": dict(image_size=32, channels=128, channel_mult=(1, 2, 2, 2), attn_resolution=16, batch=128),
    "tiny": dict(image_size=16, channels=32, channel_mult=(1, 2, 2, 2), attn_resolution=8, batch=16),
}


@dataclass
class Result:
    name: str
    params: int
    samples_per_s: float
    ms_per_step: float
    peak_mem_gib: float | None
    final_loss: float


def build_udm(cfg: dict, head_dim: int, dropout: float) -> nn.Module:
    """udm's UNet in the DDPM layout of ``cfg``."""
    return UNet(
        in_channels=3,
        image_size=cfg["image_size"],
        channels=cfg["channels"],
        channel_mult=cfg["channel_mult"],
        num_res_blocks=2,
        attn_resolutions=(cfg["attn_resolution"],),
        dropout=dropout,
        head_dim=head_dim,
    )


def build_diffusers(cfg: dict, head_dim: int, dropout: float) -> nn.Module:
    """diffusers' UNet2DModel with the same layout (attention on the level whose resolution is ``attn_resolution``)."""
    from diffusers import UNet2DModel

    levels = len(cfg["channel_mult"])
    sizes = [cfg["image_size"] // 2**i for i in range(levels)]
    attn = [s == cfg["attn_resolution"] for s in sizes]
    return UNet2DModel(
        sample_size=cfg["image_size"],
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg["channels"] * m for m in cfg["channel_mult"]),
        layers_per_block=2,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=head_dim,
        dropout=dropout,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(
    name: str,
    model: nn.Module,
    call: Callable[[nn.Module, Tensor, Tensor], Tensor],
    args: argparse.Namespace,
    image_size: int,
) -> Result:
    """Best of ``args.repeats`` timings of ``args.steps`` AdamW steps of eps-prediction MSE, after ``args.warmup`` untimed ones.

    The best block, not the mean, so that load from other processes on a shared
    machine counts against neither model.
    """
    device = torch.device(args.device)
    params = sum(p.numel() for p in model.parameters())
    model = model.to(device).train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        model = model.to(memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_model = torch.compile(model) if args.compile else model
    g = torch.Generator(device=device).manual_seed(args.seed)
    shape = (args.batch, 3, image_size, image_size)

    def step() -> Tensor:
        x0 = torch.randn(shape, device=device, generator=g).contiguous(memory_format=memory_format)
        eps = torch.randn(shape, device=device, generator=g).contiguous(memory_format=memory_format)
        a = torch.rand(args.batch, device=device, generator=g)
        s = (1 - a * a).sqrt()
        x_t = a[:, None, None, None] * x0 + s[:, None, None, None] * eps
        t = 1000.0 * (1 - a)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            pred = call(step_model, x_t, t)
        loss = (pred.float() - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    elapsed = float("inf")
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        sync(device)
        elapsed = min(elapsed, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Result(name, params, args.batch * args.steps / elapsed, 1000 * elapsed / args.steps, peak, float(loss))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=default_device, help=f"torch device (default {default_device})")
    p.add_argument("--size", choices=sorted(SIZES), help="model/batch size (default: full on GPU, tiny on CPU)")
    p.add_argument("--batch", type=int, help="batch size (default: 128 full, 16 tiny)")
    p.add_argument("--steps", type=int, help="timed steps (default: 50 on GPU, 10 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 10 on GPU, 3 on CPU; more with --compile)")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks of --steps steps; the fastest is reported (default 3)")
    p.add_argument("--bf16", action="store_true", help="run forward passes under torch.autocast(bfloat16)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for models and inputs")
    p.add_argument("--head-dim", type=int, default=64, help="attention head size for both models (default 64)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout for both models (DDPM CIFAR-10: 0.1)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: 1 on CPU, where spinning OpenMP threads on a shared machine "
        "made timings 3x slower and noisy; torch's choice on GPU; 0 = torch's choice)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    gpu = torch.device(args.device).type != "cpu"
    args.size = args.size or ("full" if gpu else "tiny")
    args.threads = args.threads if args.threads is not None else (0 if gpu else 1)
    args.batch = args.batch or SIZES[args.size]["batch"]
    args.steps = args.steps or (50 if gpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 3) + (5 if args.compile else 0)
    if args.batch < 1 or args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error(f"need batch, steps, repeats >= 1 and warmup >= 0, got {args.batch}, {args.steps}, {args.repeats}, {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    cfg = SIZES[args.size]
    device = torch.device(args.device)
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    desc += f", {torch.get_num_threads()} intra-op threads"
    print(
        f"torch {torch.__version__}, {desc}; size {args.size}: {cfg['image_size']}x{cfg['image_size']}x3, "
        f"widths {cfg['channels']} x {cfg['channel_mult']}, attention at {cfg['attn_resolution']}, head dim {args.head_dim}; "
        f"batch {args.batch}, {args.warmup} warmup steps, best of {args.repeats} x {args.steps} timed steps, "
        f"bf16={args.bf16}, compile={args.compile}, channels_last={args.channels_last}"
    )
    runs: list[tuple[str, Callable[[], nn.Module], Callable[[nn.Module, Tensor, Tensor], Tensor]]] = [
        ("udm UNet", lambda: build_udm(cfg, args.head_dim, args.dropout), lambda m, x, t: m(x, t)),
    ]
    try:
        import diffusers

        runs.append(
            (
                f"diffusers {diffusers.__version__} UNet2DModel",
                lambda: build_diffusers(cfg, args.head_dim, args.dropout),
                lambda m, x, t: m(x, t).sample,
            )
        )
    except ImportError as err:
        print(f"diffusers is not importable ({err}); benchmarking udm only")

    results = []
    for name, build, call in runs:
        torch.manual_seed(args.seed)
        results.append(benchmark(name, build(), call, args, cfg["image_size"]))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print("| model | params | samples/s | ms/step | peak memory (GiB) | last loss |")
    print("|---|---|---|---|---|---|")
    for r in results:
        mem = "n/a (CPU)" if r.peak_mem_gib is None else f"{r.peak_mem_gib:.2f}"
        print(f"| {r.name} | {r.params / 1e6:.2f}M | {r.samples_per_s:.1f} | {r.ms_per_step:.1f} | {mem} | {r.final_loss:.4f} |")


if __name__ == "__main__":
    main()
