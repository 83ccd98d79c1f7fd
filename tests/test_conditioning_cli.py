"""`udm sample` conditioned on observed data (issue 17): --inpaint/--mask (with RePaint's --resample/--jump),
--init/--strength (SDEdit) and --infill, on tiny runs trained for a few steps.

The runs are barely trained, so what is checked is what holds for any weights:
observed pixels and characters come back exactly (up to the byte rounding of a
PNG written here from known values), the rest is generated, strength 1 is plain
sampling from the same seed and a small strength stays near the image. Every
mistake is one line ``udm: error: ...`` with exit status 2 and leaves the work
folder as it was (no output folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from udm.cli import main
from udm.data import digits, from_uint8, read_image

TINY_UNET = {"name": "unet", "channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4], "head_dim": 8,
             "norm_groups": 4, "dropout": 0.0}
TRAIN = {"steps": 2, "batch_size": 16, "log_every": 1, "ckpt_every": 2, "ema": None}
RUNS = {
    # a DDPM digits UNet (v prediction: its x0_hat stays bounded with untrained weights), exportable to diffusers
    "image": {"data": {"name": "digits", "test_fraction": 0.1}, "process": {"name": "ddpm"}, "prediction": {"name": "v"},
              "network": TINY_UNET, "sample": {"sampler": "ddpm", "steps": 10, "n": 4, "eval_n": 20}},
    # a cold (blur) process: no forward transition, so no RePaint
    "blur": {"data": {"name": "digits", "test_fraction": 0.1}, "process": {"name": "blur", "timesteps": 5, "kernel_size": 5},
             "prediction": {"name": "x0"}, "network": TINY_UNET,
             "sample": {"sampler": "udm_deterministic", "steps": 5, "n": 4, "eval_n": 20}},
    "text": {"data": {"name": "text_file", "path": "{ws}/abc.txt", "seq_len": 8, "test_fraction": 0.2},
             "process": {"name": "mask", "schedule": "linear"}, "prediction": {"name": "logits"},
             "network": {"name": "sequence_transformer", "hidden": 16, "depth": 1, "num_heads": 2}, "loss": {"weighting": "elbo"},
             "sample": {"sampler": "udm_deterministic", "steps": 8, "n": 6, "eval_n": 20}},
    "points": {"data": {"name": "two_moons", "n": 400, "test_fraction": 0.25}, "process": {"name": "vp"}, "prediction": {"name": "v"},
               "network": {"name": "mlp", "hidden": 16, "depth": 2}, "sample": {"sampler": "ddim", "steps": 3, "n": 8, "eval_n": 50}},
}
#: The bytes of digit.png: scikit-learn's first digit, 0..16 -> 0..255.
DIGIT = np.round(digits().x[0, 0].numpy().astype(np.float64) * 127.5 + 127.5).astype(np.uint8)
#: mask.png: the left half observed, one pixel of it by the faintest nonzero grey (nonzero = observed).
MASK = np.zeros((8, 8), np.uint8)
MASK[:, :4] = 255
MASK[3, 1] = 1
KEPT = torch.from_numpy(MASK > 0)


def write_png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array, "L" if array.ndim == 2 else "RGB").save(path)
    return str(path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with the runs of RUNS (``image_run``, ...), digit.png, its masks and a few broken inputs."""
    root = tmp_path_factory.mktemp("ws")
    (root / "abc.txt").write_text("abcabcabd" * 80)
    (root / "afile").write_text("not an image\n")
    write_png(root / "digit.png", DIGIT)
    write_png(root / "mask.png", MASK)
    write_png(root / "black.png", np.zeros((8, 8), np.uint8))
    write_png(root / "white.png", np.full((8, 8), 255, np.uint8))
    write_png(root / "small.png", np.full((7, 7), 255, np.uint8))
    write_png(root / "big.png", np.zeros((9, 9), np.uint8))
    write_png(root / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    for name, config in RUNS.items():
        config = yaml.safe_load(yaml.safe_dump(config).replace("{ws}", str(root)))
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "seed": 0, "train": TRAIN, **config}))
        assert main(["train", str(root / f"{name}.yaml"), "--out", str(root / f"{name}_run"), "--quiet"]) == 0
    return root


