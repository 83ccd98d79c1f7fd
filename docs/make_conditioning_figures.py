"""Make the pictures and the text block of docs/conditioning.md with trained udm models (CPU, about ten minutes).

    OMP_NUM_THREADS=2 python docs/make_conditioning_figures.py [--images RUN] [--text RUN] [--out docs/img]

* ``--images``: an image DDPM run, by default ``runs/mnist_ddpm`` (``udm train
  mnist_ddpm``, 28x28). If the folder holds no checkpoint the script trains the
  bundled ``digits_unet`` (8x8 digits) there for ``--digits-steps`` steps first.
* ``--text``: a mask-process Tiny Shakespeare run, by default
  ``runs/demo_text_mask``; trained first (``demo_text_mask``, 1500 steps, about
  five CPU minutes) when the folder holds no checkpoint.

Writes ``conditioning_inpaint.png`` (replacement and RePaint),
``conditioning_sdedit.png`` and ``conditioning_infill.txt`` into ``--out``,
all from fixed seeds, and prints the text block.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import udm
from udm.conditioning import inpaint, sdedit
from udm.sources import ModelSource, from_run
from udm.viz import image_grid

BLANK = "_"


def trained(run: Path, config: str, steps: int | None) -> ModelSource:
    """The run at ``run``, trained from the bundled ``config`` first (``steps`` steps, or the config's) if it has no checkpoint.

    Its EMA weights, unless they are too young (the run's note says so), then its raw weights.
    """
    if not (run / "checkpoints" / "latest").exists():
        command = [sys.executable, "-m", "udm", "train", config, "--out", str(run), "--quiet"]
        if steps is not None:
            command += ["--set", f"train.steps={steps}"]
        print("training:", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    source = from_run(str(run))
    if source.note:  # EMA weights that still hold much of the initialisation: the raw weights sample better
        print(f"{run}: {source.note}; using the raw weights", flush=True)
        source = from_run(str(run), use_ema=False)
    return source


def save_rows(rows: list[torch.Tensor], path: Path) -> None:
    """One image grid per row (each (N, C, H, W) in [-1, 1]) stacked vertically into one PNG (tiles >= 64 pixels)."""
    scale = max(1, -(-64 // rows[0].shape[-1]))
    grids = [image_grid(row, nrow=len(row), padding=2, scale=scale) for row in rows]
    picture = np.concatenate(grids, axis=0)
    Image.fromarray(picture[:, :, 0] if picture.shape[2] == 1 else picture).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def held_out_images(source: ModelSource, n: int) -> torch.Tensor:
    """The first ``n`` held-out images of the run's data."""
    return source.splits()[1].x[:n].to(torch.float32)


def observed_regions(h: int, w: int) -> list[torch.Tensor]:
    """Three masks (1, h, w), True = observed: the left half, the top half, all but a centre square."""
    row, col = torch.arange(h)[:, None], torch.arange(w)[None, :]
    centre = ((row - h // 2).abs() < h // 4) & ((col - w // 2).abs() < w // 4)
    return [m.expand(1, h, w) for m in (col < w // 2, row < h // 2, ~centre)]


def inpainting_figure(source: ModelSource, out: Path, fills: int = 6) -> None:
    """Rows per digit: observation (hidden part gray), mask, ``fills`` replacement fills, ``fills`` RePaint fills.

    DDPM with 100 steps; RePaint resamples 5 times per jump of 10 steps (500 steps).
    """
    images = held_out_images(source, 3)
    rows = []
    for k, (image, mask) in enumerate(zip(images, observed_regions(*images.shape[-2:]))):
        y = image.expand(fills, -1, -1, -1)
        seeds = range(100 * k, 100 * k + fills)
        with torch.no_grad():
            plain = inpaint(source.model, y, mask, "ddpm", 100, seeds=seeds)
            repaint = inpaint(source.model, y, mask, "ddpm", 100, seeds=seeds, resample=5, jump=10)
        shown = torch.where(mask, image, torch.zeros(()))[None]
        rows.append(torch.cat([shown, mask.float()[None] * 2 - 1, plain, repaint]))
    save_rows(rows, out)


def sdedit_figure(source: ModelSource, out: Path, seeds: int = 2) -> None:
    """Rows per seed: the input, then SDEdit at strengths 0.2 .. 1.0 (DDPM, 100 steps)."""
    image = held_out_images(source, 8)[7]
    strengths = (0.2, 0.4, 0.6, 0.8, 1.0)
    rows = []
    for seed in range(seeds):
        with torch.no_grad():
            edits = [sdedit(source.model, image[None], s, "ddpm", 100, seeds=[seed]) for s in strengths]
        rows.append(torch.cat([image[None], *edits]))
    save_rows(rows, out)


def infill_block(source: ModelSource, out: Path, fills: int = 3) -> str:
    """Held-out windows with blanks (``_``) and ``fills`` infills each (K1 on the run's grid), as text (newlines shown as ``|``).

    Blanks: a word-sized gap in the middle, every third character, the last eight characters.
    """
    held = source.splits()[1]
    length = held.x.shape[1]
    position = torch.arange(length)
    patterns = [(position - length // 2).abs() >= 5, position % 3 != 1, position < length - 8]
    windows = held.x[[100, 1100, 2100]]
    steps = int(source.sample["steps"])

    def shown(text: str) -> str:
        return text.replace("\n", "|")

    lines = []
    for k, (window, keep) in enumerate(zip(windows, patterns)):
        with torch.no_grad():
            filled = inpaint(
                source.model, window.expand(fills, -1), keep, "udm_deterministic", steps, seeds=range(10 * k, 10 * k + fills)
            )
        text = held.decode(window[None])[0]
        lines.append("given:  " + shown("".join(c if m else BLANK for c, m in zip(text, keep.tolist()))))
        lines += [f"fill {j + 1}: " + shown(line) for j, line in enumerate(held.decode(filled))]
        lines += ["truth:  " + shown(text), ""]
    block = "\n".join(lines)
    out.write_text(block)
    print(f"wrote {out}\n{block}", flush=True)
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=Path("runs/mnist_ddpm"))
    parser.add_argument("--digits-steps", type=int, default=1500, help="training steps of the digits fallback")
    parser.add_argument("--text", type=Path, default=Path("runs/demo_text_mask"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    images = trained(args.images, "digits_unet", args.digits_steps)
    inpainting_figure(images, args.out / "conditioning_inpaint.png")
    sdedit_figure(images, args.out / "conditioning_sdedit.png")
    text = trained(args.text, "demo_text_mask", None)
    infill_block(text, args.out / "conditioning_infill.txt")


if __name__ == "__main__":
    main()
