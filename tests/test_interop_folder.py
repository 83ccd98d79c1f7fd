"""Loading diffusers folders (udm.interop.diffusers_folder) and ``udm sample/eval --from``: outputs, refusals, CLI.

Nothing is downloaded: a tiny random ``UNet2DModel`` is saved with diffusers'
own ``save_pretrained`` into a temporary folder and loaded from there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import udm
from udm.cli import main
from udm.errors import InteropError
from udm.interop import load

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:__array__ implementation:DeprecationWarning")

Tensor = torch.Tensor


def _unet(num_class_embeds: int | None = None, seed: int = 0) -> object:
    """A tiny UNet2DModel on (1, 8, 8) images with random weights (conv_out re-drawn so the output is not zero)."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8, num_class_embeds=num_class_embeds,
    )
    torch.nn.init.normal_(model.conv_out.weight, std=0.1)
    return model.eval()


def _pipeline(folder: Path, *, prediction: str = "epsilon", classes: int | None = None, **save: object) -> Path:
    """Save a DDIM pipeline folder (model_index.json, unet/, scheduler/) with diffusers itself."""
    scheduler = diffusers.DDIMScheduler(prediction_type=prediction, timestep_spacing="trailing", clip_sample=False)
    diffusers.DDIMPipeline(unet=_unet(classes), scheduler=scheduler).save_pretrained(folder, **save)
    return folder


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pipeline(tmp_path_factory.mktemp("pipe") / "ddim")


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("udm: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_loaded_denoiser_is_the_network_in_its_own_parameterization(tmp_path: Path, prediction: str) -> None:
    """den.predict(x, t = k + 1, kind) is the UNet's output at timestep k, for each prediction type."""
    folder = _pipeline(tmp_path / "p", prediction=prediction)
    foreign = load(folder, dtype=torch.float64)
    assert foreign.shape == (1, 8, 8) and foreign.num_classes is None
    kind = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").double().requires_grad_(False)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (0, 17, 500, 999):
        ref = unet(x, k).sample
        got = foreign.denoiser.predict(x, float(k + 1), kind)
        assert float((got - ref).abs().max()) <= 1e-10


def test_model_folder_finds_the_sibling_scheduler_or_says_it_is_missing(pipe: Path, tmp_path: Path) -> None:
    assert load(pipe / "unet").process.name == "ddpm"
    _unet().save_pretrained(tmp_path / "alone")
    with pytest.raises(InteropError, match=r"no scheduler config .*--scheduler PATH"):
        load(tmp_path / "alone")
    assert load(tmp_path / "alone", scheduler=pipe / "scheduler").shape == (1, 8, 8)
    with pytest.raises(InteropError, match=r"scheduler config .*nowhere\.json does not exist"):
        load(tmp_path / "alone", scheduler=tmp_path / "nowhere.json")


def test_pickled_weights_need_explicit_trust(tmp_path: Path) -> None:
    """A .bin is refused by default with a one-line reason; with trust_pickle it loads the same weights."""
    folder = _pipeline(tmp_path / "p", safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(InteropError, match=r"diffusion_pytorch_model\.bin is a pickle.*--trust-pickle"):
        load(folder)
    trusted = load(folder, trust_pickle=True, dtype=torch.float64)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    ref = diffusers.UNet2DModel.from_pretrained(folder / "unet", use_safetensors=False).double().requires_grad_(False)(x, 3).sample
    assert float((trusted.denoiser.predict(x, 4.0, "eps") - ref).abs().max()) <= 1e-10


def test_missing_truncated_and_mismatched_weights_name_the_file(tmp_path: Path) -> None:
    folder = _pipeline(tmp_path / "p")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InteropError, match=r"cannot read weight file .*diffusion_pytorch_model\.safetensors.*truncated"):
        load(folder)
    weights.unlink()
    with pytest.raises(InteropError, match=r"missing file .*diffusion_pytorch_model\.safetensors"):
        load(folder)
    weights.write_bytes(data)
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["block_out_channels"] = [8, 24]
    config_file.write_text(json.dumps(config))
    with pytest.raises(InteropError, match=r"does not fit .*config\.json: .* has shape"):
        load(folder)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(InteropError, match=r"names no 'unet' or 'transformer'"):
        load(folder)


def test_text_conditioned_unet_and_unknown_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "cond").mkdir()
    (tmp_path / "cond" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(InteropError, match=r"does not drive UNet2DConditionModel \(it is conditioned on text"):
        load(tmp_path / "cond")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InteropError, match=r"is in no format udm reads; .*diffusers"):
        load(tmp_path / "empty")


