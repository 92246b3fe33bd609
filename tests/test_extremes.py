"""The new-extreme rule: a reading beyond its device's range so far pages, once."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.alerts import AlertRule
from detector.core.extremes import DeviceRange, ExtremeRule
from detector.core.judge import Judge
from detector.core.likelihood import ScorePrior
from detector.core.rules import JudgeLevels, Windows

LEVELS = JudgeLevels(1.0, 0.5, ScorePrior(0.0, 1.0))


def _windows(newest: np.ndarray, scores: list[float]) -> Windows:
    """Windows of length 2 whose newest readings are ``newest`` (rows x sensors)."""
    inputs = np.stack([np.zeros_like(newest), newest], axis=1)
    return Windows("d", scores, list(range(len(scores))), None, inputs)


def test_a_reading_past_the_range_by_more_than_the_margin_is_judged_over() -> None:
    rule = ExtremeRule(windows=3, margin=0.1)
    state = rule.new_state(LEVELS)
    newest = np.array([[0.0], [10.0], [5.0], [10.5], [12.0], [12.1]])
    levels = rule.levels(state, _windows(newest, [0.2] * 6), [1.0] * 6)
    # Range 0..10 after three windows: 10.5 is within 10 % of it (and widens it), 12 is beyond
    # 10.5 + 1.05; 12.1 is within 10 % of the range 12 widened it to.
    assert levels == [1.0, 1.0, 1.0, 1.0, 0.1, 1.0]
    assert rule.complete(state)


def test_nothing_is_judged_while_the_range_is_being_built() -> None:
    rule = ExtremeRule(windows=5)
    state = rule.new_state(LEVELS)
    newest = np.array([[0.0], [100.0], [-100.0], [1000.0]])
    assert rule.levels(state, _windows(newest, [1.0] * 4), [2.0] * 4) == [2.0] * 4
    assert not rule.complete(state)


def test_a_new_low_on_any_sensor_counts_and_a_zero_score_keeps_its_level() -> None:
    rule = ExtremeRule(windows=2, margin=0.0)
    state = rule.new_state(LEVELS)
    newest = np.array([[0.0, 5.0], [1.0, 6.0], [0.5, 4.0], [0.5, 3.0]])
    assert rule.levels(state, _windows(newest, [1.0, 1.0, 1.0, 0.0]), [3.0] * 4) == [
        3.0,
        3.0,
        0.5,
        3.0,
    ]


def test_windows_without_readings_pass_through() -> None:
    rule = ExtremeRule(windows=1)
    view = Windows("d", [1.0], [0])
    assert rule.levels(rule.new_state(LEVELS), view, [4.0]) == [4.0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40),
    st.integers(1, 10),
    st.floats(0.0, 0.5),
    st.lists(st.integers(1, 7), min_size=1, max_size=10),
)
def test_a_run_is_judged_as_window_by_window(
    values: list[float], windows: int, margin: float, cuts: list[int]
) -> None:
    newest = np.array(values)[:, None]
    rule = ExtremeRule(windows=windows, margin=margin)
    whole = rule.levels(
        rule.new_state(LEVELS), _windows(newest, [1.0] * len(values)), [2.0] * len(values)
    )
    state: DeviceRange = rule.new_state(LEVELS)
    pieces: list[float] = []
    start = 0
    for cut in cuts * len(values):
        if start >= len(values):
            break
        part = newest[start : start + cut]
        pieces += rule.levels(state, _windows(part, [1.0] * len(part)), [2.0] * len(part))
        start += cut
    assert pieces == whole


def test_the_judge_pages_once_on_a_new_level_through_its_inputs() -> None:
    judge = Judge(AlertRule(resolve_after=1, resolve_ratio=1.0), 1.0, extremes=ExtremeRule(5))
    newest = np.array([[1.0], [2.0], [1.5], [1.2], [1.8], [9.0], [9.1], [9.0]])
    inputs = np.stack([np.zeros_like(newest), newest], axis=1)
    scores = np.full(len(newest), 0.3)  # the model sees nothing: every score under 1
    judged = judge.judge_many(["d"] * len(newest), scores, inputs=inputs)
    assert judged.transitions == [(5, "firing"), (6, "resolved")]
    assert judged.thresholds[5] == 0.15


def test_a_training_range_judges_from_the_first_window() -> None:
    rule = ExtremeRule(windows=100, margin=0.1)
    trained = JudgeLevels(1.0, 0.5, ScorePrior(0.0, 1.0), input_range=((0.0,), (10.0,)))
    state = rule.new_state(trained)
    assert rule.complete(state)
    newest = np.array([[-0.5], [11.5], [11.6], [5.0]])
    # Range 0..10 from training: -0.5 is within 10 % of it; 11.5 beyond 10 + 1, and then widens
    # the range so 11.6 is not news.
    assert rule.levels(state, _windows(newest, [0.4] * 4), [1.0] * 4) == [1.0, 0.2, 1.0, 1.0]


def test_the_judge_takes_the_range_its_model_was_trained_on() -> None:
    judge = Judge(
        AlertRule(resolve_after=1, resolve_ratio=1.0),
        1.0,
        extremes=ExtremeRule(50),
        input_range=((0.0,), (2.0,)),
    )
    newest = np.array([[1.0], [9.0], [1.0]])
    inputs = np.stack([np.zeros_like(newest), newest], axis=1)
    judged = judge.judge_many(["d"] * 3, np.full(3, 0.3), inputs=inputs)
    assert judged.transitions == [(1, "firing"), (2, "resolved")]
