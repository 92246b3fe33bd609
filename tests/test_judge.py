"""The judge: each device's threshold (artifact, calibrated, adapted) and its alert-rule state."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.adaptation import AdaptationRule
from detector.core.alerts import AlertRule
from detector.core.calibration import CalibrationRule
from detector.core.judge import Judge, JudgeLevels
from detector.core.likelihood import LikelihoodRule, ScorePrior


def test_devices_are_judged_independently() -> None:
    judge = Judge(AlertRule(fire_k=2, fire_n=2, resolve_after=1), threshold=1.0)
    assert judge.judge("a", 2.0) == (1.0, None)
    assert judge.judge("b", 2.0)[1] is None
    assert judge.judge("a", 2.0)[1] == "firing"
    assert judge.firing_count() == 1
    assert judge.judge("b", 0.0)[1] is None
    assert judge.judge("b", 2.0)[1] is None  # b's history is over, under, over: 1 of last 2
    assert judge.judge("b", 2.0)[1] == "firing"
    assert judge.firing_count() == 2
    assert judge.judge("a", 0.0)[1] == "resolved"
    assert judge.firing_count() == 1


def test_hysteresis_uses_the_devices_threshold() -> None:
    judge = Judge(AlertRule(resolve_after=1, resolve_ratio=0.5), threshold=2.0)
    assert judge.judge("a", 3.0)[1] == "firing"
    assert judge.judge("a", 1.5)[1] is None  # 1.5 is not below 0.5 x 2
    assert judge.judge("a", 0.9)[1] == "resolved"


def test_devices_calibrate_independently() -> None:
    rule = CalibrationRule(windows=3, method="mean_std", k=0.0, max_ratio=100.0)
    judge = Judge(AlertRule(), threshold=1.0, calibration=rule)
    for score in [2.0, 2.0, 2.0]:
        judge.judge("quiet", score)
    judge.judge("noisy", 50.0)
    assert judge.judge("quiet", 0.0)[0] == pytest.approx(2.0)
    assert judge.judge("noisy", 0.0)[0] == 1.0  # still calibrating: the artifact's


def test_forget_drops_every_piece_of_a_devices_state() -> None:
    judge = Judge(
        AlertRule(resolve_after=5),
        threshold=1.0,
        calibration=CalibrationRule(windows=2, max_ratio=100.0),
        adaptation=AdaptationRule(windows=2),
        reference_score=0.5,
    )
    for score in [9.0, 9.0, 9.0]:
        judge.judge("a", score)
    assert judge.firing("a")
    assert judge.forget("a") is True
    assert not judge.firing("a") and judge.firing_count() == 0
    # Back as new: calibrating again (judged by the artifact's threshold), no adaptation yet.
    assert judge.judge("a", 0.1) == (1.0, None)
    assert judge.forget("never-seen") is False


def test_a_new_model_restarts_calibration_and_adaptation_but_not_episodes() -> None:
    judge = Judge(
        AlertRule(resolve_after=5), threshold=1.0, adaptation=AdaptationRule(windows=2),
        reference_score=1.0,
    )  # fmt: skip
    for score in [5.0, 5.0, 5.0]:
        judge.judge("a", score)
    assert judge.judge("a", 0.0)[0] == pytest.approx(5.0)  # the median of 5, 5
    judge.install(JudgeLevels(threshold=2.0, reference_score=1.0, prior=ScorePrior(0.0, 1.0)))
    assert judge.firing("a")
    assert judge.judge("a", 0.0) == (2.0, None)  # the new base, no adapted factor yet


# Ties, zeros and large spikes drawn often: thresholds adapt, alerts fire and resolve.
_scores = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 8.0, 50.0]), st.floats(0.0, 100.0))


@st.composite
def _judges(draw: st.DrawFn) -> tuple[Judge, Judge]:
    """Two judges with the same random configuration, both fresh."""
    fire_n = draw(st.integers(1, 4))
    rule = AlertRule(
        fire_k=draw(st.integers(1, fire_n)),
        fire_n=fire_n,
        resolve_after=draw(st.integers(1, 3)),
        resolve_ratio=draw(st.sampled_from([1.0, 0.7, 0.25])),
        cooldown=draw(st.integers(0, 3)),
    )
    adaptation = draw(
        st.none() | st.builds(AdaptationRule, st.integers(2, 6), st.sampled_from([1.0, 3.0, 10.0]))
    )
    likelihood = draw(
        st.none()
        | st.builds(
            LikelihoodRule,
            windows=st.integers(10, 14),
            tail=st.sampled_from([1e-3, 0.1, 0.3]),
            prior_windows=st.integers(1, 5),
            learn=st.sampled_from(["all", "calm"]),
            combine=st.sampled_from(["replace", "max"]),
            min_error_share=st.just(0.0),  # applies to every model (error share NaN here)
        )
    )
    calibration = draw(
        st.none()
        | st.builds(
            CalibrationRule,
            windows=st.integers(2, 5),
            method=st.sampled_from(["quantile", "mean_std"]),
            quantile=st.just(0.9),
            max_ratio=st.just(20.0),
        )
    )
    threshold = draw(st.sampled_from([1.0, 3.0]))
    reference = draw(st.sampled_from([0.0, 1.0, 2.5]))
    return tuple(  # type: ignore[return-value]
        Judge(rule, threshold, calibration, adaptation, reference, likelihood, ScorePrior(0.0, 0.5))
        for _ in range(2)
    )


def _state(judge: Judge) -> dict[str, tuple[object, ...]]:
    """Every piece of each device's state, histories as their bytes."""

    def content(state: object) -> object:
        scores = getattr(state, "_recent", None)
        if scores is None:
            return state  # calibration: its scores and threshold
        return bytes(scores._ring), bytes(scores._sorted), scores._count, scores._nans

    return {
        device_id: (
            device.alert,
            # None: no rule state yet (a judge without level rules never makes any).
            tuple(content(state) for state in device.states or ()),
        )
        for device_id, device in judge.devices.items()
    }


