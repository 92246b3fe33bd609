"""Alert rule extensions: hysteresis (a resolve level below the threshold) and cooldown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.config import AlertConfig
from detector.core.alerts import AlertRule, DeviceAlertState


def _transitions(rule: AlertRule, scores: list[float], threshold: float = 1.0) -> list[tuple]:
    state = DeviceAlertState()
    out = []
    for i, score in enumerate(scores):
        transition = state.observe(rule, score, threshold)
        if transition is not None:
            out.append((i, transition))
    return out


def test_levels() -> None:
    rule = AlertRule(resolve_ratio=0.5)
    assert rule.levels(1.5, 1.0) == (True, False)
    assert rule.levels(0.8, 1.0) == (False, False)  # between the levels: neither
    assert rule.levels(0.4, 1.0) == (False, True)
    assert rule.levels(0.5, 1.0) == (False, True)
    assert AlertRule(resolve_ratio=1.0).levels(1.0, 1.0) == (
        False,
        True,
    )  # no gap without hysteresis


def test_scores_between_the_levels_keep_the_episode_open() -> None:
    rule = AlertRule(resolve_after=2, resolve_ratio=0.5)
    scores = [2.0, 0.8, 0.9, 0.7, 0.8, 0.4, 0.4]
    assert _transitions(rule, scores) == [(0, "firing"), (6, "resolved")]
    # Without hysteresis the same scores resolve at the second window under the threshold.
    plain = AlertRule(resolve_after=2, resolve_ratio=1.0)
    assert _transitions(plain, scores) == [(0, "firing"), (2, "resolved")]


def test_a_window_between_the_levels_restarts_the_resolve_count() -> None:
    rule = AlertRule(resolve_after=2, resolve_ratio=0.5)
    assert _transitions(rule, [2.0, 0.4, 0.7, 0.4, 0.4]) == [(0, "firing"), (4, "resolved")]


def test_cooldown_blocks_new_episodes_then_lets_them_fire() -> None:
    rule = AlertRule(resolve_after=1, cooldown=3)
    scores = [2.0, 0.0, 2.0, 2.0, 2.0, 2.0]
    assert _transitions(rule, scores) == [(0, "firing"), (1, "resolved"), (5, "firing")]


def test_overs_during_cooldown_count_once_it_ends() -> None:
    rule = AlertRule(fire_k=2, fire_n=3, resolve_after=1, cooldown=2)
    # The over at 3 falls in the cooldown; with the over at 5 the last three hold 2 overs.
    assert _transitions(rule, [2.0, 2.0, 0.0, 2.0, 0.0, 2.0]) == [
        (1, "firing"),
        (2, "resolved"),
        (5, "firing"),
    ]
    # An under window never starts an episode, even when cooldown overs complete the k of n.
    assert _transitions(rule, [2.0, 2.0, 0.0, 2.0, 2.0, 0.0]) == [(1, "firing"), (2, "resolved")]


def test_config_defaults_hold_episodes_with_hysteresis() -> None:
    # docs/quality.md, round 4: re-fires within 10 windows and scores hovering between 0.7 and 1
    # x the threshold stay one episode; round 5: no new episode for 100 windows after a resolve.
    config = AlertConfig()
    assert (config.resolve_after, config.resolve_ratio, config.cooldown) == (10, 0.7, 100)
    assert config.rule() == AlertRule(config.fire_k, config.fire_n, 10, 0.7, 100)


@pytest.mark.parametrize(
    "kwargs", [{"resolve_ratio": 0.0}, {"resolve_ratio": 1.2}, {"cooldown": -1}]
)
def test_invalid_rules_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AlertRule(**kwargs)  # type: ignore[arg-type]


_rules = st.builds(
    lambda n, k, resolve_after, ratio, cooldown: AlertRule(
        min(k, n), n, resolve_after, ratio, cooldown
    ),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 4),
    st.sampled_from([1.0, 0.8, 0.5, 0.2]),
    st.integers(0, 5),
)
_scores = st.lists(st.sampled_from([0.0, 0.1, 0.3, 0.6, 0.9, 1.0, 1.1, 2.0]), max_size=150)


@given(rule=_rules, scores=_scores)
def test_rule_invariants(rule: AlertRule, scores: list[float]) -> None:
    state = DeviceAlertState()
    transitions: list[tuple[int, str]] = []
    for i, score in enumerate(scores):
        transition = state.observe(rule, score, 1.0)
        if transition == "firing":
            assert score > 1.0, "only an over-threshold window starts an episode"
            recent = scores[max(0, i - rule.fire_n + 1) : i + 1]
            assert sum(s > 1.0 for s in recent) >= rule.fire_k
            if transitions:  # not within the cooldown after the previous resolve
                assert i - transitions[-1][0] > rule.cooldown
        if transition == "resolved":
            window = scores[i - rule.resolve_after + 1 : i + 1]
            assert all(s <= rule.resolve_ratio for s in window), "resolves only after clear windows"
        if transition is not None:
            transitions.append((i, transition))
        assert state.firing == (transitions[-1:] != [] and transitions[-1][1] == "firing")
    states = [t for _, t in transitions]
    assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2)


@given(
    k_n=st.integers(1, 6).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    resolve_after=st.integers(1, 4),
    scores=_scores,
)
def test_ratio_one_and_no_cooldown_is_the_plain_rule(
    k_n: tuple[int, int], resolve_after: int, scores: list[float]
) -> None:
    rule = AlertRule(k_n[0], k_n[1], resolve_after, resolve_ratio=1.0)
    plain, observed = DeviceAlertState(), DeviceAlertState()
    for score in scores:
        assert plain.update(rule, score > 1.0) == observed.observe(rule, score, 1.0)
