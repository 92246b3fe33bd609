"""A device's most recent scores: a fixed-size ring buffer (pure, no I/O).

What adaptation (:mod:`detector.core.adaptation`) and the likelihood
(:mod:`detector.core.likelihood`) remember of a device. Its content is a function of the last
``size`` values pushed only, so a replay that pushes those values again rebuilds it exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RecentScores"]


class RecentScores:
    """The last ``size`` values pushed, in no particular order."""

    __slots__ = ("_count", "_values")

    def __init__(self, size: int) -> None:
        self._values = np.empty(size, dtype=np.float64)
        self._count = 0

    @property
    def complete(self) -> bool:
        """Whether ``size`` values are in."""
        return self._count >= len(self._values)

    def __len__(self) -> int:
        """How many values are held (at most ``size``)."""
        return min(self._count, len(self._values))

    def push(self, value: float) -> None:
        """Remember ``value``, forgetting the oldest once ``size`` are held."""
        self._values[self._count % len(self._values)] = value
        self._count += 1

    def values(self) -> np.ndarray:
        """The held values (a view: read it before the next push)."""
        return self._values[: len(self)]
