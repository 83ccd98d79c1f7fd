"""Samplers specific to the discrete processes (THEORY §4.4): MaskGIT-style confidence ordering.

The generic ``udm`` loop with K1 reveals a *uniformly random* subset of the
masked positions at each step, which is what makes it exact with exact
conditionals (random-order autoregression, §4.4). MaskGIT (Chang et al. 2022)
instead reveals the positions the network is most sure of: a deterministic,
data-dependent order that is not exact but often gives better samples from an
imperfect network with few steps.
"""

from __future__ import annotations

import torch

from .. import rng
from ..processes.base import Process
from ..processes.discrete import key_ranks, sample_categorical
from ..processes.mask import MaskProcess
from .common import Callback, DenoiseFn, Project, report

Tensor = torch.Tensor


def mask_confidence(
    denoiser: DenoiseFn,
    process: Process,
    x: Tensor,
    times: Tensor,
    *,
    temperature: float = 1.0,
    generator: rng.GeneratorLike = None,
    callback: Callback = None,
    project: Project = None,
) -> Tensor:
    """Fill masked positions in order of confidence (MaskGIT) on the mask process (THEORY §4.4).

    At each step t -> s the denoiser's logits (..., V + 1) give
    p = softmax(logits[..., :V] / temperature) (argmax at temperature 0); a
    token is drawn at every masked position, and the ``n_t - n_s`` masked
    positions whose drawn token has the highest probability are revealed,
    where n_t is the current number of masked positions and
    n_s = round(n_t m(s) / m(t)) the number to keep masked (exactly s in the
    count schedule). At s = 0 every position is revealed, so the result holds
    no mask ids. The denoiser must return logits: a bare token draw carries
    no confidence. With infill (a projection writing observed tokens) n_t counts
    the state's own masks, so the hidden positions are revealed in proportion
    to m(s) / m(t) from the first step; the confidence order is not exact, with
    or without the observation (tests/test_conditioning_tokens.py).
    """
    if not isinstance(process, MaskProcess):
        raise ValueError(f"sampler 'mask_confidence' needs the mask process, got {process.name!r}")
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    gen = rng.as_generator(generator)
    ts = times.tolist()
    v = process.vocab_size
    x0 = None
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        out = denoiser(x, t)
        if not out.is_floating_point():
            raise ValueError("sampler 'mask_confidence' needs logits from the denoiser (a token draw has no confidence)")
        z = out[..., :v].to(torch.float64)
        if temperature == 0:
            probs = torch.nn.functional.one_hot(z.argmax(-1), v).to(torch.float64)
        else:
            probs = torch.softmax(z / temperature, -1)
        draw = sample_categorical(probs, gen)
        masked = process.corrupted(x)
        x0 = torch.where(masked, draw.to(x.dtype), x)
        confidence = torch.where(masked, probs.gather(-1, draw.unsqueeze(-1)).squeeze(-1), torch.full_like(z[..., 0], torch.inf))
        m_t, m_s = float(process.rate(t)), float(process.rate(s))
        n_t = masked.sum(-1, keepdim=True).to(torch.float64)
        keep = torch.round(n_t * (m_s / m_t)) if m_t > 0 else torch.zeros_like(n_t)
        stay = masked & (key_ranks(confidence) < keep)
        x = torch.where(stay, torch.full_like(x, process.mask_id), x0)
        x = report(callback, i, t, s, x, x0, project)
    return x
