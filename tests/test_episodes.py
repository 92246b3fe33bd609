"""Alert episodes as spans, and the readings inside them: what refits leave out."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from detector.core.episodes import Transition, episode_spans, rows_in_episodes


def test_an_episode_runs_from_its_firing_windows_start_to_its_resolving_windows_end() -> None:
    spans = episode_spans(
        [
            Transition("a", "firing", 10.0, 14.0),
            Transition("a", "resolved", 30.0, 34.0),
            Transition("a", "firing", 50.0, 54.0),  # still open
            Transition("b", "resolved", 5.0, 9.0),  # opened before what was read
        ]
    )
    assert spans == {"a": [(10.0, 34.0), (50.0, math.inf)], "b": [(-math.inf, 9.0)]}


def test_a_redelivered_alert_counts_once() -> None:
    once = [Transition("a", "firing", 1.0, 2.0), Transition("a", "resolved", 5.0, 6.0)]
    assert episode_spans(once + once[::-1]) == episode_spans(once) == {"a": [(1.0, 6.0)]}


def test_rows_inside_an_episode_are_those_of_its_device_within_its_span() -> None:
    devices = np.array(["a", "a", "a", "b", "b", "a"])
    ts = np.array([9.0, 10.0, 34.0, 20.0, 40.0, 35.0])
    spans = {"a": [(10.0, 34.0)], "b": [(30.0, math.inf)]}
    assert rows_in_episodes(devices, ts, spans).tolist() == [False, True, True, False, True, False]


@given(
    st.lists(st.tuples(st.sampled_from(["x", "y"]), st.integers(0, 100)), max_size=30),
    st.lists(st.tuples(st.sampled_from(["x", "y", "z"]), st.integers(-5, 110)), max_size=40),
)
def test_a_row_is_inside_exactly_when_its_device_fired_before_it_and_had_not_resolved(
    alerts: list[tuple[str, int]], rows: list[tuple[str, int]]
) -> None:
    # Alerts alternate per device as the alert rule makes them: firing, resolved, firing, ...
    transitions, firing, last_end = [], {}, {}
    for device, end in sorted(alerts, key=lambda a: a[1]):
        if end <= last_end.get(device, -1):
            continue
        state = "resolved" if firing.get(device) else "firing"
        firing[device] = state == "firing"
        last_end[device] = end
        transitions.append(Transition(device, state, float(end - 3), float(end)))
    devices = np.array([d for d, _ in rows], dtype=object)
    ts = np.array([t for _, t in rows], dtype=np.float64)
    inside = rows_in_episodes(devices, ts, episode_spans(transitions))
    for row, (device, t) in enumerate(rows):
        mine = [tr for tr in transitions if tr.device_id == device]
        opened = [tr.window_start for tr in mine if tr.state == "firing"]
        expected = False
        for start in opened:
            closes = [
                tr.window_end for tr in mine if tr.state == "resolved" and tr.window_start > start
            ]
            end = min(closes, default=math.inf)
            expected |= start <= t <= end
        assert inside[row] == expected
