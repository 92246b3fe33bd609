"""Point-wise and event metrics of detector.core.quality on hand-made and generated label/flag rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.core.quality import EventCounts, combine, events, pointwise, summarise

rows = st.lists(st.integers(0, 1), min_size=0, max_size=200)
pairs = st.integers(0, 200).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
    )
)


def _runs(values: list[int]) -> int:
    """Maximal runs of 1, counted the slow obvious way."""
    return sum(1 for i, v in enumerate(values) if v and (i == 0 or not values[i - 1]))


def test_pointwise_counts_and_rates() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    flags = [0, 1, 0, 0, 0, 1, 1, 1, 1, 0]
    m = pointwise(labels, flags)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 4)
    assert m["f1"] == pytest.approx(6 / 9)
    assert m["far"] == pytest.approx(100 * 2 / 6)
    assert m["mar"] == pytest.approx(100 * 1 / 4)
    assert all(isinstance(m[k], int) for k in ("tp", "fp", "fn", "tn"))


def test_pointwise_empty_denominators_are_zero() -> None:
    assert pointwise([], []) == {"f1": 0, "far": 0, "mar": 0, "tp": 0, "fp": 0, "fn": 0, "tn": 0}
    only_normal = pointwise([0, 0, 0], [0, 1, 0])
    assert only_normal["mar"] == 0 and only_normal["far"] == pytest.approx(100 / 3)


def test_pointwise_accepts_float_and_bool_labels() -> None:
    # SKAB stores its labels as 0.0 / 1.0 floats.
    assert pointwise(np.array([0.0, 1.0]), np.array([False, True]))["f1"] == 1.0


@pytest.mark.parametrize(
    ("labels", "flags"),
    [([0, 2], [0, 1]), ([0, 1], [0, 0.5]), ([0, np.nan], [0, 1]), ([[0, 1]], [[0, 1]])],
)
def test_non_binary_or_non_1d_input_is_rejected(labels: list, flags: list) -> None:
    with pytest.raises(ValueError):
        pointwise(labels, flags)


def test_length_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        events([0, 1, 1], [0, 1])


def test_onsets_inside_and_outside_episodes() -> None:
    #        episode A (rows 2-4)      episode B (rows 9-10)
    labels = [0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    flags = [0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    counts = events(labels, flags)
    # Onsets at rows 3 (inside A) and 6 (normal): one true, one false; B is missed.
    assert counts == EventCounts(
        onsets=2, true_onsets=1, episodes=2, detected_episodes=1, delays=(1,)
    )


def test_detection_delay_is_rows_to_first_flag_in_episode() -> None:
    labels = [0] * 5 + [1] * 10 + [0] * 5 + [1] * 3
    flags = [0] * 5 + [0] * 4 + [1] * 6 + [0] * 5 + [1, 0, 1]
    counts = events(labels, flags)
    assert counts.delays == (4, 0)
    assert counts.detected_episodes == 2 and counts.onsets == 3 and counts.true_onsets == 3


def test_alarm_running_into_an_episode_detects_it_but_is_a_false_onset() -> None:
    labels = [0, 0, 1, 1, 0]
    flags = [0, 1, 1, 1, 0]
    counts = events(labels, flags)
    assert counts == EventCounts(
        onsets=1, true_onsets=0, episodes=1, detected_episodes=1, delays=(0,)
    )


def test_flag_at_row_zero_is_an_onset() -> None:
    assert events([1, 1, 0], [1, 1, 0]) == EventCounts(1, 1, 1, 1, (0,))
    assert events([0, 0, 0], [1, 0, 0]).onsets == 1
    assert events([0, 0, 0], [1, 0, 0]).true_onsets == 0


def test_episode_ending_at_last_row_and_flags_after_episodes() -> None:
    counts = events([0, 1, 1], [0, 0, 1])
    assert counts == EventCounts(1, 1, 1, 1, (1,))
    # Flags after the last episode do not detect it.
    assert events([1, 0, 0], [0, 0, 1]).detected_episodes == 0


def test_empty_label_set() -> None:
    assert events([], []) == EventCounts(0, 0, 0, 0, ())
    summary = combine([events([], [])], devices=1)
    assert summary["event_precision"] == 1.0 and summary["event_recall"] == 1.0
    assert summary["median_delay"] is None and summary["alarms_per_device"] == 0


def test_combine_pools_devices() -> None:
    a = EventCounts(onsets=2, true_onsets=1, episodes=2, detected_episodes=1, delays=(3,))
    b = EventCounts(onsets=1, true_onsets=1, episodes=1, detected_episodes=1, delays=(6,))
    normal = EventCounts(onsets=1, true_onsets=0, episodes=0, detected_episodes=0, delays=())
    out = combine([a, b, normal], devices=4)
    assert out["event_precision"] == pytest.approx(2 / 4)
    assert out["event_recall"] == pytest.approx(2 / 3)
    assert out["event_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert out["alarms_per_device"] == pytest.approx(4 / 4)
    assert out["median_delay"] == 4.5
    assert (out["onsets"], out["episodes"]) == (4, 3)


def test_combine_silent_detector_with_episodes_scores_zero() -> None:
    out = combine([EventCounts(0, 0, 2, 0, ())], devices=1)
    assert out["event_precision"] == 0.0 and out["event_recall"] == 0.0 and out["event_f1"] == 0.0


def test_combine_only_false_alarms_on_normal_devices() -> None:
    out = combine([EventCounts(3, 0, 0, 0, ())], devices=2)
    assert out["event_precision"] == 0.0 and out["event_recall"] == 1.0
    assert out["event_f1"] == 0.0 and out["alarms_per_device"] == 1.5


def test_combine_needs_a_device() -> None:
    with pytest.raises(ValueError, match="devices"):
        combine([], devices=0)


def test_summarise_is_pointwise_of_concatenation_plus_per_device_events() -> None:
    dev_a = ([0, 1, 1], [0, 0, 1])
    dev_b = ([1, 0, 0], [1, 1, 0])
    out = summarise([dev_a, dev_b])
    assert {k: out[k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    # Per device, b's alarm at its row 0 is an onset; concatenated it would merge with a's alarm.
    assert out["onsets"] == 2 and out["episodes"] == 2 and out["true_onsets"] == 2
    assert out["median_delay"] == 0.5
    json.dumps(out)  # JSON-safe as it is


def test_summarise_needs_a_device() -> None:
    with pytest.raises(ValueError):
        summarise([])


@given(pairs)
def test_pointwise_counts_add_up(pair: tuple[list[int], list[int]]) -> None:
    labels, flags = pair
    m = pointwise(labels, flags)
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == len(labels)
    assert m["tp"] + m["fn"] == sum(labels) and m["tp"] + m["fp"] == sum(flags)
    assert 0 <= m["f1"] <= 1 and 0 <= m["far"] <= 100 and 0 <= m["mar"] <= 100


@given(rows)
def test_perfect_flags_give_perfect_event_scores(labels: list[int]) -> None:
    counts = events(labels, labels)
    assert counts.episodes == counts.onsets == counts.true_onsets == counts.detected_episodes
    assert counts.episodes == _runs(labels)
    assert counts.delays == (0,) * counts.episodes
    out = combine([counts], devices=1)
    assert out["event_precision"] == out["event_recall"] == out["event_f1"] == 1.0
    m = pointwise(labels, labels)
    assert m["fp"] == m["fn"] == 0 and m["f1"] == (1.0 if any(labels) else 0.0)


@given(rows)
def test_no_flags_detect_nothing(labels: list[int]) -> None:
    counts = events(labels, [0] * len(labels))
    out = combine([counts], devices=3)
    assert out["alarms_per_device"] == 0 and out["onsets"] == 0
    assert out["median_delay"] is None
    if any(labels):
        assert out["event_recall"] == 0.0 and out["event_precision"] == 0.0
    else:
        assert out["event_recall"] == 1.0 and out["event_precision"] == 1.0


@given(pairs)
def test_event_counts_are_consistent(pair: tuple[list[int], list[int]]) -> None:
    labels, flags = pair
    counts = events(labels, flags)
    assert counts.onsets == _runs(flags) and counts.episodes == _runs(labels)
    assert 0 <= counts.true_onsets <= counts.onsets
    assert counts.detected_episodes <= counts.episodes
    # A true onset lies inside an episode, which it therefore detects.
    assert counts.detected_episodes >= min(counts.true_onsets, 1)
    assert len(counts.delays) == counts.detected_episodes
    assert all(d >= 0 for d in counts.delays)
    lengths = [len(run) for run in "".join(map(str, labels)).split("0") if run]
    assert sum(counts.delays) <= sum(lengths) - counts.detected_episodes