def sample(ws: Path, capsys: pytest.CaptureFixture, out: str, *argv: str) -> tuple[torch.Tensor, dict[str, str]]:
    """Run ``udm sample ... --out ws/out --quiet``; the raw samples and their metadata."""
    code = main(["sample", *(a.format(ws=ws) for a in argv), "--out", str(ws / out), "--quiet"])
    _, err = capsys.readouterr()
    assert code == 0, err
    with safe_open(str(ws / out / "samples.safetensors"), "pt") as f:
        meta = f.metadata()
    return load_file(str(ws / out / "samples.safetensors"))["samples"], meta


def test_a_png_reads_back_as_the_values_it_was_written_from(ws):
    image = read_image(ws / "digit.png")
    assert image.shape == (1, 8, 8) and torch.equal(image[0], from_uint8(torch.from_numpy(DIGIT)))
    assert (image - digits().x[0]).abs().max() <= 0.5 / 127.5 + 1e-6
    assert read_image(ws / "rgb.png").shape == (3, 8, 8) and read_image(ws / "rgb.png", channels=1).shape == (1, 8, 8)


def test_inpaint_keeps_the_observed_pixels_and_fills_the_rest(ws, capsys):
    x, meta = sample(ws, capsys, "inpainted", "{ws}/image_run", "--inpaint", "{ws}/digit.png", "--mask", "{ws}/mask.png",
                     "--n", "4", "--steps", "10")
    y = read_image(ws / "digit.png")
    assert x.shape == (4, 1, 8, 8) and bool(torch.isfinite(x).all())
    assert torch.equal(x[:, 0][:, KEPT], y[0][KEPT].expand(4, -1)), "an observed pixel changed"
    hidden = x[:, 0][:, ~KEPT]
    assert (hidden - y[0][~KEPT]).abs().max() > 0.1 and (hidden[0] - hidden[1]).abs().max() > 0.1, "the hidden pixels were not generated"
    assert meta["conditioning"] == "inpaint" and meta["nfe"] == "10" and meta["resample"] == "1"
    assert {p.name for p in (ws / "inpainted").iterdir()} == {"samples.png", "samples.safetensors", "observed.png"}


def test_repaint_runs_every_stretch_r_times_and_keeps_the_observed_pixels(ws, capsys):
    argv = ("{ws}/image_run", "--inpaint", "{ws}/digit.png", "--mask", "{ws}/mask.png", "--n", "3", "--steps", "6")
    x, meta = sample(ws, capsys, "repaint", *argv, "--resample", "3", "--jump", "2")
    plain, _ = sample(ws, capsys, "replacement", *argv)
    assert meta["nfe"] == "18" and meta["resample"] == "3" and meta["jump"] == "2"
    assert torch.equal(x[:, 0][:, KEPT], read_image(ws / "digit.png")[0][KEPT].expand(3, -1))
    assert not torch.equal(x, plain)


def test_sdedit_at_strength_one_is_plain_sampling_and_a_small_strength_stays_close(ws, capsys):
    argv = ("{ws}/image_run", "--sampler", "dpmpp_2m", "--steps", "10", "--seed", "3", "--n", "4")
    plain, _ = sample(ws, capsys, "plain", *argv)
    y = read_image(ws / "digit.png")
    rms = {}
    for strength in ("1", "0.3", "0.02"):
        x, meta = sample(ws, capsys, f"sdedit_{strength}", *argv, "--init", "{ws}/digit.png", "--strength", strength)
        rms[strength] = float((x - y).pow(2).mean().sqrt())
        assert meta["conditioning"] == "sdedit" and meta["strength"] == str(float(strength))
        if strength == "1":
            assert torch.equal(x, plain), "strength 1 must be the unconditional run from the same seeds"
    assert (ws / "sdedit_1" / "observed.png").is_file()
    assert rms["0.02"] < 0.2 < rms["1"] and rms["0.02"] < rms["0.3"] < rms["1"], rms


