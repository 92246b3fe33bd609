"""Alert rules: one ``firing`` and one ``resolved`` per episode, k-of-n firing, stable alert ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from detector.core.alerts import Alert, AlertRule, DeviceAlertState, alert_id


def _run(rule: AlertRule, verdicts: list[bool]) -> list[str | None]:
    state = DeviceAlertState()
    return [state.update(rule, over) for over in verdicts]


def _transitions(rule: AlertRule, verdicts: list[bool]) -> list[tuple[int, str]]:
    return [(i, t) for i, t in enumerate(_run(rule, verdicts)) if t is not None]


def test_episode_fires_once_and_resolves_once() -> None:
    rule = AlertRule(fire_k=1, fire_n=1, resolve_after=3)
    verdicts = [False] * 2 + [True] * 10 + [False] * 5
    assert _transitions(rule, verdicts) == [(2, "firing"), (14, "resolved")]


def test_k_of_n_fires_on_two_overs_within_three() -> None:
    rule = AlertRule(fire_k=2, fire_n=3, resolve_after=1)
    assert _run(rule, [True, False, True]) == [None, None, "firing"]


def test_k_of_n_ignores_overs_further_apart_than_n() -> None:
    rule = AlertRule(fire_k=2, fire_n=3, resolve_after=1)
    verdicts = [True, False, False] * 5
    assert _transitions(rule, verdicts) == []


def test_single_over_does_not_fire_with_k_2() -> None:
    rule = AlertRule(fire_k=2, fire_n=5, resolve_after=1)
    assert _transitions(rule, [False, True, False, False, False, False]) == []


def test_brief_dip_shorter_than_resolve_after_does_not_resolve() -> None:
    rule = AlertRule(fire_k=1, fire_n=1, resolve_after=3)
    verdicts = [True, False, False, True, False, False, True, False, False, False]
    assert _transitions(rule, verdicts) == [(0, "firing"), (9, "resolved")]


def test_can_fire_again_after_resolving() -> None:
    """After a resolve the k-of-n history starts afresh: old overs do not count again."""
    rule = AlertRule(fire_k=2, fire_n=4, resolve_after=1, cooldown=0)
    # Without the reset, index 3 would see over,over,under,over (3 of 4) and fire at once.
    verdicts = [True, True, False, True, True]
    assert _transitions(rule, verdicts) == [(1, "firing"), (2, "resolved"), (4, "firing")]


@given(
    k_n=st.integers(1, 8).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    resolve_after=st.integers(1, 5),
    verdicts=st.lists(st.booleans(), max_size=200),
)
def test_transitions_alternate_starting_with_firing(
    k_n: tuple[int, int], resolve_after: int, verdicts: list[bool]
) -> None:
    rule = AlertRule(fire_k=k_n[0], fire_n=k_n[1], resolve_after=resolve_after)
    state = DeviceAlertState()
    transitions = []
    for i, over in enumerate(verdicts):
        transition = state.update(rule, over)
        if transition == "firing":
            assert over, "only an over-threshold window can start an episode"
            assert sum(verdicts[max(0, i - rule.fire_n + 1) : i + 1]) >= rule.fire_k
        if transition == "resolved":
            assert not any(verdicts[i - rule.resolve_after + 1 : i + 1])
        if transition is not None:
            transitions.append(transition)
        assert state.firing == (transitions[-1:] == ["firing"])
    expected = ["firing", "resolved"] * (len(transitions) // 2 + 1)
    assert transitions == expected[: len(transitions)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fire_k": 0},
        {"fire_k": 3, "fire_n": 2},
        {"fire_k": 1, "fire_n": 63},
        {"resolve_after": 0},
    ],
)
def test_invalid_rules_raise(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AlertRule(**kwargs)


def test_largest_allowed_window_works() -> None:
    rule = AlertRule(fire_k=62, fire_n=62, resolve_after=1)
    assert _transitions(rule, [True] * 62) == [(61, "firing")]


def test_alert_id_is_deterministic_and_distinguishes_inputs() -> None:
    base = alert_id("pump-1", 1700000000.5, "v1", "firing")
    assert base == alert_id("pump-1", 1700000000.5, "v1", "firing")
    variants = {
        alert_id("pump-2", 1700000000.5, "v1", "firing"),
        alert_id("pump-1", 1700000001.5, "v1", "firing"),
        alert_id("pump-1", 1700000000.5, "v2", "firing"),
        alert_id("pump-1", 1700000000.5, "v1", "resolved"),
    }
    assert base not in variants
    assert len(variants) == 4


def _alert_fields() -> dict[str, object]:
    return {
        "alert_id": alert_id("d", 2.0, "v1", "firing"),
        "state": "firing",
        "device_id": "d",
        "window_start": 1.0,
        "window_end": 2.0,
        "score": 3.0,
        "threshold": 1.5,
        "severity": 2.0,
        "model_version": "v1",
        "top_sensors": [{"sensor": "temperature", "share": 0.7}],
        "detected_at": 3.0,
    }


def test_alert_round_trips_through_json() -> None:
    alert = Alert.model_validate(_alert_fields())
    assert Alert.model_validate_json(alert.model_dump_json()) == alert


def test_alert_rejects_extra_fields() -> None:
    with pytest.raises(ValidationError, match="surprise"):
        Alert.model_validate({**_alert_fields(), "surprise": 1})


def test_alert_rejects_unknown_state() -> None:
    with pytest.raises(ValidationError):
        Alert.model_validate({**_alert_fields(), "state": "pending"})
