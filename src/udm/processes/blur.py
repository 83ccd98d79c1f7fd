"""Blur degradations for cold diffusion (THEORY §4.2): iterated Gaussian blur and DCT heat dissipation.

Both are separable, so D_t(X) = A_t X A'_t^T per channel (:class:`~.cold.SeparableColdProcess`):

* ``form="iterated"`` (Bansal et al. 2022): D_t = G_t * ... * G_1 * x, t 2-D Gaussian
  convolutions of size ``kernel_size``, each padded by ``padding``. A 2-D Gaussian
  kernel is the outer product of two normalized 1-D kernels and 2-D padding
  ("reflect", "zeros", "circular") is per-axis padding, so each step is
  X -> M_i X M_i^T with M_i the 1-D "pad then correlate" matrix, and A_t = M_t ... M_1
  exactly (the same numbers as t rounds of ``F.pad`` + ``conv2d``, without the t loop).
  The std of step i = 1..T is ``std_start * exp(std_rate (i - 1))`` ("exponential") or
  ``std_start + std_rate (i - 1)`` ("linear"); the official code's loop index starts at
  0, so std_start = 1, std_rate = 0.01 is its "Exponential" routine (THEORY's e^{0.01 i})
  and std_start = 0.35, std_rate = 0.01 its CIFAR-10 routine (0.35 + i/100).
* ``form="dct"`` (heat dissipation, Rissanen et al. 2023): the heat equation with
  Neumann boundaries solved exactly in the DCT basis. Per axis of length N,
  D(tau) = C^T diag(exp(-pi^2 k^2 tau / N^2)) C with C the orthonormal DCT-II matrix,
  so D(tau1) D(tau2) = D(tau1 + tau2) and the per-channel mean (k = 0) is preserved.
  tau_t = sigma_B(t)^2 / 2 with sigma_B log-spaced from ``blur_min`` to ``blur_max``
  over t = 1..T, and tau_0 = 0.

Options of the other form are rejected, so a config says exactly what it uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
import torch

from .cold import SeparableColdProcess

Tensor = torch.Tensor

PADDINGS = ("reflect", "zeros", "circular")
STD_SCHEDULES = ("exponential", "linear")
_ITERATED = {"kernel_size": 27, "std_schedule": "exponential", "std_rate": 0.01, "std_start": None, "padding": "reflect"}
_DCT = {"blur_min": 0.5, "blur_max": 20.0}
_DEFAULT_T = {"iterated": 300, "dct": 100}
_DEFAULT_STD_START = {"exponential": 1.0, "linear": 0.35}


def gaussian_kernel_1d(size: int, std: float) -> np.ndarray:
    """The normalized 1-D Gaussian exp(-(j - size//2)^2 / (2 std^2)), j = 0..size-1 (float64)."""
    j = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(j * j) / (2.0 * std * std))
    return g / g.sum()


def padded_correlation_matrix(kernel: np.ndarray, n: int, padding: str) -> np.ndarray:
    """M (n, n) with M x = correlate(pad(x, k//2, padding), kernel), "valid" part (one axis).

    Reflect padding mirrors about the edge pixel (x[-m] for m < 0, as ``F.pad(mode="reflect")``),
    circular wraps modulo n, zeros drops the outside taps.
    """
    k = kernel.shape[0]
    p = k // 2
    rows = np.repeat(np.arange(n), k)
    taps = np.tile(np.arange(k), n)
    src = rows + taps - p
    if padding == "reflect":
        src = np.abs(src)
        src = np.where(src >= n, 2 * (n - 1) - src, src)
    elif padding == "circular":
        src = np.mod(src, n)
    else:
        keep = (src >= 0) & (src < n)
        rows, taps, src = rows[keep], taps[keep], src[keep]
    m = np.zeros((n, n), dtype=np.float64)
    np.add.at(m, (rows, src), kernel[taps])
    return m


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix C (n, n): C x = scipy.fft.dct(x, norm="ortho")."""
    return scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)


def heat_matrices(n: int, taus: np.ndarray | list[float]) -> np.ndarray:
    """D(tau) = C^T diag(exp(-pi^2 k^2 tau / n^2)) C for each tau: the heat semigroup on an axis of length n.

    Shape (len(taus), n, n), float64. D(0) = I, D(a) D(b) = D(a + b), and the
    constant vector (k = 0) is fixed, so means are preserved.
    """
    c = dct_matrix(n)
    k2 = np.arange(n, dtype=np.float64) ** 2
    decay = np.exp(-(math.pi**2) * np.asarray(taus, dtype=np.float64)[:, None] * k2[None, :] / (n * n))
    return np.einsum("ki,tk,kj->tij", c, decay, c)


class BlurProcess(SeparableColdProcess):
    """Cold diffusion by blurring, x_t = D_t(x0) + sigma eps (THEORY §4.2); see the module docstring.

    Args:
        timesteps: T (default 300 for "iterated", THEORY's 128x128 generation setting; 100 for "dct").
        sigma, sigma_schedule: added noise std (0 = pure cold diffusion) and its schedule (:class:`~.cold.ColdProcess`).
        form: "iterated" (Gaussian kernels) or "dct" (exact heat dissipation).
        kernel_size, std_schedule, std_rate, std_start, padding: the "iterated" form
            (defaults 27, "exponential", 0.01, 1.0 or 0.35 for "linear", "reflect").
        blur_min, blur_max: the "dct" form's sigma_B range (defaults 0.5, 20, Rissanen et al.).
        prior_weights, prior_means, prior_stds, prior_noise: the generation prior (:class:`~.cold.ColdProcess`).
    """

    def __init__(
        self,
        timesteps: int | None = None,
        sigma: float = 0.0,
        *,
        sigma_schedule: str = "constant",
        form: str = "iterated",
        kernel_size: int | None = None,
        std_schedule: str | None = None,
        std_rate: float | None = None,
        std_start: float | None = None,
        padding: str | None = None,
        blur_min: float | None = None,
        blur_max: float | None = None,
        prior_weights: Sequence[float] | None = None,
        prior_means: Sequence[Sequence[float]] | None = None,
        prior_stds: Sequence[Sequence[float]] | None = None,
        prior_noise: float = 1e-3,
    ) -> None:
        if form not in _DEFAULT_T:
            raise ValueError(f"unknown blur form {form!r}; valid: dct, iterated")
        given = {
            "kernel_size": kernel_size, "std_schedule": std_schedule, "std_rate": std_rate,
            "std_start": std_start, "padding": padding, "blur_min": blur_min, "blur_max": blur_max,
        }
        own = _ITERATED if form == "iterated" else _DCT
        foreign = sorted(k for k, v in given.items() if v is not None and k not in own)
        if foreign:
            raise ValueError(f"option(s) {', '.join(foreign)} do not apply to the {form!r} blur form")
        self.form = form
        self.name = "blur" if form == "iterated" else "blur_dct"
        super().__init__(
            _DEFAULT_T[form] if timesteps is None else timesteps, sigma, sigma_schedule=sigma_schedule,
            prior_weights=prior_weights, prior_means=prior_means, prior_stds=prior_stds, prior_noise=prior_noise,
        )
        opts = {k: own[k] if given[k] is None else given[k] for k in own}
        if form == "iterated":
            self._init_iterated(**opts)
        else:
            self._init_dct(**opts)

    def _init_iterated(
        self, kernel_size: int, std_schedule: str, std_rate: float, std_start: float | None, padding: str
    ) -> None:
        is_int = isinstance(kernel_size, (int, np.integer)) and not isinstance(kernel_size, bool)
        if not is_int or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer (the kernel is centred), got {kernel_size!r}")
        if std_schedule not in STD_SCHEDULES:
            raise ValueError(f"unknown std_schedule {std_schedule!r}; valid: {', '.join(STD_SCHEDULES)}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; valid: {', '.join(PADDINGS)}")
        self.kernel_size = int(kernel_size)
        self.std_schedule = std_schedule
        self.std_rate = float(std_rate)
        self.std_start = float(_DEFAULT_STD_START[std_schedule] if std_start is None else std_start)
        self.padding = padding
        bad = [(i, s) for i, s in enumerate(self.step_stds().tolist(), start=1) if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ValueError(
                f"the {std_schedule} std schedule (std_start={self.std_start:g}, std_rate={self.std_rate:g}) "
                f"gives std {bad[0][1]:g} at step {bad[0][0]}; every step's std must be > 0"
            )

    def _init_dct(self, blur_min: float, blur_max: float) -> None:
        if not 0 < blur_min <= blur_max or not math.isfinite(blur_max):
            raise ValueError(f"need 0 < blur_min <= blur_max, got blur_min={blur_min!r}, blur_max={blur_max!r}")
        self.blur_min, self.blur_max = float(blur_min), float(blur_max)

    # --- schedules ------------------------------------------------------------------------------
    def step_stds(self) -> np.ndarray:
        """Iterated form: the std of the Gaussian kernel of steps i = 1..T (shape (T,))."""
        i = np.arange(self.T, dtype=np.float64)
        if self.std_schedule == "exponential":
            return self.std_start * np.exp(self.std_rate * i)
        return self.std_start + self.std_rate * i

    def taus(self) -> np.ndarray:
        """DCT form: tau_t = sigma_B(t)^2 / 2 for t = 0..T (shape (T + 1,), tau_0 = 0)."""
        sigma_b = np.exp(np.linspace(math.log(self.blur_min), math.log(self.blur_max), self.T))
        return np.concatenate([[0.0], 0.5 * sigma_b**2])

    # --- the separable degradation --------------------------------------------------------------
    def check_image_size(self, height: int, width: int) -> None:
        """Reflect padding mirrors at most n - 1 pixels: kernel_size // 2 must be < H and < W."""
        if self.form == "iterated" and self.padding == "reflect" and self.kernel_size // 2 >= min(height, width):
            raise ValueError(
                f"an image of size {height}x{width} is too small for blur kernel_size={self.kernel_size} with "
                f"reflect padding (it needs kernel_size // 2 = {self.kernel_size // 2} < height and width); "
                f"use kernel_size <= {2 * min(height, width) - 1} or padding='zeros' / 'circular'"
            )

    def axis_matrices(self, n: int) -> Tensor:
        """[A_0 = I, ..., A_T] for one axis of length n: cumulative kernel products, or heat matrices."""
        if self.form == "dct":
            mats = heat_matrices(n, self.taus())
            mats[0] = np.eye(n)
        else:
            mats = np.empty((self.T + 1, n, n), dtype=np.float64)
            mats[0] = np.eye(n)
            for i, std in enumerate(self.step_stds(), start=1):
                step = padded_correlation_matrix(gaussian_kernel_1d(self.kernel_size, float(std)), n, self.padding)
                mats[i] = step @ mats[i - 1]
        return torch.from_numpy(mats)

    def config(self) -> dict[str, Any]:
        """Constructor options of this form (JSON-able)."""
        out = super().config()
        out["form"] = self.form
        if self.form == "iterated":
            out.update(
                kernel_size=self.kernel_size, std_schedule=self.std_schedule, std_rate=self.std_rate,
                std_start=self.std_start, padding=self.padding,
            )
        else:
            out.update(blur_min=self.blur_min, blur_max=self.blur_max)
        return out
