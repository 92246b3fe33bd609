"""Drift watch: how far recent live window scores have moved from the model's validation scores.

The trainer stores the validation scores' distribution in the artifact as bins
(:func:`reference_distribution`: edges at the deciles, the share of scores in each). The daemon
keeps the bin of each of the last ``windows`` live scores in a ring buffer and reports the
population stability index between the two::

    PSI = sum over bins of (live share - reference share) * ln(live share / reference share)

A PSI under 0.1 is the usual "no change", over 0.25 a "significant shift". Memory is one byte
per remembered score, whatever the traffic; updates are O(batch). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["DRIFT_BINS", "DriftMonitor", "reference_distribution"]

DRIFT_BINS = 10
# An empty bin's share counts as this much: ln(0) would make a single empty bin infinite.
_MIN_SHARE = 1e-4


def reference_distribution(
    scores: np.ndarray, bins: int = DRIFT_BINS
) -> tuple[list[float], list[float]]:
    """(interior edges, shares) of ``scores`` in ``bins`` bins cut at its quantiles.

    Bin ``i`` holds scores in ``(edges[i-1], edges[i]]``; the first and last are open-ended.
    Tied quantiles (a model scoring many windows alike) merge into one edge, so there may be
    fewer bins than asked for; the shares are those actually observed.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("reference scores must be a non-empty array of finite values")
    if bins < 2:
        raise ValueError("need at least 2 bins")
    edges = np.unique(np.quantile(scores, np.arange(1, bins) / bins))
    counts = np.bincount(np.searchsorted(edges, scores, side="left"), minlength=len(edges) + 1)
    return edges.tolist(), (counts / scores.size).tolist()


class DriftMonitor:
    """PSI of the last ``windows`` scores observed against a reference distribution."""

    def __init__(
        self,
        edges: Sequence[float],
        shares: Sequence[float],
        windows: int,
        min_windows: int,
    ) -> None:
        if len(shares) != len(edges) + 1 or len(shares) > 255:
            raise ValueError("need one more share than edges, and at most 255 bins")
        if not 1 <= min_windows <= windows:
            raise ValueError("need 1 <= min_windows <= windows")
        self.edges = np.asarray(edges, dtype=np.float64)
        self.reference = np.maximum(np.asarray(shares, dtype=np.float64), _MIN_SHARE)
        self.windows = windows
        self.min_windows = min_windows
        self._bins = np.zeros(windows, dtype=np.uint8)
        self._counts = np.zeros(len(shares), dtype=np.int64)
        self._next = 0
        self._filled = 0

    def __len__(self) -> int:
        return self._filled

    def observe(self, scores: np.ndarray) -> None:
        """Remember the bins of ``scores`` (in order), forgetting the oldest beyond ``windows``."""
        scores = np.asarray(scores, dtype=np.float64)
        scores = scores[~np.isnan(scores)]
        if scores.size > self.windows:
            scores = scores[-self.windows :]
        count = scores.size
        if count == 0:
            return
        bins = np.searchsorted(self.edges, scores, side="left").astype(np.uint8)
        positions = (self._next + np.arange(count)) % self.windows
        if self._filled == self.windows:
            self._counts -= np.bincount(self._bins[positions], minlength=len(self._counts))
        else:
            overwritten = max(self._filled + count - self.windows, 0)
            if overwritten:
                # The ring wraps within this batch: the oldest ``overwritten`` slots go.
                old = positions[count - overwritten :]
                self._counts -= np.bincount(self._bins[old], minlength=len(self._counts))
            self._filled = min(self._filled + count, self.windows)
        self._bins[positions] = bins
        self._counts += np.bincount(bins, minlength=len(self._counts))
        self._next = int((self._next + count) % self.windows)

    def psi(self) -> float:
        """The population stability index; NaN until ``min_windows`` scores are in."""
        if self._filled < self.min_windows:
            return math.nan
        live = np.maximum(self._counts / self._filled, _MIN_SHARE)
        return float(np.sum((live - self.reference) * np.log(live / self.reference)))

    def reset(self) -> None:
        """Forget every score (a new model: its scores are not comparable with the old one's)."""
        self._counts[:] = 0
        self._next = 0
        self._filled = 0
