"""Per-device threshold calibration: the pure core, its config, and the offline path using it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from detector.config import AlertConfig, CalibrationConfig
from detector.core.calibration import CalibrationRule, DeviceCalibration


def test_base_threshold_until_calibrated_then_fitted_value() -> None:
    rule = CalibrationRule(windows=4, method="quantile", quantile=0.5, margin=2.0)
    device = DeviceCalibration()
    seen = [device.threshold_for(rule, 10.0, score) for score in [5.0, 6.0, 7.0, 8.0]]
    assert seen == [10.0] * 4  # the window completing calibration is judged by the base
    assert device.threshold == pytest.approx(2.0 * np.quantile([5.0, 6.0, 7.0, 8.0], 0.5))
    assert device.threshold_for(rule, 10.0, 100.0) == device.threshold
    assert device.scores == []  # nothing more is collected once calibrated


def test_a_nan_or_inf_score_is_judged_by_the_base_and_left_out_of_the_fit() -> None:
    rule = CalibrationRule(windows=3, method="quantile", quantile=0.5, margin=1.0)
    device = DeviceCalibration()
    scores = [1.0, float("nan"), 2.0, float("inf"), 3.0]
    assert [device.threshold_for(rule, 3.0, s) for s in scores] == [3.0] * 5
    # Calibrated on the three finite scores: an overflowing reading cannot crash the judge.
    assert device.threshold == pytest.approx(np.quantile([1.0, 2.0, 3.0], 0.5))


@pytest.mark.parametrize(("scores", "expected"), [([0.01] * 5, 5.0), ([900.0] * 5, 40.0)])
def test_calibrated_threshold_is_clamped_around_the_base(
    scores: list[float], expected: float
) -> None:
    rule = CalibrationRule(windows=5, min_ratio=0.5, max_ratio=4.0)
    assert rule.fit(np.asarray(scores), base=10.0) == pytest.approx(expected)


def test_pot_calibration() -> None:
    scores = np.random.default_rng(0).exponential(1.0, 200)
    rule = CalibrationRule(windows=200, method="pot", risk=1e-3, init_quantile=0.9, max_ratio=100)
    device = DeviceCalibration()
    for score in scores:
        device.threshold_for(rule, 1.0, float(score))
    assert device.threshold == pytest.approx(-np.log(1e-3), rel=0.35)


@given(
    base=st.floats(0.01, 100.0),
    scores=st.lists(st.floats(0.0, 1e4), min_size=3, max_size=3),
    later=st.lists(st.floats(0.0, 1e4), max_size=20),
)
def test_threshold_is_base_then_constant_and_within_bounds(
    base: float, scores: list[float], later: list[float]
) -> None:
    rule = CalibrationRule(windows=3, min_ratio=0.5, max_ratio=4.0)
    device = DeviceCalibration()
    assert [device.threshold_for(rule, base, s) for s in scores] == [base] * 3
    thresholds = {device.threshold_for(rule, base, s) for s in later}
    assert len(thresholds) <= 1
    assert device.threshold is not None
    assert 0.5 * base * (1 - 1e-9) <= device.threshold <= 4.0 * base * (1 + 1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"windows": 1},
        {"windows": 10, "min_ratio": 1.5},
        {"windows": 10, "max_ratio": 0.5},
        {"windows": 20, "method": "pot", "init_quantile": 0.9},  # 2 tail samples
        {"windows": 100, "method": "pot", "risk": 0.2, "init_quantile": 0.9},
    ],
)
def test_invalid_rules_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CalibrationRule(**kwargs)  # type: ignore[arg-type]


def test_config_is_off_by_default_and_builds_the_rule() -> None:
    assert AlertConfig().calibration.rule() is None
    rule = CalibrationConfig(windows=300, method="pot", risk=1e-3).rule()
    assert rule == CalibrationRule(windows=300, method="pot", risk=1e-3)


def test_config_reports_an_unusable_rule() -> None:
    with pytest.raises(ValidationError, match="tail samples"):
        AlertConfig.model_validate({"calibration": {"windows": 20, "method": "pot"}})
