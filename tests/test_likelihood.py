"""Per-device score likelihood: levels from a device's own scores, robust, rebuildable."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.alerts import AlertRule
from detector.core.judge import Judge, JudgeLevels
from detector.core.likelihood import DeviceLikelihood, LikelihoodRule, ScorePrior

PRIOR = ScorePrior(location=0.0, scale=0.5)
positive_scores = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


def _fed(rule: LikelihoodRule, scores: np.ndarray, prior: ScorePrior = PRIOR) -> DeviceLikelihood:
    device = DeviceLikelihood(rule, prior)
    for score in scores:
        device.remember(float(score))
    return device


def test_a_new_device_is_judged_by_the_models_validation_scores() -> None:
    rule = LikelihoodRule(windows=100, tail=1e-4)
    device = DeviceLikelihood(rule, PRIOR)
    assert device.level() == pytest.approx(math.exp(0.0 + rule.z * 0.5))
    assert not device.complete


def test_false_alarm_rate_on_a_stationary_device_is_close_to_the_tail() -> None:
    rule = LikelihoodRule(windows=500, tail=0.01)
    rng = np.random.default_rng(0)
    scores = np.exp(rng.normal(3.0, 0.4, 20_000))  # nothing like the prior: its own level counts
    device = DeviceLikelihood(rule, PRIOR)
    over = []
    for score in scores:
        over.append(score > device.level())  # judged before it joins the history
        device.remember(score)
    rate = float(np.mean(over[1000:]))
    assert 0.004 < rate < 0.02, rate


def test_a_stream_the_artifact_threshold_would_blind_still_alarms_on_a_spike() -> None:
    # The artifact's threshold sits far above anything the device scores (a model that barely
    # learned); its own history makes the spike stand out.
    judge = Judge(
        AlertRule(resolve_after=5),
        threshold=1e5,
        likelihood=LikelihoodRule(windows=200, tail=1e-4, combine="replace", min_error_share=0),
        prior=ScorePrior.from_validation({"p50": 1.0, "p90": 3.0}),
    )
    rng = np.random.default_rng(1)
    transitions = [judge.judge("d", float(s))[1] for s in np.exp(rng.normal(0.0, 0.2, 400))]
    assert "firing" not in transitions
    assert judge.judge("d", 20.0)[1] == "firing"


def test_spikes_in_the_history_barely_move_the_level() -> None:
    rule = LikelihoodRule(windows=1000)
    rng = np.random.default_rng(2)
    clean = np.exp(rng.normal(0.0, 0.3, 1000))
    spiky = clean.copy()
    spiky[rng.choice(1000, 100, replace=False)] = 1e4  # 10 % of the history
    ratio = _fed(rule, spiky).level() / _fed(rule, clean).level()
    assert 1.0 <= ratio < 1.5


def test_the_device_level_does_not_depend_on_how_long_ago_the_history_started() -> None:
    # A device whose scores were 100x higher long ago is judged by its recent scores only.
    rule = LikelihoodRule(windows=50)
    old = np.full(500, 100.0)
    recent = np.exp(np.random.default_rng(3).normal(0.0, 0.3, 50))
    assert _fed(rule, np.concatenate([old, recent])).level() == _fed(rule, recent).level()


@settings(max_examples=60, deadline=None)
@given(
    history=st.lists(positive_scores, min_size=0, max_size=120),
    tail=st.lists(positive_scores, min_size=20, max_size=20),
)
def test_a_replay_of_the_last_windows_rebuilds_the_state_exactly(
    history: list[float], tail: list[float]
) -> None:
    """What a partition handover relies on: the new owner re-scores the last windows."""
    rule = LikelihoodRule(windows=20, prior_windows=5)
    everything = _fed(rule, np.asarray(history + tail))
    rebuilt = _fed(rule, np.asarray(tail))
    assert everything.level() == rebuilt.level()
    assert everything.complete and rebuilt.complete
    probe = tail[0] * 3.0
    assert everything.tail_probability(probe) == rebuilt.tail_probability(probe)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(positive_scores, min_size=1, max_size=60),
    factor=st.sampled_from([1e-3, 0.5, 2.0, 1e3]),
)
def test_levels_scale_with_the_scores(scores: list[float], factor: float) -> None:
    """Units do not matter: scores (and the model's reference) x c give levels x c."""
    rule = LikelihoodRule(windows=30, prior_windows=10)
    prior = ScorePrior(location=0.3, scale=0.4)
    scaled_prior = ScorePrior(location=0.3 + math.log(factor), scale=0.4)
    plain = _fed(rule, np.asarray(scores), prior)
    scaled = _fed(rule, np.asarray(scores) * factor, scaled_prior)
    assert scaled.level() == pytest.approx(plain.level() * factor, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(positive_scores, min_size=2, max_size=60), probe=positive_scores)
def test_tail_probability_is_below_the_tail_exactly_above_the_level(
    scores: list[float], probe: float
) -> None:
    rule = LikelihoodRule(windows=30, tail=1e-3)
    device = _fed(rule, np.asarray(scores))
    level = device.level()
    if not math.isclose(probe, level, rel_tol=1e-9):
        assert (device.tail_probability(probe) < rule.tail) == (probe > level)


def _reference_level(rule: LikelihoodRule, prior: ScorePrior, history: list[float]) -> float:
    """The level as the likelihood computed it by partitioning the log-scores every window."""
    seen = len(history)
    location, scale = prior.location, prior.scale
    if seen >= 2:
        middle, spread_at = (seen - 1) // 2, round(rule.spread_quantile * (seen - 1))
        ordered = np.partition(np.asarray(history), sorted({spread_at, middle}))
        own_location = float(ordered[middle])
        own_scale = abs(float(ordered[spread_at]) - own_location) / rule.spread_z
        weight = seen / (seen + rule.prior_windows * (1.0 - seen / rule.windows))
        location = prior.location + weight * (own_location - prior.location)
        scale = prior.scale + weight * (own_scale - prior.scale)
    return math.exp(min(location + rule.z * max(scale, rule.min_scale), 700.0))


@settings(max_examples=150, deadline=None)
@given(
    windows=st.integers(10, 50),
    prior_windows=st.integers(1, 60),
    spread_quantile=st.sampled_from([LikelihoodRule().spread_quantile, 0.05, 0.3, 0.9]),
    scores=st.lists(
        st.one_of(st.sampled_from([0.0, 1.0, 1.0, 2.0]), positive_scores), max_size=150
    ),
)
def test_level_equals_the_partitioned_statistics_before_each_window(
    windows: int, prior_windows: int, spread_quantile: float, scores: list[float]
) -> None:
    """Per window, exactly the level a partition of the last ``windows`` log-scores gives."""
    rule = LikelihoodRule(
        windows=windows, prior_windows=prior_windows, spread_quantile=spread_quantile
    )
    device = DeviceLikelihood(rule, PRIOR)
    logs = [max(math.log(s), math.log(1e-30)) if s > 0.0 else math.log(1e-30) for s in scores]
    for i, score in enumerate(scores):
        assert device.level() == _reference_level(rule, PRIOR, logs[max(0, i - windows) : i])
        device.remember(score)


def test_state_is_bounded_by_the_window_count() -> None:
    rule = LikelihoodRule(windows=64)
    device = _fed(rule, np.ones(10_000))
    assert device.complete
    assert device.level() == pytest.approx(math.exp(rule.z * rule.min_scale))


def test_a_score_of_zero_is_judged_not_a_crash() -> None:
    device = DeviceLikelihood(LikelihoodRule(windows=10), PRIOR)
    for _ in range(20):
        device.remember(0.0)
    assert 0.0 < device.level() < 1e-20


@pytest.mark.parametrize(
    "kwargs",
    [{"windows": 5}, {"tail": 0.0}, {"tail": 0.5}, {"prior_windows": 0}, {"min_scale": 0.0}],
)
def test_invalid_rules_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LikelihoodRule(**kwargs)  # type: ignore[arg-type]


def test_prior_from_an_artifacts_validation_summary() -> None:
    deciles = [0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.4, 1.7, 2.0]
    with_deciles = ScorePrior.from_validation({"p50": 1.0, "p90": 2.0}, deciles)
    assert with_deciles.location == 0.0
    assert with_deciles.scale == pytest.approx(math.log(2.0) / 1.2815515655446004)
    without = ScorePrior.from_validation({"p50": 1.0, "p90": 3.0})
    assert without.scale == pytest.approx(math.log(3.0) / 1.2815515655446004)


def test_the_likelihood_can_be_kept_for_models_that_learned_little() -> None:
    rule = LikelihoodRule(windows=50, combine="replace", min_error_share=1.0)
    learned = JudgeLevels(1e5, 1.0, ScorePrior(0.0, 0.2), error_share=0.4)
    barely = JudgeLevels(1e5, 1.0, ScorePrior(0.0, 0.2), error_share=1.2)
    judge = Judge(AlertRule(), 1e5, likelihood=rule, prior=learned.prior, error_share=0.4)
    assert judge.judge("d", 50.0) == (1e5, None)  # the artifact's threshold: no likelihood
    judge.install(barely)
    level, transition = judge.judge("d", 50.0)
    assert level < 10.0 and transition == "firing"
    judge.install(learned)
    assert judge.chain == ()
    assert not LikelihoodRule(windows=50, min_error_share=1.0).applies_to(math.nan)
    assert LikelihoodRule(windows=50, min_error_share=0.0).applies_to(math.nan)
