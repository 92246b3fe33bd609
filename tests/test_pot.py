"""Peaks-over-threshold thresholds: the GPD tail fit lands near known quantiles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.thresholds import MIN_POT_PEAKS, fit_gpd, fit_threshold, pot_threshold


def _gpd(shape: float, scale: float, size: int, seed: int) -> np.ndarray:
    uniform = np.random.default_rng(seed).random(size)
    if abs(shape) < 1e-6:
        return -scale * np.log(uniform)
    return scale / shape * (uniform**-shape - 1.0)


def _gpd_quantile(shape: float, scale: float, exceed: float) -> float:
    if abs(shape) < 1e-6:
        return -scale * np.log(exceed)
    return scale / shape * (exceed**-shape - 1.0)


@pytest.mark.parametrize("shape", [-0.3, 0.0, 0.2])
def test_gpd_fit_recovers_parameters(shape: float) -> None:
    fitted_shape, fitted_scale = fit_gpd(_gpd(shape, 2.0, 20_000, seed=1))
    assert fitted_shape == pytest.approx(shape, abs=0.05)
    assert fitted_scale == pytest.approx(2.0, rel=0.08)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pot_on_exponential_sits_near_the_theoretical_quantile(seed: int) -> None:
    errors = np.random.default_rng(seed).exponential(1.0, 20_000)
    risk = 1e-4  # beyond the sample's own 0.99995 quantile: extrapolation, not interpolation
    assert pot_threshold(errors, risk, 0.98) == pytest.approx(-np.log(risk), rel=0.1)


@pytest.mark.parametrize("shape", [-0.3, 0.2])
def test_pot_on_gpd_samples_sits_near_the_theoretical_quantile(shape: float) -> None:
    errors = _gpd(shape, 1.0, 20_000, seed=3)
    expected = _gpd_quantile(shape, 1.0, 1e-4)
    assert pot_threshold(errors, 1e-4, 0.98) == pytest.approx(expected, rel=0.15)


def test_pot_extrapolates_beyond_a_small_sample() -> None:
    errors = np.random.default_rng(4).exponential(1.0, 200)
    value = pot_threshold(errors, 1e-3, 0.9)
    assert value > np.quantile(errors, 0.99)
    assert value == pytest.approx(-np.log(1e-3), rel=0.35)


def test_pot_through_fit_threshold_applies_margin() -> None:
    errors = np.random.default_rng(5).exponential(1.0, 5_000)
    plain = fit_threshold(errors, "pot", risk=1e-3, init_quantile=0.95)
    assert plain == pytest.approx(pot_threshold(errors, 1e-3, 0.95))
    assert fit_threshold(errors, "pot", risk=1e-3, init_quantile=0.95, margin=1.5) == (
        pytest.approx(1.5 * plain)
    )


def test_pot_needs_enough_peaks() -> None:
    with pytest.raises(ValueError, match="at least"):
        pot_threshold(np.arange(50.0), 1e-3, 0.98)  # one error above the 0.98 quantile


@pytest.mark.parametrize(("risk", "init_quantile"), [(0.0, 0.9), (0.2, 0.9), (1e-3, 1.0)])
def test_pot_rejects_bad_levels(risk: float, init_quantile: float) -> None:
    with pytest.raises(ValueError):
        pot_threshold(np.arange(1000.0), risk, init_quantile)


@settings(max_examples=50, deadline=None)
@given(
    shape=st.floats(-0.4, 0.4),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 1000),
)
def test_pot_is_finite_and_above_the_initial_quantile(
    shape: float, scale: float, seed: int
) -> None:
    errors = _gpd(shape, scale, 500, seed)
    value = pot_threshold(errors, 1e-3, 0.9)
    assert np.isfinite(value)
    assert value >= np.quantile(errors, 0.9)
    assert len(errors[errors > np.quantile(errors, 0.9)]) >= MIN_POT_PEAKS


def test_constant_peaks_do_not_break_the_fit() -> None:
    shape, scale = fit_gpd(np.ones(20))
    assert np.isfinite(shape) and scale > 0
