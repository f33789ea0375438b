"""Transfer evaluation on frozen features: linear probe and k-shot (the MAWS paper's low-shot protocol)."""

from .features import POOLS, extract_features
from .zero_shot import DEFAULT_TEMPLATES, zero_shot_accuracy, zero_shot_classifier
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
    "DEFAULT_TEMPLATES",
    "zero_shot_accuracy",
    "zero_shot_classifier",
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
