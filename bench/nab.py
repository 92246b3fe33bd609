"""The Numenta Anomaly Benchmark's scoring, ported from numenta/NAB (nab/sweeper.py, nab/runner.py).

NAB scores a detector by *detections*, rows where it raises an alarm, against labelled anomaly
*windows* (runs of rows around each labelled anomaly), after a probationary period that is not
scored:

- A window earns ``A_tp * S(p) / S(-1)`` for its FIRST detection, with ``S`` the scaled sigmoid
  (:func:`scaled_sigmoid`) and ``p = -(end - row + 1) / width`` the detection's relative position
  (``-1`` at the window's first row, so an alarm there earns exactly ``A_tp``; near ``0`` at its
  last row). Later detections in the same window earn nothing and cost nothing.
- A window with no detection costs ``A_fn``.
- A detection outside every window costs ``A_fp * S(p)`` with ``p = (row - end) / (width - 1)``
  measured from the end of the preceding window (``S`` is negative for ``p > 0``, near 0 just
  after a window and -1 beyond three window widths), or ``-A_fp`` when no window precedes it.
- Rows before the probation are not scored: detections there are ignored, and a window entirely
  inside it is left out (it neither earns nor costs anything).

Over a set of streams the raw scores are summed and normalised as NAB's runner does:
``100 * (raw - null) / (perfect - null)``, where the null detector (no detection) scores
``-A_fn`` per window and the perfect one (each window hit on its first row) ``A_tp`` per window.
A perfect detector scores 100, a silent one 0, and false alarms can take a detector below 0.

Two deliberate choices, both invisible on NAB's own data:

- NAB's runner counts every window of the label file for the perfect score, including windows
  inside the probation that its null score leaves out; here both count only the windows that reach
  the scored part, so that the scale stays 0..100 on any split (no window of the 27-stream
  development set reaches into the probation).
- NAB's sweeper divides by ``width - 1`` for a false positive after a one-row window (a
  ZeroDivisionError there); here such a window counts as two rows wide.

Which rows are detections is the caller's choice. NAB's published results count every row whose
anomaly score is over the detector's threshold; for a detector that holds an alarm over several
rows, :func:`onsets` gives the rows where an alarm starts (one page per episode), which is what
``bench/quality.py`` scores. Pure numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "STANDARD",
    "CostMatrix",
    "SetScore",
    "StreamScore",
    "normalise",
    "onsets",
    "probation_rows",
    "scaled_sigmoid",
    "score_set",
    "score_stream",
    "windows_from_labels",
]


@dataclass(frozen=True)
class CostMatrix:
    """The weights of a NAB profile: ``tp`` (A_tp), ``fp`` (A_fp) and ``fn`` (A_fn)."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0

    def __post_init__(self) -> None:
        """Reject weights that would flip a reward into a penalty or divide by zero."""
        if self.tp <= 0 or self.fn < 0 or self.fp < 0:
            raise ValueError(f"weights must be tp > 0, fn >= 0, fp >= 0, got {self}")


STANDARD = CostMatrix(tp=1.0, fp=0.11, fn=1.0)
"""NAB's standard profile (config/profiles.json): A_tp 1.0, A_fp 0.11, A_fn 1.0."""


def scaled_sigmoid(position: npt.ArrayLike) -> np.ndarray:
    """NAB's scaled sigmoid ``2 / (1 + exp(5 p)) - 1`` of relative positions ``p``; -1 past 3.

    ``S(-1) = 0.98661`` (a window's first row), ``S(-0.5) = 0.84828``, ``S(0) = 0`` (its end),
    ``S(1) = -0.98661`` (one window width after it), ``S(p) = -1`` for ``p > 3``
    (nab/sweeper.py ``scaledSigmoid``; an older sweeper had ``p >= 3``, NAB's published result
    files use ``p > 3``: a false positive exactly three widths on costs 0.99999994 A_fp).
    """
    p = np.asarray(position, dtype=np.float64)
    # exp overflows to inf for very large p, which gives exactly -1 as it should.
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * p)) - 1.0
    return np.where(p > 3.0, -1.0, value)


_MAX_TP = float(scaled_sigmoid(-1.0))


