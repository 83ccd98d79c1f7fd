"""Deterministic training of udm's own feature networks: the same weights file, byte for byte, on any x86-64 CPU.

The pinned SHA-256 of a shipped network is only worth something if anyone
can rebuild the file and get the same hash. ``scripts/train_feature_nets.py
NAME`` does that; it sets :data:`PINNED_ENV` before torch is first imported
(re-executing itself if needed), and :func:`train_classifier` refuses to run
without it. What is pinned, and why (each measured on torch 2.13.0 CPU with
MKL 2024.2 and oneDNN 3.12, by running the same computation under the other
settings and seeing the bytes change):

* ``ATEN_CPU_CAPABILITY=default``: ATen picks its SIMD kernels (AVX2,
  AVX512) by CPU when torch starts, and they differ in FMA use, in Sleef
  versus libm elementwise functions and in vector width: log_softmax, Adam's
  ``addcmul`` and the convolution backward each change in the last bits
  between AVX2 and AVX512. ``default`` runs the baseline x86-64 build of
  every kernel, the same instructions on every CPU.
* ``MKL_CBWR=COMPATIBLE``: MKL (the BLAS here, see ``torch.__config__.show()``)
  picks sgemm (linear layers, im2col convolutions) and vector-math (exp,
  sqrt) code paths by CPU; its conditional numerical reproducibility mode
  ``COMPATIBLE`` runs the same SSE2 path on Intel and compatible CPUs.
* one thread (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``,
  ``torch.set_num_threads(1)``): a threaded reduction or gemm splits its
  sums by the thread count.
* oneDNN off (``torch.backends.mkldnn``): it JIT-compiles convolutions for
  the CPU's instruction set.
* NNPACK off (``torch.backends.nnpack``): with oneDNN off, convolutions go
  to NNPACK, whose x86 kernels need AVX2; off, they are im2col + MKL sgemm.
* seeds: the initial weights are drawn after ``torch.manual_seed(seed)``
  (uniform draws, generated serially on every CPU) inside ``fork_rng`` so the
  caller's generator is untouched; the batch order is ``randperm`` of a
  ``torch.Generator`` per run; Adam runs its single-tensor loop
  (``foreach=False``, no fused kernel) with a linear learning-rate decay.
* the file: safetensors with the network's name as its only metadata, nothing
  machine- or time-dependent.

Checked on one AVX-512 machine by emulating other CPUs: with the pins, the
files are the same bytes when MKL is limited to AVX2 or SSE4.2
(``MKL_ENABLE_INSTRUCTIONS``) and glibc to its pre-AVX2 code
(``GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F``); without them,
``ATEN_CPU_CAPABILITY`` avx2 versus avx512, or MKL limited to AVX2 without
``MKL_CBWR``, each give another file.

Not pinned: the torch version (kernels change between releases; the shipped
files were made with torch 2.13.0) and glibc's libm, which the baseline
kernels call for exp and log and which picks FMA variants by CPU (its expf
and logf gave the same bits with and without FMA on 200k test points).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from ..atomic import write_atomic
from ..data import Dataset
from ..errors import ConfigError
from .base import ShippedClassifier
from .common import quantize

Tensor = torch.Tensor

#: environment variables that must be set before torch (and MKL) start for bitwise-reproducible training
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def pinning_problems() -> list[str]:
    """What keeps this process from training reproducibly: unset :data:`PINNED_ENV` entries, or ones set too late."""
    problems = [f"{k}={v}" for k, v in PINNED_ENV.items() if os.environ.get(k) != v]
    if not problems and torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        problems.append("ATEN_CPU_CAPABILITY=default before torch is imported")
    return problems


@contextmanager
def pinned_backends() -> Iterator[None]:
    """One torch thread, oneDNN and NNPACK off, for the duration of the block (restored after)."""
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    (nnpack,) = torch.backends.nnpack.set_flags(False)
    try:
        yield
    finally:
        torch.backends.nnpack.set_flags(nnpack)
        torch.backends.mkldnn.enabled = mkldnn
        torch.set_num_threads(threads)


def fit(net: ShippedClassifier, inputs: Tensor, labels: Tensor, *, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """Minimise cross-entropy of ``net`` on prepared ``inputs``: Adam, learning rate ``lr`` decaying linearly to 0.

    Each epoch visits the samples in the order of a ``randperm`` drawn from
    one generator seeded with ``seed``; the last batch of an epoch may be short.
    """
    n = inputs.shape[0]
    steps = epochs * -(-n // batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr, foreach=False, fused=False)
    order = torch.Generator().manual_seed(seed)
    step = 0
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(net.classify(net.embed(inputs[idx])), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = lr * (1.0 - step / steps)
            opt.step()
            step += 1
    net.eval()


def train_classifier(cls: type[ShippedClassifier], data: Dataset | None = None, *, pinned: bool = True) -> ShippedClassifier:
    """A new ``cls`` trained with ``cls.recipe`` on ``data`` (default: its training split, ``cls.training_data()``).

    The result is frozen and in eval mode.
    The inputs are ``data.x`` through the network's own inference transform
    (quantize, then :meth:`ShippedClassifier.prepare`), so training and
    feature extraction see the same values. ``pinned`` (default) refuses to
    run unless :func:`pinning_problems` is empty: only then does the result
    equal the shipped weights byte for byte.
    """
    problems = pinning_problems() if pinned else []
    if problems:
        raise ConfigError(
            f"training {cls.name!r} reproducibly needs {', '.join(problems)} set before torch is imported; "
            f"run scripts/train_feature_nets.py {cls.name} (or pass pinned=False to train without the guarantee)"
        )
    data = cls.training_data() if data is None else data
    recipe = cls.recipe
    with pinned_backends():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe["seed"])
            net = cls()
        inputs = net.prepare(quantize(data.x))
        fit(net, inputs, data.y, epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"])
    return net.requires_grad_(False)


def weights_bytes(net: ShippedClassifier) -> bytes:
    """The safetensors file of ``net``'s weights and buffers (float32; int64 batch-norm step count), the network name as the only metadata."""
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    return save(tensors, metadata={"network": net.name})


def save_weights(net: ShippedClassifier, path: str | Path) -> str:
    """Write ``net``'s weights file to ``path`` atomically and return its SHA-256."""
    data = weights_bytes(net)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()
