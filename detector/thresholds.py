"""Thresholds on reconstruction error, fitted on validation errors of normal data."""

from __future__ import annotations

from typing import Literal

import numpy as np

ThresholdMethod = Literal["quantile", "mean_std"]


def summarize_errors(errors: np.ndarray) -> dict[str, float]:
    """Summary statistics stored with the threshold so users can judge its margin."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no errors to summarise")
    quantiles = np.quantile(errors, [0.5, 0.9, 0.99, 0.999])
    return {
        "count": float(errors.size),
        "mean": float(errors.mean()),
        "std": float(errors.std()),
        "min": float(errors.min()),
        "max": float(errors.max()),
        "p50": float(quantiles[0]),
        "p90": float(quantiles[1]),
        "p99": float(quantiles[2]),
        "p999": float(quantiles[3]),
    }


def fit_threshold(
    errors: np.ndarray,
    method: ThresholdMethod = "quantile",
    *,
    quantile: float = 0.995,
    k: float = 3.0,
    margin: float = 1.0,
) -> float:
    """Threshold from normal-data errors.

    ``quantile``: the given quantile of the errors; ``mean_std``: mean + k * std. The result is
    multiplied by ``margin`` (>= 1 widens it), and is always positive.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0 or not np.all(np.isfinite(errors)):
        raise ValueError("errors must be a non-empty array of finite values")
    if method == "quantile":
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        value = float(np.quantile(errors, quantile))
    elif method == "mean_std":
        value = float(errors.mean() + k * errors.std())
    else:
        raise ValueError(f"unknown threshold method {method!r}")
    return max(value * margin, np.finfo(np.float32).tiny)