def probation_rows(rows: int, percent: float = 0.15, cap_rows: int = 5000) -> int:
    """NAB's probationary period: ``min(floor(percent * rows), percent * cap_rows)`` rows.

    With NAB's defaults that is 15 % of the stream, at most 750 rows.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if not 0 <= percent <= 1:
        raise ValueError(f"percent must be in [0, 1], got {percent}")
    return int(min(np.floor(percent * rows), np.floor(percent * cap_rows)))


def _rows(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def windows_from_labels(labels: npt.ArrayLike) -> list[tuple[int, int]]:
    """The windows of a 0/1 ``labels`` row array: its maximal runs of 1, as inclusive row ranges.

    Two windows that touch would merge into one run; give such windows explicitly instead.
    """
    array = _rows("labels", labels)
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        raise ValueError("labels must hold only 0 and 1")
    edges = np.diff(array.astype(np.int8), prepend=0, append=0)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def onsets(flags: npt.ArrayLike, start: int = 0) -> np.ndarray:
    """Rows at or after ``start`` where the 0/1 ``flags`` go from 0 to 1 (an alarm starts).

    ``flags`` is the whole stream, probation included, so an alarm already running when the
    scored part begins has its onset before ``start`` and is not returned. A flag on row 0 is an
    onset.
    """
    array = _rows("flags", flags)
    if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
        raise ValueError("flags must hold only 0 and 1")
    rising = np.flatnonzero(np.diff(array.astype(np.int8), prepend=0) == 1)
    return rising[rising >= start]


@dataclass(frozen=True)
class StreamScore:
    """One stream's NAB score: ``raw`` = ``tp_score - fn_cost - fp_cost``, with the counts.

    ``windows`` counts the scored windows (those reaching past the probation), ``detected`` those
    with a detection, ``false_positives`` the detections outside every window (each costing its
    share of ``fp_cost``).
    """

    raw: float
    tp_score: float
    fn_cost: float
    fp_cost: float
    windows: int
    detected: int
    false_positives: int


def _check_windows(windows: Sequence[tuple[int, int]], rows: int) -> np.ndarray:
    bounds = np.asarray(list(windows), dtype=np.int64).reshape(-1, 2)
    if len(bounds) and (
        np.any(bounds[:, 0] > bounds[:, 1]) or bounds.min() < 0 or bounds.max() >= rows
    ):
        raise ValueError(f"windows must be (start, end) row ranges inside 0..{rows - 1}")
    if np.any(bounds[1:, 0] <= bounds[:-1, 1]):
        raise ValueError("windows must be in time order and must not overlap")
    return bounds


def score_stream(
    windows: Sequence[tuple[int, int]],
    detections: npt.ArrayLike,
    rows: int,
    probation: int,
    costs: CostMatrix = STANDARD,
) -> StreamScore:
    """NAB's score of one stream (nab/sweeper.py ``calcSweepScore`` + ``calcScoreByThreshold``).

    ``windows`` are inclusive ``(start, end)`` row ranges in time order (see
    :func:`windows_from_labels`), ``detections`` the row indices of the detector's detections
    (any order, duplicates ignored), ``rows`` the stream's length and ``probation`` the first
    scored row (:func:`probation_rows`).
    """
    if not 0 <= probation <= rows:
        raise ValueError(f"probation {probation} outside 0..{rows}")
    bounds = _check_windows(windows, rows)
    found = np.unique(_rows("detections", detections).astype(np.int64))
    if len(found) and (found[0] < 0 or found[-1] >= rows):
        raise ValueError(f"detections must be row indices inside 0..{rows - 1}")
    found = found[found >= probation]

    tp_score = fn_cost = 0.0
    windows_scored = detected = 0
    inside = np.zeros(len(found), dtype=bool)
    for start, end in bounds:
        if end < probation:
            continue  # every row of it is probationary: NAB never scores it
        windows_scored += 1
        hits = (found >= max(start, probation)) & (found <= end)
        inside |= (found >= start) & (found <= end)
        if not hits.any():
            fn_cost += costs.fn
            continue
        detected += 1
        first = found[np.argmax(hits)]
        width = end - start + 1
        tp_score += costs.tp * float(scaled_sigmoid(-(end - first + 1) / width)) / _MAX_TP

    outside = found[~inside]
    fp_cost = 0.0
    if len(outside):
        # The window that ended most recently before each false positive (probation or not:
        # NAB's sweeper tracks it over every row).
        preceding = np.searchsorted(bounds[:, 1], outside, side="left") - 1
        position = np.full(len(outside), np.inf)  # no preceding window: S = -1
        has = preceding >= 0
        ends = bounds[preceding[has], 1]
        widths = bounds[preceding[has], 1] - bounds[preceding[has], 0] + 1
        position[has] = (outside[has] - ends) / np.maximum(widths - 1, 1)
        fp_cost = -float(np.sum(costs.fp * scaled_sigmoid(position)))
    return StreamScore(
        raw=tp_score - fn_cost - fp_cost,
        tp_score=tp_score,
        fn_cost=fn_cost,
        fp_cost=fp_cost,
        windows=windows_scored,
        detected=detected,
        false_positives=len(outside),
    )


def normalise(raw: float, null: float, perfect: float) -> float | None:
    """NAB's normalised score ``100 * (raw - null) / (perfect - null)``; ``None`` if undefined.

    It is undefined when ``perfect == null``: a set with no scored window, where only false
    positives can move the raw score.
    """
    if perfect == null:
        return None
    return 100.0 * (raw - null) / (perfect - null)


@dataclass(frozen=True)
class SetScore:
    """NAB's score of a set of streams: ``score`` (normalised, ``None`` without windows) and parts."""

    score: float | None
    raw: float
    null: float
    perfect: float
    windows: int
    detected: int
    false_positives: int
    streams: int

    def as_dict(self) -> dict[str, float | int | None]:
        """The figures as a JSON-ready dict (``nab_standard`` is the normalised score)."""
        return {
            "nab_standard": self.score,
            "nab_raw": self.raw,
            "nab_null": self.null,
            "nab_perfect": self.perfect,
            "nab_windows": self.windows,
            "nab_detected_windows": self.detected,
            "nab_false_positives": self.false_positives,
        }


def score_set(scores: Iterable[StreamScore], costs: CostMatrix = STANDARD) -> SetScore:
    """Sum per-stream scores and normalise them over the whole set, as NAB's runner does."""
    pooled = list(scores)
    windows = sum(s.windows for s in pooled)
    raw = float(sum(s.raw for s in pooled))
    null, perfect = -costs.fn * windows, costs.tp * windows
    return SetScore(
        score=normalise(raw, null, perfect),
        raw=raw,
        null=null,
        perfect=perfect,
        windows=windows,
        detected=sum(s.detected for s in pooled),
        false_positives=sum(s.false_positives for s in pooled),
        streams=len(pooled),
    )
