"""Threshold fitting on validation reconstruction errors."""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.thresholds import fit_threshold, summarize_errors

ERRORS = np.arange(1, 101, dtype=np.float64)  # 1..100


def test_quantile_threshold() -> None:
    assert fit_threshold(ERRORS, "quantile", quantile=0.5) == pytest.approx(50.5)
    assert fit_threshold(ERRORS, "quantile", quantile=0.99) == pytest.approx(
        np.quantile(ERRORS, 0.99)
    )


def test_quantile_is_the_default_method() -> None:
    assert fit_threshold(ERRORS) == pytest.approx(np.quantile(ERRORS, 0.995))


def test_mean_std_threshold() -> None:
    errors = np.array([1.0, 3.0])  # mean 2, population std 1
    assert fit_threshold(errors, "mean_std", k=3.0) == pytest.approx(5.0)
    assert fit_threshold(errors, "mean_std", k=0.5) == pytest.approx(2.5)


def test_margin_multiplies_the_fitted_value() -> None:
    plain = fit_threshold(ERRORS, "quantile", quantile=0.9)
    assert fit_threshold(ERRORS, "quantile", quantile=0.9, margin=1.5) == pytest.approx(1.5 * plain)
    errors = np.array([1.0, 3.0])
    assert fit_threshold(errors, "mean_std", k=3.0, margin=2.0) == pytest.approx(10.0)


def test_threshold_is_always_positive() -> None:
    assert fit_threshold(np.zeros(10)) > 0
    assert fit_threshold(np.array([-5.0, -1.0]), "mean_std", k=0.0) > 0


def test_accepts_float32_and_lists() -> None:
    assert fit_threshold(np.array([1.0, 3.0], np.float32), "mean_std", k=1.0) == pytest.approx(3.0)
    assert fit_threshold([1.0, 3.0], "mean_std", k=1.0) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "errors",
    [np.array([]), np.array([1.0, np.nan]), np.array([1.0, np.inf])],
    ids=["empty", "nan", "inf"],
)
def test_invalid_errors_raise(errors: np.ndarray) -> None:
    with pytest.raises(ValueError, match="finite"):
        fit_threshold(errors)


@pytest.mark.parametrize("quantile", [0.0, 1.0, -0.1, 1.5])
def test_quantile_outside_open_unit_interval_raises(quantile: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        fit_threshold(ERRORS, "quantile", quantile=quantile)


def test_unknown_method_raises() -> None:
    with pytest.raises(ValueError, match="unknown threshold method"):
        fit_threshold(ERRORS, "median")  # type: ignore[arg-type]


def test_summarize_errors() -> None:
    summary = summarize_errors(ERRORS)
    assert set(summary) == {"count", "mean", "std", "min", "max", "p50", "p90", "p99", "p999"}
    assert summary["count"] == 100
    assert summary["mean"] == pytest.approx(50.5)
    assert summary["std"] == pytest.approx(np.std(ERRORS))
    assert summary["min"] == 1.0
    assert summary["max"] == 100.0
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p90"] == pytest.approx(np.quantile(ERRORS, 0.9))
    assert summary["p99"] == pytest.approx(np.quantile(ERRORS, 0.99))
    assert summary["p999"] == pytest.approx(np.quantile(ERRORS, 0.999))
    assert all(isinstance(value, float) for value in summary.values())


def test_summarize_empty_raises() -> None:
    with pytest.raises(ValueError):
        summarize_errors(np.array([]))
