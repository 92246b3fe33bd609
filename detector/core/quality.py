"""Detection-quality metrics: point-wise rates and event (episode/alarm) counts, no I/O.

Point-wise metrics treat every row as one binary decision, as the SKAB, TEP and SMD protocols do.
Event metrics look at one device's rows in time order: a labelled *episode* is a maximal run of
label-1 rows, and an *alarm onset* is a row where the flags go from 0 to 1. Operators see onsets
(each one pages someone), so event precision says how many pages were real, event recall how many
episodes paged at all, and the delay how long the first page took.

Conventions for empty denominators are stated on each function; every returned value is a plain
``int``, ``float`` or ``None``, so the dicts serialise to JSON as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["EventCounts", "combine", "events", "pointwise", "summarise"]


def _binary(name: str, values: npt.ArrayLike) -> np.ndarray:
    """``values`` as a 1-D bool array; anything but 0/1 (or NaN) is a caller error."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return array.astype(bool)


def _pair(labels: npt.ArrayLike, flags: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    truth, flagged = _binary("labels", labels), _binary("flags", flags)
    if truth.shape != flagged.shape:
        raise ValueError(f"labels ({truth.size}) and flags ({flagged.size}) differ in length")
    return truth, flagged


def pointwise(labels: npt.ArrayLike, flags: npt.ArrayLike) -> dict[str, float | int]:
    """Point-wise F1, FAR and MAR of 0/1 ``flags`` against 0/1 ``labels``, with the counts.

    ``f1 = 2 tp / (2 tp + fp + fn)``; ``far`` is the percentage of label-0 rows flagged and
    ``mar`` the percentage of label-1 rows not flagged (the definitions of ``bench/skab.py``).
    Each rate is 0 when its denominator is empty (no rows, no normal rows, no anomalous rows).
    """
    truth, flagged = _pair(labels, flags)
    tp = int(np.sum(truth & flagged))
    fp = int(np.sum(~truth & flagged))
    fn = int(np.sum(truth & ~flagged))
    tn = int(np.sum(~truth & ~flagged))
    return {
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "far": 100 * fp / max(fp + tn, 1),
        "mar": 100 * fn / max(fn + tp, 1),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


@dataclass(frozen=True)
class EventCounts:
    """Alarm onsets and labelled episodes of one device, see :func:`events`."""

    onsets: int
    true_onsets: int
    episodes: int
    detected_episodes: int
    delays: tuple[int, ...]


def events(labels: npt.ArrayLike, flags: npt.ArrayLike) -> EventCounts:
    """Event counts of one device's rows in time order.

    - Episodes are maximal runs of label 1.
    - An alarm onset is a row flagged whose previous row is not; a flag on row 0 is an onset, so
      an alarm already running when the scored part begins counts once.
    - An onset is true when its own row is labelled 1. An alarm that starts before an episode and
      runs into it is therefore a false onset, yet it detects that episode with delay 0.
    - An episode is detected when any of its rows is flagged; ``delays`` holds, per detected
      episode in time order, the rows from its first row to its first flagged row.
    """
    truth, flagged = _pair(labels, flags)
    # Padding with a 0 on the left makes a run that starts at row 0 a rising edge as well.
    label_edges = np.diff(truth.astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(label_edges == 1)
    stops = np.flatnonzero(label_edges == -1)  # exclusive ends, paired with starts
    onset_rows = np.flatnonzero(np.diff(flagged.astype(np.int8), prepend=0) == 1)

    flagged_rows = np.flatnonzero(flagged)
    # First flagged row at or after each episode start; the episode is detected if it is inside.
    first = np.searchsorted(flagged_rows, starts)
    inside = first < flagged_rows.size
    inside[inside] = flagged_rows[first[inside]] < stops[inside]
    delays = flagged_rows[first[inside]] - starts[inside]
    return EventCounts(
        onsets=int(onset_rows.size),
        true_onsets=int(np.sum(truth[onset_rows])),
        episodes=int(starts.size),
        detected_episodes=int(np.sum(inside)),
        delays=tuple(int(d) for d in delays),
    )


def combine(counts: Iterable[EventCounts], devices: int) -> dict[str, float | int | None]:
    """Pool the event counts of several devices into event precision, recall, F1 and delay.

    - ``event_precision`` = true onsets / onsets. Without onsets it is 1.0 when there were no
      episodes either (nothing to find, nothing falsely raised) and 0.0 when episodes went
      unreported, so a silent detector never scores well.
    - ``event_recall`` = detected episodes / episodes, 1.0 when there are no episodes.
    - ``event_f1`` is their harmonic mean, 0.0 when both are 0.
    - ``alarms_per_device`` = onsets / ``devices`` (the number of streams, including those with
      no counts to contribute, e.g. all-normal ones that never alarmed).
    - ``median_delay`` is in rows over all detected episodes, ``None`` when none was detected.
    """
    if devices < 1:
        raise ValueError(f"devices must be at least 1, got {devices}")
    pooled = list(counts)
    onsets = sum(c.onsets for c in pooled)
    true_onsets = sum(c.true_onsets for c in pooled)
    episodes = sum(c.episodes for c in pooled)
    detected = sum(c.detected_episodes for c in pooled)
    delays = [d for c in pooled for d in c.delays]
    # No onsets: perfect only if there was nothing to report (see the docstring).
    precision = true_onsets / onsets if onsets else (0.0 if episodes else 1.0)
    recall = detected / episodes if episodes else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "event_precision": precision,
        "event_recall": recall,
        "event_f1": f1,
        "alarms_per_device": onsets / devices,
        "median_delay": float(np.median(delays)) if delays else None,
        "onsets": onsets,
        "true_onsets": true_onsets,
        "episodes": episodes,
        "detected_episodes": detected,
    }


def summarise(
    per_device: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
) -> dict[str, float | int | None]:
    """Point-wise metrics over all devices' rows concatenated, plus :func:`combine` of their events.

    ``per_device`` holds one ``(labels, flags)`` pair per device, each in time order and limited
    to the scored rows. Events are counted per device so that no episode or alarm spans two.
    """
    if not per_device:
        raise ValueError("summarise needs at least one device")
    pairs = [_pair(labels, flags) for labels, flags in per_device]
    return {
        **pointwise(np.concatenate([t for t, _ in pairs]), np.concatenate([f for _, f in pairs])),
        **combine((events(t, f) for t, f in pairs), devices=len(pairs)),
    }
