"""Small numerical tools shared by processes and theory: inverting monotone functions.

Radius laws given only by a CDF (THEORY §7.2, GF3) and clocks given only by
sigma_t (THEORY §5.1, "choose sigma_t smooth and increasing") both need
x = g^{-1}(y) for an increasing g; one vectorized bisection in float64 serves both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def invert_increasing(
    fn: Callable[[Tensor], Tensor],
    y: Tensor,
    lo: float,
    hi: float,
    *,
    expand: bool = False,
    tol: float = 1e-13,
    max_iter: int = 200,
) -> Tensor:
    """x in [lo, hi] with fn(x) = y, elementwise, for an increasing ``fn``, by bisection in float64.

    With ``expand=True`` the upper end doubles until fn(hi) >= y everywhere
    (for functions on [lo, inf), e.g. a CDF); otherwise y outside [fn(lo), fn(hi)]
    is an error. Bisection stops at a relative bracket width ``tol``.
    """
    y = torch.as_tensor(y, dtype=torch.float64)
    a = torch.full_like(y, float(lo))
    b = torch.full_like(y, float(hi))
    if expand:
        for _ in range(1100):
            value = fn(b)
            if not bool(torch.isfinite(value).all()):
                raise ValueError("invert_increasing: the function returned non-finite values while bracketing")
            short = value < y
            if not bool(short.any()):
                break
            a = torch.where(short, b, a)
            b = torch.where(short, 2.0 * b + 1.0, b)
        else:
            raise ValueError("invert_increasing: the function never reaches the requested value; is it unbounded above?")
    else:
        f_lo, f_hi = fn(a), fn(b)
        if bool(((y < f_lo) | (y > f_hi)).any()):
            raise ValueError(f"invert_increasing: a value lies outside the range [{float(f_lo.min()):g}, {float(f_hi.max()):g}]")
    for _ in range(max_iter):
        m = 0.5 * (a + b)
        below = fn(m) < y
        a, b = torch.where(below, m, a), torch.where(below, b, m)
        if bool(((b - a) <= tol * b.abs()).all()):
            break
    return 0.5 * (a + b)


def inverse_cdf(cdf: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """The radius r >= 0 with cdf(r) = u, elementwise, for a CDF on [0, inf) (THEORY §7.2, GF3), to 1e-13 relative."""
    u = torch.as_tensor(u, dtype=torch.float64)
    if not bool(((u >= 0) & (u < 1)).all()):
        raise ValueError("inverse_cdf needs probabilities u in [0, 1) (u = 1 is the radius r = inf)")
    with torch.no_grad():
        return invert_increasing(cdf, u, 0.0, 1.0, expand=True)
