"""Tests for udm.viz: exact pixels of image grids, atomic writes, and that every plot yields a PNG."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udm import viz
from udm.atomic import atomic_open, write_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _grid_size(n: int, h: int, w: int, nrow: int, padding: int, scale: int) -> tuple[int, int]:
    """(width, height) of a grid: nrow tiles per row, padding between tiles and around the border."""
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    return cols * (w * scale + padding) + padding, rows * (h * scale + padding) + padding


def _read_png(path: Path) -> Image.Image:
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    image = Image.open(path)
    image.load()
    return image


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "nrow", "padding", "scale"),
    [(10, 1, 8, 8, 4, 1, 3), (6, 3, 5, 7, 3, 2, 1), (3, 1, 4, 4, 8, 0, 2), (1, 3, 2, 3, 1, 1, 5)],
)
def test_grid_png_size(tmp_path: Path, n: int, c: int, h: int, w: int, nrow: int, padding: int, scale: int) -> None:
    x = torch.rand(n, c, h, w) * 2 - 1
    out = viz.save_image_grid(x, tmp_path / "grid.png", nrow=nrow, padding=padding, scale=scale)
    image = _read_png(out)
    assert image.size == _grid_size(n, h, w, nrow, padding, scale)
    assert image.mode == ("L" if c == 1 else "RGB")


def test_grid_pixels_match_input(tmp_path: Path) -> None:
    x = torch.full((4, 3, 2, 2), -1.0)
    x[1] = 1.0
    x[2, 0], x[2, 1], x[2, 2] = 1.0, -1.0, 0.0
    grid = viz.image_grid(x, nrow=2, padding=1, scale=2)
    assert grid.shape == (11, 11, 3) and grid.dtype == np.uint8

    def tile(i: int) -> np.ndarray:
        top, left = 1 + (i // 2) * 5, 1 + (i % 2) * 5
        return grid[top : top + 4, left : left + 4]

    assert (tile(0) == 0).all()
    assert (tile(1) == 255).all()
    assert (tile(2) == np.array([255, 0, 128], dtype=np.uint8)).all()
    assert (grid[0] == 128).all() and (grid[:, 5] == 128).all()  # gray padding between and around tiles
    png = np.asarray(_read_png(viz.save_image_grid(x, tmp_path / "g.png", nrow=2, padding=1, scale=2)))
    assert np.array_equal(png, grid)


def test_grid_auto_scale_makes_tiny_images_visible(tmp_path: Path) -> None:
    image = _read_png(viz.save_image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "digits.png", nrow=2, padding=1))
    assert image.size == _grid_size(4, 8, 8, 2, 1, viz.auto_scale(8, 8))
    assert viz.auto_scale(8, 8) * 8 >= 24 and viz.auto_scale(28, 28) == 1


def test_grid_clamps_and_handles_nan() -> None:
    x = torch.tensor([5.0, -5.0, float("nan"), 0.0]).reshape(4, 1, 1, 1)
    grid = viz.image_grid(x, nrow=4, padding=0)
    assert grid[0, :, 0].tolist() == [255, 0, 0, 128]


@pytest.mark.parametrize(
    "shape", [(3, 8, 8), (2, 2, 8, 8), (0, 1, 8, 8), (1, 1, 1, 8, 8)], ids=["3d", "2ch", "empty", "5d"]
)
def test_grid_bad_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        viz.save_image_grid(torch.zeros(shape), tmp_path / "bad.png")


def test_writes_are_atomic_and_create_parents(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "grid.png"
    assert viz.save_image_grid(torch.zeros(2, 1, 4, 4), target) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["grid.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="suffix"):
        viz.save_image_grid(torch.zeros(2, 1, 4, 4), tmp_path / "grid.unknown")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]


def test_trajectory_grid_rows_are_samples_and_columns_times(tmp_path: Path) -> None:
    t_count, n = 7, 5
    levels = torch.linspace(-1, 1, t_count)
    traj = levels[:, None, None, None, None].expand(t_count, n, 1, 3, 3).clone()
    out = viz.trajectory_grid(traj, tmp_path / "traj.png", n_samples=3, n_steps=4, padding=1, scale=1)
    image = np.asarray(_read_png(out))
    assert image.shape == (3 * 4 + 1, 4 * 4 + 1)
    # columns show time indices 0, 2, 4, 6 (evenly spaced, first and last included), same on every row
    expected = [round((float(levels[i]) + 1) * 127.5) for i in (0, 2, 4, 6)]
    for row in range(3):
        assert [int(image[1 + row * 4, 1 + col * 4]) for col in range(4)] == expected
    assert viz.trajectory_plot(list(traj), tmp_path / "via_plot.png").is_file()


def _two_moons(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    return torch.stack([torch.cos(t), torch.sin(t)], 1) + 0.05 * torch.randn(n, 2, generator=g)


def test_scatter_plot(tmp_path: Path) -> None:
    samples = _two_moons(500, 1)
    samples[0] = float("nan")
    one = _read_png(viz.scatter_plot(samples, tmp_path / "one.png", title="samples only"))
    two = _read_png(viz.scatter_plot(samples, tmp_path / "two.png", reference=_two_moons(500, 0), lim=2.0))
    assert two.size[0] > one.size[0] > 100
    assert np.asarray(two.convert("L")).std() > 5  # something was drawn
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.scatter_plot(torch.zeros(10, 3), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="lim"):
        viz.scatter_plot(samples, tmp_path / "bad.png", lim=(1.0, -1.0))


def test_trajectory_plot(tmp_path: Path) -> None:
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    data = _two_moons(200, 2)
    s = torch.linspace(0, 1, 12)[:, None, None]
    traj = (1 - s) * noise + s * data
    image = _read_png(viz.trajectory_plot(traj, tmp_path / "t.png", n_paths=20, reference=data))
    assert min(image.size) > 100
    with pytest.raises(ValueError, match=r"\(T, N, 2\)"):
        viz.trajectory_plot(torch.zeros(4, 10, 3), tmp_path / "bad.png")


def test_loss_curve(tmp_path: Path) -> None:
    steps = np.arange(0, 3000, 10)
    losses = np.exp(-steps / 1000) + 0.1 * np.random.default_rng(0).random(len(steps))
    losses[5] = np.nan
    assert _read_png(viz.loss_curve(steps, losses, tmp_path / "loss.png", smooth=10)).size[0] > 100
    assert _read_png(viz.loss_curve(None, losses - 0.5, tmp_path / "neg.png", logy=True)).size[0] > 100
    with pytest.raises(ValueError, match="same length"):
        viz.loss_curve(steps[:-1], losses, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-empty"):
        viz.loss_curve(None, [], tmp_path / "bad.png")


def test_moving_average_skips_non_finite() -> None:
    out = viz.moving_average(np.array([1.0, 3.0, np.nan, 5.0]), window=2)
    assert np.allclose(out, [1.0, 2.0, 3.0, 5.0])


def test_plots_do_not_use_pyplot(tmp_path: Path) -> None:
    # a fresh interpreter, since another test module may have imported pyplot into this one
    code = (
        "import sys, torch; from udm import viz; "
        f"viz.scatter_plot(torch.zeros(3, 2), {str(tmp_path / 'p.png')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "p.png").is_file()


def test_atomic_writes_replace_whole_files_or_nothing(tmp_path: Path) -> None:
    """udm.atomic: the target is the complete new file, or untouched after an error; no temporary file is left."""
    target = tmp_path / "sub" / "f.bin"
    assert write_atomic(target, b"old") == target and target.read_bytes() == b"old"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and [p.name for p in target.parent.iterdir()] == ["f.bin"]
    assert (target.stat().st_mode & 0o777) == 0o644