def test_missing_extra_is_named(pipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(InteropError, match=r"needs the diffusers package.*pip install 'udm\[diffusers\]'"):
        load(pipe)


def test_cli_samples_a_folder_with_its_own_scheduler_and_with_udm_samplers(pipe: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`udm sample --from` writes samples with the scheduler's own grid and sampler, and with any udm sampler and grid."""
    assert main(["sample", "--from", str(pipe), "--steps", "4", "--n", "2", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert (tmp_path / "a" / "samples.png").is_file()
    assert main(["sample", "--from", str(pipe), "--sampler", "heun", "--grid", "karras", "--steps", "3", "--n", "2",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a" / "samples.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "diffusers" and meta["scheduler"] == "DDIMScheduler" and meta["sampler"] == "ddim"
    capsys.readouterr()


def test_cli_class_labels_and_nll_on_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Labels reach the UNet; --cfg needs a null label, which a udm export records and the API can name."""
    folder = _pipeline(tmp_path / "cond", classes=3)
    assert main(["sample", "--from", str(folder), "--class", "2", "--steps", "4", "--n", "2", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    err = _one_line_error(capsys, ["sample", "--from", str(folder), "--class", "3", "--steps", "4"])
    assert "outside the model's label set 0..2" in err
    assert "no null_class" in _one_line_error(capsys, ["sample", "--from", str(folder), "--class", "1", "--cfg", "1", "--steps", "4"])
    guided = load(folder, null_class=2, dtype=torch.float64)
    assert guided.num_classes == 2 and guided.denoiser.net.null_class == 2
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").double().requires_grad_(False)
    y = torch.tensor([0, 1])
    w = 1.5
    ref = (1 + w) * unet(x, 99, class_labels=y).sample - w * unet(x, 99, class_labels=torch.tensor([2, 2])).sample
    cfg = udm.guidance.ClassifierFreeGuidance(guided.denoiser, w)
    assert float((guided.denoiser.predict(x, 100.0, "eps", cond=y) - unet(x, 99, class_labels=torch.tensor([2, 2])).sample).abs().max()) > 1e-3
    eps = udm.convert(cfg(x, 100.0, y), x, 100.0, guided.process, "x0", "eps")
    assert float((eps - ref).abs().max()) <= 1e-9
    with pytest.raises(InteropError, match="must be the last label embedding, 2"):
        load(folder, null_class=0)
    with torch.no_grad():
        assert float((guided.denoiser(x, 100.0) - guided.denoiser(x, 100.0, torch.tensor([2, 2]))).abs().max()) == 0.0


def test_cli_nll_of_a_folder_on_a_named_dataset(pipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`udm eval --nll --from PATH --data digits` scores the foreign model's PF-ODE likelihood on digits (8x8, one channel)."""
    capsys.readouterr()
    assert main(["eval", "--nll", "--from", str(pipe), "--data", "digits", "--n", "2", "--rtol", "1e-2", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["format"] == "diffusers" and metrics["n"] == 2 and metrics["bits_per_dim"] > 0


def test_cli_refusals_are_one_line(pipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "exactly one of them" in _one_line_error(capsys, ["sample"])
    assert "exactly one of them" in _one_line_error(capsys, ["sample", str(tmp_path), "--from", str(pipe)])
    assert "is in no format udm reads" in _one_line_error(capsys, ["sample", "--from", str(tmp_path)])
    assert "has no data of its own; name a dataset with --data" in _one_line_error(capsys, ["eval", "--nll", "--from", str(pipe)])
    err = _one_line_error(capsys, ["eval", "--from", str(pipe), "--data", "two_moons"])
    assert "has samples of shape (2,) but the model draws (1, 8, 8)" in err
    folder = _pipeline(tmp_path / "pickled", safe_serialization=False)
    assert "--trust-pickle" in _one_line_error(capsys, ["sample", "--from", str(folder), "--steps", "2"])
    assert "--raw-weights" in _one_line_error(capsys, ["sample", "--from", str(pipe), "--raw-weights"])
    scheduler = json.loads((pipe / "scheduler" / "scheduler_config.json").read_text())
    (tmp_path / "sched.json").write_text(json.dumps({**scheduler, "clip_sample": True, "thresholding": True}))
    err = _one_line_error(capsys, ["sample", "--from", str(pipe), "--scheduler", str(tmp_path / "sched.json")])
    assert "thresholding" in err or "clip_sample" in err
    assert not (Path("samples") / "ddim_ddim_50").exists()


def test_process_is_udm_ddpm_with_the_scheduler_table(pipe: Path) -> None:
    """The loaded process is DDPM with diffusers' alphas_cumprod (float32 table -> float64 schedule, 1e-6)."""
    foreign = load(pipe)
    ref = diffusers.DDIMScheduler.from_pretrained(pipe / "scheduler").alphas_cumprod.double()
    ours = torch.exp(foreign.process.schedule.log_alpha_bar(torch.arange(1, 1001, dtype=torch.float64)))
    assert float((ours - ref).abs().max()) <= 1e-6
    assert isinstance(foreign.denoiser, udm.Denoiser)


def test_udm_export_loads_back_into_udm_with_the_same_samples(tmp_path: Path) -> None:
    """export -> load: the scheduler's own sampler and grid give the run's samples, guidance included (null label recorded).

    The random-weight network makes samples of size ~100, so the bound is relative: the exported
    time-embedding table holds udm's embedding rounded to float32, as the run's weights are.
    """
    from test_interop_export import TINY_UNET, make_run

    from udm.guidance import ClassifierFreeGuidance
    from udm.interop import export_diffusers
    from udm.training import Experiment

    run = make_run(tmp_path / "run", {"name": "ddpm"}, "eps", {**TINY_UNET, "num_classes": 3})
    foreign = load(export_diffusers(str(run), tmp_path / "out"), dtype=torch.float64)
    exp = Experiment.from_run(str(run))
    model = exp.model(exp.net.to(torch.float64))
    assert foreign.num_classes == 3 and foreign.denoiser.net.null_class == exp.net.null_class
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    times = foreign.scheduler.grid(10)
    with torch.no_grad():
        for theirs, ours in ((foreign.denoiser, model), (ClassifierFreeGuidance(foreign.denoiser, 1.0), ClassifierFreeGuidance(model, 1.0))):
            a = udm.sample(theirs, foreign.scheduler.sampler, times=times, x_T=x_T, cond=y, dtype=torch.float64,
                           **foreign.scheduler.sampler_options)
            b = udm.sample(ours, "ddim", times=times, x_T=x_T, cond=y, dtype=torch.float64)
            assert float(b.abs().mean()) > 0.01 and float((a - b).abs().max()) <= 1e-9 * float(b.abs().max())
        with pytest.raises(InteropError, match="learned time embedding, a table of integer timesteps"):
            udm.sample(foreign.denoiser, "heun", steps=3, grid="karras", x_T=x_T, dtype=torch.float64)


def test_cli_export_then_sample_from_the_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`udm export RUN --to diffusers OUT` prints OUT; `udm sample --from OUT` samples it; refusals are one line."""
    from test_interop_export import TINY_UNET, make_run

    run = make_run(tmp_path / "run", {"name": "ddpm"}, "v", dict(TINY_UNET))
    capsys.readouterr()
    assert main(["export", str(run), "--to", "diffusers", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert main(["sample", "--from", str(tmp_path / "out"), "--steps", "5", "--n", "2", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert (tmp_path / "s" / "samples.png").is_file()
    err = _one_line_error(capsys, ["export", str(run), "--to", "diffusers", str(tmp_path / "out")])
    assert f"export folder {tmp_path / 'out'} already exists and is not empty" in err
    vp = make_run(tmp_path / "vp", {"name": "vp"}, "eps", dict(TINY_UNET))
    err = _one_line_error(capsys, ["export", str(vp), "--to", "diffusers", str(tmp_path / "vp_out")])
    assert "vp" in err and not (tmp_path / "vp_out").exists()