def test_infill_keeps_the_observed_characters_and_fills_every_blank(ws, capsys):
    text = "ab_a__bd"
    x, meta = sample(ws, capsys, "infilled", "{ws}/text_run", "--infill", text, "--n", "6")
    vocab = "abcd"
    observed = torch.tensor([c != "_" for c in text])
    assert x.shape == (6, 8) and meta["conditioning"] == "infill" and meta["observed"] == text
    assert torch.equal(x[:, observed], torch.tensor([vocab.index(c) for c in text if c != "_"]).expand(6, -1))
    assert bool(((x >= 0) & (x < len(vocab))).all()), "a blank was left masked or filled outside the vocabulary"
    lines = [line for line in (ws / "infilled" / "samples.txt").read_text().splitlines() if line and not line.startswith("---")]
    assert len(lines) == 6 and all(len(s) == 8 and all(t in (c, "_") and c in vocab for c, t in zip(s, text)) for s in lines), lines
    assert not (ws / "infilled" / "observed.png").exists()


def test_a_foreign_folder_inpaints_as_the_run_does(ws, capsys, tmp_path):
    pytest.importorskip("diffusers")
    from udm.interop.export import export_diffusers

    folder = export_diffusers(str(ws / "image_run"), tmp_path / "pipeline")
    argv = ("--inpaint", "{ws}/digit.png", "--mask", "{ws}/mask.png", "--n", "3", "--sampler", "ddpm", "--steps", "10")
    x, meta = sample(ws, capsys, "foreign", "--from", str(folder), *argv)
    assert meta["conditioning"] == "inpaint" and (ws / "foreign" / "observed.png").is_file()
    assert torch.equal(x[:, 0][:, KEPT], read_image(ws / "digit.png")[0][KEPT].expand(3, -1))
    ours, _ = sample(ws, capsys, "ours", "{ws}/image_run", *argv)
    assert torch.allclose(x, ours, atol=1e-4)


