"""Classical MI baselines (all in nats, all seeded): KSG, Gaussian copula, InfoNCE, bootstrap."""

from .bootstrap import BootstrapEstimator, bootstrap_replicates
from .gaussian import GaussianCopulaEstimator, canonical_correlations, gaussian_copula_mi, normal_scores
from .interface import Estimator, as_pair, point_quantiles
from .ksg import KSGEstimator, ksg_mi
from .neural import InfoNCEEstimator, infonce_mi

__all__ = [
    "BootstrapEstimator",
    "Estimator",
    "GaussianCopulaEstimator",
    "InfoNCEEstimator",
    "KSGEstimator",
    "as_pair",
    "bootstrap_replicates",
    "canonical_correlations",
    "gaussian_copula_mi",
    "infonce_mi",
    "ksg_mi",
    "normal_scores",
    "point_quantiles",
]
