"""Exact references (THEORY §10): data whose noisy marginals, scores and posteriors are closed form.

Public API for testing samplers and kernels, and the oracle of udm's own tests.
"""

from .gmm import GaussianMixture
from .pointmass import PointMasses

__all__ = ["GaussianMixture", "PointMasses"]