I = ["sample", "{ws}/image_run", "--out", "{ws}/out", "--quiet"]
INPAINT = ["--inpaint", "{ws}/digit.png", "--mask", "{ws}/mask.png"]
INIT = ["--init", "{ws}/digit.png", "--strength", "0.5"]
T = ["sample", "{ws}/text_run", "--out", "{ws}/out", "--quiet"]
P = ["sample", "{ws}/points_run", "--out", "{ws}/out", "--quiet"]
MISTAKES = [
    # the images
    ("unreadable image", [*I, "--inpaint", "{ws}/afile", "--mask", "{ws}/mask.png"], ("--inpaint: cannot read image",)),
    ("missing image", [*I, "--inpaint", "{ws}/nope.png", "--mask", "{ws}/mask.png"], ("nope.png",)),
    ("image of another size", [*I, "--inpaint", "{ws}/big.png", "--mask", "{ws}/mask.png"], ("(1, 9, 9)", "(1, 8, 8)")),
    ("image with other channels", [*I, "--inpaint", "{ws}/rgb.png", "--mask", "{ws}/mask.png"], ("(3, 8, 8)", "(1, 8, 8)")),
    ("init image of another size", [*I, "--init", "{ws}/big.png", "--strength", "0.5"], ("--init", "(1, 9, 9)", "(1, 8, 8)")),
    ("unreadable init image", [*I, "--init", "{ws}/afile", "--strength", "0.5"], ("--init: cannot read image",)),
    ("unreadable mask", [*I, "--inpaint", "{ws}/digit.png", "--mask", "{ws}/afile"], ("--mask: cannot read image",)),
    ("mask of another size", [*I, "--inpaint", "{ws}/digit.png", "--mask", "{ws}/small.png"], ("7x7", "8x8")),
    ("mask keeps nothing", [*I, "--inpaint", "{ws}/digit.png", "--mask", "{ws}/black.png"], ("all black",)),
    ("mask fills nothing", [*I, "--inpaint", "{ws}/digit.png", "--mask", "{ws}/white.png"], ("all white",)),
    # the model's kind of data
    ("mask on a points model", [*P, *INPAINT], ("image model", "generates points")),
    ("mask on a points model, default output", ["sample", "{ws}/points_run", "--quiet", *INPAINT], ("generates points",)),
    ("init on a points model", [*P, *INIT], ("generates points",)),
    ("inpaint on a token model", [*T, *INPAINT], ("generates tokens", "--infill")),
    ("init on a token model", [*T, *INIT], ("generates tokens",)),
    ("infill on an image model", [*I, "--infill", "ab__"], ("generates image", "--inpaint IMAGE --mask MASK")),
    ("infill on a points model", [*P, "--infill", "a_"], ("generates points",)),
    # the infill text
    ("infill without a blank", [*T, "--infill", "abcabcab"], ("no blank",)),
    ("infill all blanks", [*T, "--infill", "________"], ("all blanks",)),
    ("infill of another length", [*T, "--infill", "ab_"], ("3 characters", "8")),
    ("infill outside the vocabulary", [*T, "--infill", "abz_____"], ("'z'", "'abcd'")),
    # strength
    ("strength zero", [*I, "--init", "{ws}/digit.png", "--strength", "0"], ("--strength",)),
    ("strength above 1", [*I, "--init", "{ws}/digit.png", "--strength", "1.5"], ("--strength",)),
    ("strength nan", [*I, "--init", "{ws}/digit.png", "--strength", "nan"], ("--strength",)),
    # combinations
    ("inpaint and init", [*I, *INPAINT, *INIT], ("--inpaint and --init", "choose one")),
    ("inpaint and infill", [*I, *INPAINT, "--infill", "a_"], ("--inpaint and --infill", "choose one")),
    ("init and infill", [*I, *INIT, "--infill", "a_"], ("--init and --infill", "choose one")),
    ("mask without inpaint", [*I, "--mask", "{ws}/mask.png"], ("--mask needs --inpaint",)),
    ("inpaint without mask", [*I, "--inpaint", "{ws}/digit.png"], ("needs --mask",)),
    ("strength without init", [*I, "--strength", "0.5"], ("--strength needs --init",)),
    ("init without strength", [*I, "--init", "{ws}/digit.png"], ("needs --strength",)),
    ("resample without inpaint", [*I, "--resample", "2"], ("--resample needs --inpaint",)),
    ("resample with init", [*I, *INIT, "--resample", "2"], ("--resample needs --inpaint",)),
    ("jump without inpaint", [*I, "--jump", "2"], ("--jump needs --inpaint",)),
    ("jump without resample", [*I, *INPAINT, "--jump", "2"], ("needs --resample R > 1",)),
    ("resample zero", [*I, *INPAINT, "--resample", "0"], ("--resample",)),
    ("resample on a process without a forward transition", ["sample", "{ws}/blur_run", "--out", "{ws}/out", "--quiet", *INPAINT,
                                                            "--resample", "2"], ("forward transition", "'blur'", "--resample 1")),
]


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root``; files with their size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0) for p in root.rglob("*")}


@pytest.mark.parametrize(("argv", "fragments"), [c[1:] for c in MISTAKES], ids=[c[0] for c in MISTAKES])
def test_a_conditioning_mistake_is_one_line_and_writes_nothing(ws, capsys, monkeypatch, argv, fragments):
    monkeypatch.chdir(ws)
    before = listing(ws)
    code = main([a.format(ws=ws) for a in argv])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("udm: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert listing(ws) == before, "a refused command changed the work folder"
