"""The continuity equation as a space-time divergence (THEORY §5.1, §7.1, §8.3 item 2).

d_t p_t + div(p_t f_t) = 0 says that u = (p_t, p_t f_t) is divergence-free in
(t, x). The same autograd check serves a single Green's function G (§7.3 item 1),
the marginal of point-mass data built from it (§7.3 item 4), and the C4 field of
the characteristics construction (§8.3 item 2).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch

Tensor = torch.Tensor


class Residual(NamedTuple):
    """A per-point residual of a divergence identity and the size of the terms that cancel in it."""

    residual: Tensor
    scale: Tensor

    @property
    def relative(self) -> Tensor:
        """|residual| / scale per point (0 where every term vanishes)."""
        tiny = torch.finfo(self.scale.dtype).tiny
        return torch.where(self.scale > 0, self.residual.abs() / self.scale.clamp_min(tiny), torch.zeros_like(self.scale))


def space_time_divergence(u: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], t: Tensor, x: Tensor) -> Residual:
    """nabla_(t,x) . u = d_t u_1 + sum_i d_i u_{1+i} per point, by autograd, with scale |d_t u_1| + sum_i |d_i u_{1+i}|.

    ``u(t, x)`` returns (u_1 of shape (n,), u_{>1} of shape (n, d)) for t (n,) and x (n, d), float64.
    """
    if x.ndim != 2 or t.shape != (x.shape[0],):
        raise ValueError(f"need x of shape (n, d) and t of shape (n,), got {tuple(x.shape)} and {tuple(t.shape)}")
    tt = t.detach().to(torch.float64).clone().requires_grad_(True)
    xx = x.detach().to(torch.float64).clone().requires_grad_(True)
    d = x.shape[1]
    with torch.enable_grad():
        u1, ux = u(tt, xx)
        (dt,) = torch.autograd.grad(u1.sum(), tt, retain_graph=True, allow_unused=True)
        dt = torch.zeros_like(tt) if dt is None else dt
        div = torch.stack([torch.autograd.grad(ux[:, i].sum(), xx, retain_graph=i < d - 1)[0][:, i] for i in range(d)], 1)
    return Residual((dt + div.sum(1)).detach(), (dt.abs() + div.abs().sum(1)).detach())


def continuity_residual(field: object, t: float | Tensor, x: Tensor) -> Residual:
    """d_t p_t + div(p_t f_t) at (t, x) for any field with ``density(t, x)`` and ``flux(t, x)`` = p_t f_t."""
    methods = [getattr(field, name, None) for name in ("density", "flux")]
    if not all(callable(m) and len(inspect.signature(m).parameters) == 2 for m in methods):
        raise ValueError(
            f"continuity_residual needs a marginal field with density(t, x) and flux(t, x), got {type(field).__name__} "
            "(for a single Green's function G(t, x; x0) use divergence_residual)"
        )
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(x.shape)}")
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    return space_time_divergence(lambda tt, xx: (field.density(tt, xx), field.flux(tt, xx)), t, x)
