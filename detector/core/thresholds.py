"""Thresholds on reconstruction error, fitted on validation errors of normal data.

Three methods: an empirical ``quantile``, ``mean_std`` (mean + k standard deviations) and ``pot``
(peaks over threshold: extreme value theory, see :func:`pot_threshold`).
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

__all__ = [
    "MIN_POT_PEAKS",
    "ThresholdSettings",
    "fit_gpd",
    "fit_threshold",
    "fit_threshold_with",
    "pot_threshold",
    "summarize_errors",
]

ThresholdMethod = Literal["quantile", "mean_std", "pot"]

# Fewer peaks than this cannot support a two-parameter tail fit.
MIN_POT_PEAKS = 5


class ThresholdSettings(Protocol):
    """What a threshold section holds (the trainer's ``threshold``, the daemon's calibration)."""

    method: ThresholdMethod
    quantile: float
    k: float
    margin: float
    risk: float
    init_quantile: float


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


def _gpd_profile_loglik(theta: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Grimshaw's profile log-likelihood of a GPD at ``theta = shape / scale`` (vectorised)."""
    logs = np.log1p(np.outer(theta, peaks))  # (len(theta), len(peaks))
    shape = logs.mean(axis=1)
    scale = shape / theta
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = -len(peaks) * np.log(scale) - (1.0 + 1.0 / shape) * logs.sum(axis=1)
    return np.where(np.isfinite(loglik) & (scale > 0), loglik, -np.inf)


def fit_gpd(peaks: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood (shape, scale) of a generalised Pareto distribution for ``peaks`` > 0.

    Uses Grimshaw's reduction to one parameter ``theta = shape / scale`` (for a fixed theta the
    best shape is ``mean(log(1 + theta * y))``), maximised by a log-spaced grid search on both
    sides of zero and a finer grid around the best point; numpy only. ``theta = 0`` (the
    exponential tail, shape 0 and scale ``mean(y)``) is always a candidate.
    """
    peaks = np.asarray(peaks, dtype=np.float64)
    if peaks.size == 0 or np.any(peaks < 0) or not np.all(np.isfinite(peaks)):
        raise ValueError("peaks must be a non-empty array of finite values >= 0")
    mean, top = float(peaks.mean()), float(peaks.max())
    if mean <= 0:
        return 0.0, float(np.finfo(np.float64).tiny)
    n = len(peaks)
    best_theta, best = 0.0, -n * np.log(mean) - n  # exponential tail
    # The likelihood exists for theta > -1/max(y); heavy tails have theta up to many / mean(y).
    magnitudes = np.logspace(-6, 0, 200)
    candidates = np.concatenate([-(1.0 - 1e-9) / top * magnitudes, np.logspace(-6, 4, 400) / mean])
    for _ in range(3):
        loglik = _gpd_profile_loglik(candidates, peaks)
        i = int(np.argmax(loglik))
        if loglik[i] > best:
            best_theta, best = float(candidates[i]), float(loglik[i])
        lo = candidates[i - 1] if i > 0 else candidates[i]
        hi = candidates[i + 1] if i + 1 < len(candidates) else candidates[i]
        candidates = np.linspace(lo, hi, 101)
    if best_theta == 0.0:
        return 0.0, mean
    shape = float(np.log1p(best_theta * peaks).mean())
    return shape, shape / best_theta


def pot_threshold(errors: np.ndarray, risk: float = 1e-3, init_quantile: float = 0.98) -> float:
    """Peaks-over-threshold (SPOT-style, Siffer et al. 2017) threshold with tail risk ``risk``.

    The errors above their ``init_quantile`` are modelled by a generalised Pareto distribution
    (:func:`fit_gpd`, maximum likelihood via Grimshaw's profile, numpy only), which is then
    extrapolated to the level that a normal error exceeds with probability ``risk``. Unlike an
    empirical quantile this can go beyond the largest error seen, which is what small
    calibration sets need.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if not 0.0 < init_quantile < 1.0:
        raise ValueError(f"init_quantile must be in (0, 1), got {init_quantile}")
    if not 0.0 < risk < 1.0 - init_quantile:
        raise ValueError(f"risk must be in (0, 1 - init_quantile), got {risk}")
    initial = float(np.quantile(errors, init_quantile))
    peaks = errors[errors > initial] - initial
    if len(peaks) < MIN_POT_PEAKS:
        raise ValueError(
            f"pot needs at least {MIN_POT_PEAKS} errors above the {init_quantile} quantile, got "
            f"{len(peaks)} of {errors.size}: lower init_quantile or give more errors"
        )
    shape, scale = fit_gpd(peaks)
    ratio = risk * errors.size / len(peaks)
    if abs(shape) < 1e-9:
        return initial - scale * float(np.log(ratio))
    return initial + scale / shape * (ratio**-shape - 1.0)


def fit_threshold(
    errors: np.ndarray,
    method: ThresholdMethod = "quantile",
    *,
    quantile: float = 0.995,
    k: float = 3.0,
    margin: float = 1.0,
    risk: float = 1e-3,
    init_quantile: float = 0.98,
) -> float:
    """Threshold from normal-data errors.

    ``quantile``: the given quantile of the errors; ``mean_std``: mean + k * std; ``pot``:
    :func:`pot_threshold` with ``risk`` and ``init_quantile``. The result is multiplied by
    ``margin`` (>= 1 widens it), and is always positive.
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
    elif method == "pot":
        value = pot_threshold(errors, risk, init_quantile)
    else:
        raise ValueError(f"unknown threshold method {method!r}")
    return max(value * margin, float(np.finfo(np.float32).tiny))


def fit_threshold_with(errors: np.ndarray, settings: ThresholdSettings) -> float:
    """:func:`fit_threshold` with the method and parameters of a threshold section."""
    return fit_threshold(
        errors,
        settings.method,
        quantile=settings.quantile,
        k=settings.k,
        margin=settings.margin,
        risk=settings.risk,
        init_quantile=settings.init_quantile,
    )
