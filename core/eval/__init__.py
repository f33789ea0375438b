"""Transfer evaluation on frozen features: linear probe and k-shot (the MAWS paper's low-shot protocol)."""

from .features import POOLS, extract_features
from .linear import (
    FewShotResult,
    ProbeResult,
    accuracy,
    few_shot,
    fit_logistic_regression,
    linear_probe,
    standardize,
)

__all__ = [
    "POOLS",
    "FewShotResult",
    "ProbeResult",
    "accuracy",
    "extract_features",
    "few_shot",
    "fit_logistic_regression",
    "linear_probe",
    "standardize",
]
