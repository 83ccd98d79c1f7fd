"""Data sets as in-memory tensors: 2-D toys, digits, MNIST-format IDX files, image folders, numpy files, text.

``load_dataset(name, **options)`` looks ``name`` up in ``DATASETS`` and
returns a :class:`Dataset` (``x`` float ``(N, *shape)``, images ``(N, C, H, W)``
in [-1, 1], or int64 token ids ``(N, L)`` for the discrete processes;
optional int64 labels ``y``). Registered names:

* toys (:mod:`udm.data.toys`): ``two_moons``, ``eight_gaussians``,
  ``checkerboard``, ``swiss_roll``, ``rings``: ``(n, seed, noise)``; another
  ``seed`` is an independent fresh sample;
* ``digits``: scikit-learn's bundled 8x8 digits;
* ``mnist``: MNIST-format IDX files (``path``, ``split``, ``limit``);
* ``binary_mnist``: the same files as 0/1 pixel tokens (``path``, ``split``,
  ``limit``, ``size``, ``threshold``);
* ``tinyshakespeare`` and ``text_file``: character ids in ordered,
  non-overlapping windows (``path``, ``seq_len``, ``limit``), split 90/10
  by holding out the end of the text;
* ``image_folder``: PNG/JPEG files, labels from class sub-folders
  (``path``, ``size``, ``channels``);
* ``array``: ``.npy`` / ``.npz`` files (``path``, ``key``, ``kind``);
* ``reflow``: couplings (x0, x1) drawn from a trained rectified-flow run, x1
  kept as the paired ``noise`` (``run``, ``pairs``, ``sampler``, ``steps``,
  ``seed``). It loads a trained model, so it lives in (and is registered
  from) :mod:`udm.training.reflow`, above this layer.
"""

from .arrays import array
from .base import DATASETS, KINDS, Dataset, from_uint8, load_dataset, loader_options, to_uint8
from .images import IMAGE_SUFFIXES, digits, image_folder, read_image
from .idx import binary_mnist, find_mnist, mnist, mnist_files, mnist_search_dirs, read_idx
from .paths import DATA_ENV, data_search_dirs, default_data_dir
from .text import find_tinyshakespeare, text_file, tinyshakespeare, tinyshakespeare_candidates
from .toys import TOYS, checkerboard, eight_gaussians, rings, swiss_roll, two_moons

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "IMAGE_SUFFIXES",
    "KINDS",
    "TOYS",
    "Dataset",
    "array",
    "binary_mnist",
    "checkerboard",
    "data_search_dirs",
    "default_data_dir",
    "digits",
    "eight_gaussians",
    "find_mnist",
    "find_tinyshakespeare",
    "from_uint8",
    "image_folder",
    "load_dataset",
    "loader_options",
    "mnist",
    "mnist_files",
    "mnist_search_dirs",
    "read_idx",
    "read_image",
    "rings",
    "swiss_roll",
    "text_file",
    "tinyshakespeare",
    "tinyshakespeare_candidates",
    "to_uint8",
    "two_moons",
]
