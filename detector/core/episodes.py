"""Alert episodes as time spans, and the readings inside them (pure, no I/O).

A retrain must not learn what the detector paged on. An *episode* runs from the first reading of
the window whose ``firing`` alert opened it to the last reading of the window whose ``resolved``
alert closed it (still open: to the end). The backtest's refits and ``trainer fit
--exclude-alerts`` both leave out the readings inside their devices' episodes through these
functions, so the two leave out the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

__all__ = ["Transition", "episode_spans", "rows_in_episodes"]


class Transition(NamedTuple):
    """What an alert says about its device's episode."""

    device_id: str
    state: str  # "firing" | "resolved"
    window_start: float
    window_end: float


def episode_spans(transitions: Iterable[Transition]) -> dict[str, list[tuple[float, float]]]:
    """Each device's episodes as ``(start, end)`` event-time spans, in time order.

    Repeated alerts (an at-least-once delivery) count once; a ``resolved`` with no ``firing``
    before it (its episode opened before what was read) closes a span that starts at ``-inf``; an
    episode still open ends at ``+inf``.
    """
    by_device: dict[str, set[Transition]] = {}
    for transition in transitions:
        by_device.setdefault(transition.device_id, set()).add(transition)
    spans: dict[str, list[tuple[float, float]]] = {}
    for device, unique in by_device.items():
        opened: float | None = None
        closed: list[tuple[float, float]] = []
        for transition in sorted(unique, key=lambda t: (t.window_end, t.state != "firing")):
            if transition.state == "firing":
                if opened is None:
                    opened = transition.window_start
            else:
                closed.append((-math.inf if opened is None else opened, transition.window_end))
                opened = None
        if opened is not None:
            closed.append((opened, math.inf))
        spans[device] = closed
    return spans


def rows_in_episodes(
    device_ids: np.ndarray, ts: np.ndarray, spans: dict[str, list[tuple[float, float]]]
) -> np.ndarray:
    """Which rows (``device_ids[i]`` at ``ts[i]``) lie inside one of their device's episodes."""
    inside = np.zeros(len(ts), dtype=bool)
    ts = np.asarray(ts, dtype=np.float64)
    rows_of = pd.Series(np.arange(len(ts))).groupby(np.asarray(device_ids), sort=False).indices
    for device, device_spans in spans.items():
        rows = rows_of.get(device)
        if rows is None:
            continue
        stamps = ts[rows]
        for start, end in device_spans:
            inside[rows[(stamps >= start) & (stamps <= end)]] = True
    return inside
