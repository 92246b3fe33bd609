"""Adaptation to a moving normal: a shift that stays stops paging, a sudden change pages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.adaptation import AdaptationRule, DeviceAdaptation
from detector.core.alerts import AlertRule
from detector.core.judge import Judge


def _firing_rows(scores: np.ndarray, adaptation: AdaptationRule | None) -> np.ndarray:
    judge = Judge(AlertRule(resolve_after=5), 1.0, adaptation=adaptation, reference_score=0.5)
    firing = []
    for score in scores:
        judge.judge("d", float(score))
        firing.append(judge.firing("d"))
    return np.asarray(firing)


def test_a_new_steady_state_stops_paging_and_a_later_jump_still_pages() -> None:
    rng = np.random.default_rng(0)
    normal = rng.uniform(0.3, 0.7, 300)  # median 0.5 = the reference: factor 1
    shifted = rng.uniform(1.5, 2.5, 600)  # a new normal four times as high, over the threshold
    jump = np.full(20, 30.0)  # a fault on top of it
    scores = np.concatenate([normal, shifted, jump])
    fixed = _firing_rows(scores, None)
    adapted = _firing_rows(scores, AdaptationRule(windows=100))
    assert fixed[300:900].mean() > 0.99  # without adaptation the shift pages all along
    assert adapted[300:340].all()  # the shift is a sudden change: it pages at first
    assert not adapted[500:900].any()  # then the new level is normal
    assert adapted[905:920].all()  # a jump on top of the new level still pages


def test_factor_is_one_until_the_window_is_full_and_within_bounds() -> None:
    device = DeviceAdaptation(AdaptationRule(windows=4, max_ratio=3.0), reference=1.0)
    assert [device.observe(s) for s in [100.0] * 4] == [1.0] * 4
    assert device.factor() == 3.0  # capped at max_ratio
    quiet = DeviceAdaptation(AdaptationRule(windows=2), reference=1.0)
    for score in [0.01, 0.01, 0.01]:
        quiet.observe(score)
    assert quiet.factor() == 1.0  # a quiet device is not made more sensitive


def test_no_reference_score_means_no_adaptation() -> None:
    device = DeviceAdaptation(AdaptationRule(windows=2), reference=0.0)
    for score in [5.0, 5.0, 5.0]:
        assert device.observe(score) == 1.0


@given(
    windows=st.integers(2, 20),
    scores=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=100),
)
def test_factor_depends_only_on_the_last_windows_scores(windows: int, scores: list[float]) -> None:
    """What a replay of the last ``windows`` scores rebuilds exactly (the handover guarantee)."""
    rule = AdaptationRule(windows=windows, max_ratio=50.0)
    full, replayed = DeviceAdaptation(rule, 1.0), DeviceAdaptation(rule, 1.0)
    for score in scores:
        full.observe(score)
    for score in scores[-windows:]:
        replayed.observe(score)
    if len(scores) >= windows:
        assert full.factor() == replayed.factor()
        expected = min(max(float(np.median(scores[-windows:])), 1.0), 50.0)
        assert full.factor() == expected
    else:
        assert full.factor() == 1.0


@settings(max_examples=150, deadline=None)
@given(
    windows=st.integers(2, 50),
    reference=st.sampled_from([0.25, 1.0, 3.0]),
    max_ratio=st.sampled_from([1.0, 4.0, 1e6]),
    scores=st.lists(
        st.one_of(st.sampled_from([0.0, 1.0, 2.0, 2.0]), st.floats(0.0, 1e6)), max_size=200
    ),
)
def test_factor_equals_the_median_of_the_scores_before_each_window(
    windows: int, reference: float, max_ratio: float, scores: list[float]
) -> None:
    """Per window, exactly what ``np.median`` of the last ``windows`` scores before it gives."""
    device = DeviceAdaptation(AdaptationRule(windows=windows, max_ratio=max_ratio), reference)
    for i, score in enumerate(scores):
        before = scores[max(0, i - windows) : i]
        expected = 1.0
        if len(before) == windows:
            expected = min(max(float(np.median(before)) / reference, 1.0), max_ratio)
        assert device.observe(score) == expected


def test_rule_rejects_meaningless_settings() -> None:
    with pytest.raises(ValueError, match="windows"):
        AdaptationRule(windows=1)
    with pytest.raises(ValueError, match="max_ratio"):
        AdaptationRule(windows=5, max_ratio=0.5)
