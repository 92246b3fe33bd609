"""The judge: each device's threshold (artifact, calibrated, adapted) and its alert-rule state."""

from __future__ import annotations

import pytest

from detector.core.adaptation import AdaptationRule
from detector.core.alerts import AlertRule
from detector.core.calibration import CalibrationRule
from detector.core.judge import Judge, JudgeLevels
from detector.core.likelihood import ScorePrior


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
