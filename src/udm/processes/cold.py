"""Cold processes x_t = D_t(x0) + sigma eps with a deterministic degradation D_t (THEORY §4.2).

Bansal et al.'s Cold Diffusion, written as a UDM forward process (THEORY §3.1):

    F_t(x0, eps) = D_t(x0) + sigma eps,      t in {0, 1, ..., T},  D_0 = identity,

with D_t a blur (:mod:`.blur`), a fade / mask (:mod:`.fade`) or an
average-pool (:mod:`.pooling`). The inverse is F_t^{-1}(x0, x_t) = (x_t - D_t(x0)) / sigma,
so the generic kernels of :mod:`udm.kernels` apply unchanged:

* K0 (re-noise):    x_s = D_s(x0_hat) + sigma eps'           (the "naive" sampler);
* K1 (noise reuse): x_s = x_t + D_s(x0_hat) - D_t(x0_hat)    ("TACoS", the improved sampler).

**sigma = 0 (pure cold diffusion, the sigma -> 0 limit of THEORY §4.2).** Dividing by
sigma is impossible, so the noise coordinate is rescaled: q is the point mass at
0 (``sample_noise`` returns zeros, ``noise_is_standard_normal`` is False so K2 is
refused), F_t(x0, eps) = D_t(x0) + eps and F_t^{-1}(x0, x_t) = x_t - D_t(x0), the
residual. With eps = 0 the forward process is x_t = D_t(x0); K1 then becomes
exactly TACoS, x_{t-1} = x_t + D_{t-1}(x0_hat) - D_t(x0_hat), and K0 the naive
x_{t-1} = D_{t-1}(x0_hat). For sigma > 0, q = N(0, I) and K2 applies too.

Times are the integers 0..T (``t_min = 0``, ``t_max = T``, ``t_eps = 1``): a
sampler grid must land on integers, so choose a step count that divides T.
``t`` may be a scalar or one time per sample (training draws one t per sample).

**Generation prior (THEORY §4.2).** x_T is drawn as a constant image per sample
whose per-channel values come from a Gaussian mixture fitted to the per-channel
means of training images (:func:`fit_prior`), degraded by D_T, plus small Gaussian
noise ``prior_noise`` (the official code adds 0.001) and sigma eps when sigma > 0.
The mixture is stored as plain options (``prior_weights``, ``prior_means``,
``prior_stds``; diagonal covariances) so ``type(p)(**p.config())`` rebuilds it.

:class:`SeparableColdProcess` is the shared machinery of blur and pooling: their
D_t act on each axis separately, D_t(X) = A_t X B_t^T per channel, with the T + 1
per-axis matrices built once in float64 and cached per (size, device, dtype).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import rng
from .base import Process

Tensor = torch.Tensor
_INT_TOL = 1e-6


def _divisors(n: int, limit: int = 10) -> str:
    """The first ``limit`` divisors of n, for error messages."""
    divs = [d for d in range(1, n + 1) if n % d == 0]
    text = ", ".join(str(d) for d in divs[:limit])
    return text + (", ..." if len(divs) > limit else "")


def channel_means(x: Tensor | np.ndarray) -> np.ndarray:
    """Per-channel means (N, C) in float64 of images ``x`` (N, C, H, W)."""
    arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if arr.ndim != 4:
        raise ValueError(f"fit_prior needs training images of shape (N, C, H, W); got shape {tuple(arr.shape)}")
    return arr.mean(axis=(2, 3))


def fit_prior(x: Tensor | np.ndarray, components: int = 10, seed: int = 0) -> dict[str, Any]:
    """Fit the generation prior of THEORY §4.2: a diagonal GMM over the per-channel means of images ``x``.

    Returns the process options ``{"prior_weights": [K], "prior_means": [K][C],
    "prior_stds": [K][C]}`` (plain lists, JSON-able), fitted with
    ``sklearn.mixture.GaussianMixture(components, covariance_type="diag", random_state=seed)``.
    """
    from sklearn.mixture import GaussianMixture

    means = channel_means(x)
    if not isinstance(components, int) or components < 1:
        raise ValueError(f"components must be an integer >= 1, got {components!r}")
    if means.shape[0] < components:
        raise ValueError(
            f"fit_prior got {means.shape[0]} images for a {components}-component mixture; "
            "give more images or fewer components"
        )
    gmm = GaussianMixture(components, covariance_type="diag", random_state=seed).fit(means)
    return {
        "prior_weights": [float(w) for w in gmm.weights_],
        "prior_means": np.asarray(gmm.means_, dtype=np.float64).tolist(),
        "prior_stds": np.sqrt(np.asarray(gmm.covariances_, dtype=np.float64)).tolist(),
    }


class ColdProcess(Process):
    """F_t(x0, eps) = D_t(x0) + sigma eps on integer times 0..T (THEORY §4.2); subclasses give D_t.

    A subclass implements :meth:`_degrade` (D_t for validated images and integer
    levels) and, optionally, :meth:`check_image_size` and :meth:`config`.

    Args:
        timesteps: T, the number of degradation levels (t = 0 is the clean image).
        sigma: std of the added Gaussian noise; 0 is pure cold diffusion (see the module docstring).
        sigma_schedule: ``"constant"`` (sigma_t = sigma, THEORY §4.2 as written) or ``"linear"``
            (sigma_t = sigma t / T). With the linear schedule F_0 is the identity, so the last
            K1 step returns a clean image, while x_T still carries sigma-noise: the many-to-one
            forward / one-to-many reverse that §4.2 proposes against the information loss.
        prior_weights, prior_means, prior_stds: the generation prior's diagonal GMM over
            per-channel means (K weights, K x C means, K x C stds), e.g. from :meth:`fit_prior`.
        prior_noise: std of the small Gaussian noise added to the prior's constant image.
    """

    name = "cold"
    t_min = 0.0
    t_eps = 1.0
    integer_times = True

    def __init__(
        self,
        timesteps: int,
        sigma: float = 0.0,
        *,
        sigma_schedule: str = "constant",
        prior_weights: Sequence[float] | None = None,
        prior_means: Sequence[Sequence[float]] | None = None,
        prior_stds: Sequence[Sequence[float]] | None = None,
        prior_noise: float = 1e-3,
    ) -> None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
            raise ValueError(f"timesteps (T) must be an integer >= 1, got {timesteps!r}")
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        if not (np.isfinite(prior_noise) and prior_noise >= 0):
            raise ValueError(f"prior_noise must be >= 0, got {prior_noise!r}")
        self.T = int(timesteps)
        self.t_max = float(self.T)
        if sigma_schedule not in ("constant", "linear"):
            raise ValueError(f"sigma_schedule must be 'constant' or 'linear', got {sigma_schedule!r}")
        self.sigma = float(sigma)
        self.sigma_schedule = sigma_schedule
        self.prior_noise = float(prior_noise)
        self.noise_is_standard_normal = self.sigma > 0
        self._set_prior(prior_weights, prior_means, prior_stds)

    # --- configuration --------------------------------------------------------------------------
    def _set_prior(self, weights: Any, means: Any, stds: Any) -> None:
        given = [v is not None for v in (weights, means, stds)]
        if not any(given):
            self.prior_weights = self.prior_means = self.prior_stds = None
            return
        if not all(given):
            raise ValueError("give all of prior_weights, prior_means and prior_stds (or none of them)")
        w = np.asarray(weights, dtype=np.float64)
        m = np.asarray(means, dtype=np.float64)
        s = np.asarray(stds, dtype=np.float64)
        if w.ndim != 1 or m.ndim != 2 or m.shape != s.shape or m.shape[0] != w.shape[0] or w.size == 0:
            raise ValueError(
                "the prior mixture needs prior_weights of shape (K,), prior_means and prior_stds of shape (K, C); "
                f"got {w.shape}, {m.shape}, {s.shape}"
            )
        if not (np.isfinite(w).all() and np.isfinite(m).all() and np.isfinite(s).all()):
            raise ValueError("the prior mixture contains NaN or inf")
        if (w < 0).any() or w.sum() <= 0 or (s < 0).any():
            raise ValueError("prior_weights must be >= 0 with a positive sum, and prior_stds >= 0")
        self.prior_weights = (w / w.sum()).tolist()
        self.prior_means = m.tolist()
        self.prior_stds = s.tolist()

    @property
    def has_prior(self) -> bool:
        """True once the generation prior's mixture is set (fitted or given)."""
        return self.prior_weights is not None

    def fit_prior(self, x: Tensor | np.ndarray, components: int = 10, seed: int = 0) -> dict[str, Any]:
        """Fit the generation prior to training images ``x`` (see :func:`fit_prior`), store it and return it."""
        options = fit_prior(x, components=components, seed=seed)
        self._set_prior(options["prior_weights"], options["prior_means"], options["prior_stds"])
        return options

    def fit(self, x: Tensor, *, seed: int) -> dict[str, Any]:
        """The generation prior fitted to training images ``x`` (:meth:`fit_prior`), or ``{}`` when it is given."""
        return {} if self.has_prior else self.fit_prior(x, seed=seed)

    def config(self) -> dict[str, Any]:
        """The constructor options (JSON-able): ``type(p)(**p.config())`` rebuilds the process."""
        out: dict[str, Any] = {
            "timesteps": self.T, "sigma": self.sigma, "sigma_schedule": self.sigma_schedule, "prior_noise": self.prior_noise
        }
        if self.prior_weights is not None:
            out.update(prior_weights=self.prior_weights, prior_means=self.prior_means, prior_stds=self.prior_stds)
        return out

    # --- validation -----------------------------------------------------------------------------
    def _integer_times(self, t: Tensor) -> Tensor:
        """``t`` (float64, CPU) rounded to int64 levels, or a ValueError if it is not in {0..T}."""
        if not torch.isfinite(t).all():
            raise ValueError(f"process {self.name!r} got a NaN or infinite time")
        levels = torch.round(t)
        off = (t - levels).abs() > _INT_TOL
        if off.any():
            bad = float(t[off][0]) if t.ndim else float(t)
            raise ValueError(
                f"process {self.name!r} has integer times 0..T (T={self.T}), got t={bad:g}; "
                f"choose a number of sampler steps that divides T (one of {_divisors(self.T)}) "
                "or pass an explicit integer time grid"
            )
        if (levels < 0).any() or (levels > self.T).any():
            bad = float(levels[(levels < 0) | (levels > self.T)][0]) if t.ndim else float(levels)
            raise ValueError(f"process {self.name!r} has times 0..{self.T}; got t={bad:g}")
        return levels.long()

    def _levels(self, t: float | Tensor, batch: int) -> Tensor:
        """Per-sample integer levels (B,) int64 on the CPU from a scalar or (B,) time."""
        tt = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
        if tt.ndim == 0:
            tt = tt.expand(batch)
        elif tt.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape ({batch},) to match x, got {tuple(tt.shape)}")
        return self._integer_times(tt)

    def check_times(self, times: Tensor) -> Tensor:
        """The base checks, plus: every time of the grid is an integer in 0..T."""
        times = super().check_times(times)
        self._integer_times(times)
        return times

    def _check_images(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"process {self.name!r} degrades images of shape (B, C, H, W); got {shape}. "
                "Cold processes (blur, fade, pool) need image data"
            )
        self.check_image_size(x.shape[-2], x.shape[-1])

    def check_image_size(self, height: int, width: int) -> None:
        """Raise a ValueError if D_t cannot handle images of this size (every size by default)."""

    # --- the degradation ------------------------------------------------------------------------
    @abstractmethod
    def _degrade(self, x: Tensor, levels: Tensor) -> Tensor:
        """D_t(x) for images x (B, C, H, W) and per-sample integer levels (B,) int64 (CPU, validated)."""

    def degrade(self, x0: Tensor, t: float | Tensor) -> Tensor:
        """D_t(x0) (THEORY §4.2): t a scalar or one integer time per sample; keeps x0's device and dtype."""
        self._check_images(x0)
        return self._degrade(x0, self._levels(t, x0.shape[0]))

    # --- the Process protocol -------------------------------------------------------------------
    def sigma_at(self, t: float | Tensor, like: Tensor) -> Tensor | float:
        """sigma_t (shaped to broadcast against ``like``), or 1 in the sigma = 0 limit where eps is the residual."""
        if self.sigma == 0:
            return 1.0
        if self.sigma_schedule == "constant":
            return self.sigma
        levels = self._levels(t, like.shape[0]).to(device=like.device, dtype=like.dtype)
        return (self.sigma / self.T) * levels.reshape(-1, *([1] * (like.ndim - 1)))

    def corrupt(self, x0: Tensor, t: float | Tensor, eps: Tensor) -> Tensor:
        """F_t(x0, eps) = D_t(x0) + sigma_t eps; for sigma = 0, D_t(x0) + eps with eps ~ delta_0 (THEORY §4.2)."""
        return self.degrade(x0, t) + self.sigma_at(t, x0) * eps

    def recover_noise(
        self, x0: Tensor, x_t: Tensor, t: float | Tensor, *, generator: rng.GeneratorLike = None
    ) -> Tensor:
        """F_t^{-1}(x0, x_t) = (x_t - D_t(x0)) / sigma_t; for sigma = 0 the residual x_t - D_t(x0)."""
        scale = self.sigma_at(t, x_t)
        if isinstance(scale, Tensor) and bool((scale == 0).any()):
            raise ValueError("with sigma_schedule='linear' F_0 is the identity: there is no noise to recover at t = 0")
        return (x_t - self.degrade(x0, t)) / scale

    def sample_noise(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """eps ~ q: N(0, I) for sigma > 0, the point mass at 0 for sigma = 0."""
        if self.sigma > 0:
            return rng.randn(shape, generator, dtype=dtype, device=device)
        return torch.zeros(tuple(shape), dtype=dtype, device=device)

    def prior(
        self,
        shape: Sequence[int],
        generator: rng.GeneratorLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_T = D_T(c 1) + sqrt(prior_noise^2 + sigma^2) z, c ~ the per-channel-mean GMM (THEORY §4.2).

        Each sample's generator (a list gives one per sample) draws, in order, the
        mixture component, the channel values and the pixel noise.
        """
        if self.prior_weights is None:
            raise ValueError(
                f"process {self.name!r} has no generation prior yet: call process.fit_prior(training_images) "
                "(a Gaussian mixture over per-channel means, THEORY §4.2) or pass prior_weights, "
                "prior_means and prior_stds"
            )
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise ValueError(f"process {self.name!r} draws images of shape (B, C, H, W); got shape {shape}")
        b, c = shape[:2]
        means = torch.tensor(self.prior_means, dtype=torch.float64)
        if means.shape[1] != c:
            raise ValueError(
                f"the prior mixture of process {self.name!r} was fitted to {means.shape[1]}-channel images, "
                f"but shape {shape} has {c} channels"
            )
        gen = rng.as_generator(generator)
        u = rng.rand((b, 1), gen, dtype=torch.float64).cpu()
        cum = torch.cumsum(torch.tensor(self.prior_weights, dtype=torch.float64), 0)
        comp = torch.searchsorted(cum, u[:, 0].contiguous(), right=True).clamp_max(len(cum) - 1)
        z = rng.randn((b, c), gen, dtype=torch.float64).cpu()
        colour = means[comp] + torch.tensor(self.prior_stds, dtype=torch.float64)[comp] * z
        x = colour.to(device=device, dtype=dtype)[:, :, None, None].expand(shape).contiguous()
        x = self.degrade(x, self.T)
        noise = (self.prior_noise**2 + self.sigma**2) ** 0.5
        return x + noise * rng.randn(shape, gen, dtype=dtype, device=device)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if not k.startswith("prior_") or k == "prior_noise")
        fitted = ", prior fitted" if self.prior_weights is not None else ""
        return f"{type(self).__name__}({args}{fitted})"


class SeparableColdProcess(ColdProcess):
    """A cold process whose D_t acts on each image axis separately: D_t(X) = A_t X B_t^T per channel.

    Gaussian blur (separable kernel, per-axis padding), heat dissipation (a
    per-axis DCT) and block average-pooling all have this form, so D_t is two
    small matrix products whatever T, instead of t convolutions. A subclass gives
    the stack of per-axis matrices for an axis of length n (:meth:`axis_matrices`,
    float64, shape (T + 1, n, n), entry 0 the identity); they are built once and
    cached per (n, device, dtype).
    """

    def __init__(self, timesteps: int, sigma: float = 0.0, **prior: Any) -> None:
        """``timesteps``, ``sigma`` and the prior options as in :class:`ColdProcess`."""
        super().__init__(timesteps, sigma, **prior)
        self._matrix_cache: dict[tuple[int, str, torch.dtype], Tensor] = {}

    @abstractmethod
    def axis_matrices(self, n: int) -> Tensor:
        """The per-axis matrices [M_0 = I, M_1, ..., M_T] (float64, CPU) for an axis of length n."""

    def _matrices(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (int(n), str(device), dtype)
        if key not in self._matrix_cache:
            master_key = (int(n), "cpu", torch.float64)
            if master_key not in self._matrix_cache:
                mats = self.axis_matrices(int(n))
                if mats.shape != (self.T + 1, n, n):
                    raise RuntimeError(
                        f"axis_matrices({n}) returned shape {tuple(mats.shape)}, expected {(self.T + 1, n, n)}"
                    )
                self._matrix_cache[master_key] = mats.to(torch.float64).contiguous()
            self._matrix_cache[key] = self._matrix_cache[master_key].to(device=device, dtype=dtype)
        return self._matrix_cache[key]

    def _degrade(self, x: Tensor, levels: Tensor) -> Tensor:
        rows = self._matrices(x.shape[-2], x.device, x.dtype)
        cols = self._matrices(x.shape[-1], x.device, x.dtype)
        if bool((levels == levels[0]).all()):
            k = int(levels[0])
            return rows[k] @ x @ cols[k].transpose(-1, -2)
        idx = levels.to(rows.device)
        return rows[idx].unsqueeze(1) @ x @ cols[idx].unsqueeze(1).transpose(-1, -2)
