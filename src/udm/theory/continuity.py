"""The continuity equation as a space-time divergence (THEORY §5.1, §7.1, §8.3 item 2).

d_t p_t + div(p_t f_t) = 0 says that u = (p_t, p_t f_t) is divergence-free in
(t, x). The same autograd check serves a single Green's function G (§7.3 item 1),
the marginal of point-mass data built from it (§7.3 item 4), and the C4 field of
the characteristics construction (§8.3 item 2).

This lowest theory module also holds the autograd derivatives of row-wise maps
(row i of the output depends on row i of the input only) that every exact
check in :mod:`udm.theory` is built from: :func:`row_gradient`,
:func:`jacobian_rows`, :func:`divergence_terms` and :func:`exact_divergence`.
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


def row_gradient(out: Tensor, x: Tensor, *, create_graph: bool = False) -> Tensor:
    """d out[i] / d x[i] for a row-wise map ``out`` (n,) of ``x`` (n, ...), shaped like x; zeros if out ignores x.

    One backward pass (the rows are independent, so the gradient of the sum is
    the per-row gradient); the graph is kept, so callers may differentiate again
    (with ``create_graph``) or take further coordinates.
    """
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def jacobian_rows(out: Tensor, x: Tensor, *, create_graph: bool = False) -> Tensor:
    """d out[i, k] / d x[i, ...] for a row-wise map ``out`` (n, K): shape (n, K, *x.shape[1:]), one pass per k."""
    return torch.stack([row_gradient(out[:, k], x, create_graph=create_graph) for k in range(out.shape[1])], 1)


def divergence_terms(out: Tensor, x: Tensor, *, create_graph: bool = False) -> Tensor:
    """The terms d out[:, i] / d x[:, i] of div out for a row-wise map (n, d) -> (n, d): shape (n, d), exact."""
    return torch.stack([row_gradient(out[:, i], x, create_graph=create_graph)[:, i] for i in range(x.shape[1])], 1)


def exact_divergence(out: Tensor, x: Tensor, *, create_graph: bool = False) -> Tensor:
    """div out = tr(d out / d x) row by row, shape (n,): one backward pass per coordinate (no trace estimator)."""
    return sum(divergence_terms(out, x, create_graph=create_graph).unbind(1))


def space_time_divergence(u: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], t: Tensor, x: Tensor) -> Residual:
    """nabla_(t,x) . u = d_t u_1 + sum_i d_i u_{1+i} per point, by autograd, with scale |d_t u_1| + sum_i |d_i u_{1+i}|.

    ``u(t, x)`` returns (u_1 of shape (n,), u_{>1} of shape (n, d)) for t (n,) and x (n, d), float64.
    """
    if x.ndim != 2 or t.shape != (x.shape[0],):
        raise ValueError(f"need x of shape (n, d) and t of shape (n,), got {tuple(x.shape)} and {tuple(t.shape)}")
    tt = t.detach().to(torch.float64).clone().requires_grad_(True)
    xx = x.detach().to(torch.float64).clone().requires_grad_(True)
    with torch.enable_grad():
        u1, ux = u(tt, xx)
        dt = row_gradient(u1, tt)
        div = divergence_terms(ux, xx)
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
