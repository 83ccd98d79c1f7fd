"""Exact references (THEORY §7, §8, §10): data and fields whose noisy marginals, velocities and posteriors are closed form.

Public API for testing samplers and kernels, and the oracle of udm's own tests:
Gaussian mixtures and point masses (§10), Green's functions (§7), the
characteristics construction (§8), the continuity-equation residual and the
weak- and strong-form Fokker-Planck checkers (§9.2).
"""

from .characteristics import Characteristic, ExactField, LinearPath, StraightLine
from .continuity import Residual, continuity_residual, space_time_divergence
from .fokker_planck import (
    CheckResult,
    integration_by_parts_check,
    simulated_sampler,
    strong_form_check,
    strong_form_residual,
    weak_form_check,
)
from .gmm import GaussianMixture
from .green import CDFGreen, GaussianGreen, GravityGreen, GreenField, GreenFunction, ScaleGreen, divergence_residual, normalization
from .pointmass import PointMasses

__all__ = [
    "CDFGreen",
    "CheckResult",
    "Characteristic",
    "ExactField",
    "GaussianGreen",
    "GaussianMixture",
    "GravityGreen",
    "GreenField",
    "GreenFunction",
    "LinearPath",
    "PointMasses",
    "Residual",
    "ScaleGreen",
    "StraightLine",
    "continuity_residual",
    "divergence_residual",
    "integration_by_parts_check",
    "normalization",
    "simulated_sampler",
    "space_time_divergence",
    "strong_form_check",
    "strong_form_residual",
    "weak_form_check",
]