@settings(max_examples=300, deadline=None)
@given(
    judges=_judges(),
    stream=st.lists(st.tuples(st.sampled_from("abc"), _scores), max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    after=st.lists(st.tuples(st.sampled_from("abc"), _scores), max_size=10),
)
def test_judging_a_batch_equals_judging_window_by_window(
    judges: tuple[Judge, Judge],
    stream: list[tuple[str, float]],
    cuts: list[int],
    after: list[tuple[str, float]],
) -> None:
    one, many = judges
    thresholds, transitions, firing = [], [], []
    for row, (device_id, score) in enumerate(stream):
        threshold, transition = one.judge(device_id, score)
        thresholds.append(threshold)
        firing.append(one.firing(device_id))
        if transition is not None:
            transitions.append((row, transition))
    got_thresholds, got_transitions, got_firing = [], [], []
    bounds = [0, *sorted(min(cut, len(stream)) for cut in cuts), len(stream)]
    for start, end in itertools.pairwise(bounds):
        device_ids = [device_id for device_id, _ in stream[start:end]]
        judged = many.judge_many(device_ids, np.array([s for _, s in stream[start:end]]))
        assert judged.thresholds.dtype == np.float64 and judged.firing.dtype == np.bool_
        got_thresholds.extend(judged.thresholds.tolist())
        got_transitions.extend((start + row, state) for row, state in judged.transitions)
        got_firing.extend(judged.firing.tolist())
    # Bit for bit: NaN, signed zeros and all.
    assert np.array(got_thresholds).view(np.int64).tolist() == (
        np.array(thresholds, dtype=np.float64).view(np.int64).tolist()
    )
    assert got_transitions == transitions
    assert got_firing == firing
    assert _state(many) == _state(one)
    assert many.firing_count() == one.firing_count()
    for device_id, score in after:
        assert many.judge(device_id, score) == one.judge(device_id, score)


def test_a_batch_judges_a_devices_windows_in_order() -> None:
    judge = Judge(AlertRule(fire_k=2, fire_n=2, resolve_after=2), threshold=1.0)
    judged = judge.judge_many(["a", "b", "a", "b", "a", "a"], np.array([2, 0, 2, 0, 0, 0.5]))
    assert judged.thresholds.tolist() == [1.0] * 6
    assert judged.transitions == [(2, "firing"), (5, "resolved")]
    assert judged.firing.tolist() == [False, False, True, False, True, False]
    assert judge.firing_count() == 0


def test_an_empty_batch_judges_nothing() -> None:
    judge = Judge(AlertRule(), threshold=1.0, adaptation=AdaptationRule(windows=2))
    judged = judge.judge_many([], np.empty(0))
    assert judged.thresholds.shape == judged.firing.shape == (0,)
    assert judged.transitions == [] and judge.devices == {}


def test_a_batch_needs_a_score_per_device_id() -> None:
    with pytest.raises(ValueError, match="2 device ids for 1 scores"):
        Judge(AlertRule(), threshold=1.0).judge_many(["a", "b"], np.array([1.0]))
