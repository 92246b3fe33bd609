"""A device's most recent scores: a fixed-size ring buffer with its order statistics (pure, no I/O).

What adaptation (:mod:`detector.core.adaptation`) and the likelihood
(:mod:`detector.core.likelihood`) remember of a device. Besides the ring, the held values are
kept sorted, updated per push (a binary search and a move of at most ``size`` floats), so a
median or a quantile is read in constant time instead of partitioning ``size`` values every
window. Both are ``array('d')``, grown as values come: at most ``2 x size`` floats per device, no
Python object per value.

Its content is a function of the last ``size`` values pushed only, so a replay that pushes those
values again rebuilds it exactly: the sorted values hold each zero unsigned, so which of ``0.0``
and ``-0.0`` an eviction removes makes no difference.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, insort
from collections.abc import Sequence

import numpy as np

__all__ = ["RecentScores"]


class RecentScores:
    """The last ``size`` values pushed, and their order statistics.

    NaN ranks above every number (``+inf`` included), as in ``np.sort`` and ``np.partition``.
    """

    __slots__ = ("_count", "_nans", "_ring", "_size", "_sorted")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("RecentScores size must be >= 1")
        self._size = size
        # Grown as values come: a device that never fills it (most, in a big fleet's first
        # minutes) holds only what it pushed.
        self._ring = array("d")
        # The held values that are not NaN, ascending; NaNs are only counted (they do not
        # compare, so a binary search cannot place them).
        self._sorted = array("d")
        self._nans = 0
        self._count = 0

    @property
    def complete(self) -> bool:
        """Whether ``size`` values are in."""
        return self._count >= self._size

    def __len__(self) -> int:
        """How many values are held (at most ``size``)."""
        return min(self._count, self._size)

    def push(self, value: float) -> None:
        """Remember ``value``, forgetting the oldest once ``size`` are held."""
        ring = self._ring
        if self._count < self._size:
            ring.append(value)
        else:
            at = self._count % self._size
            oldest = ring[at]
            if oldest == oldest:
                # bisect_left finds an equal value; any equal one will do (zeros are unsigned).
                del self._sorted[bisect_left(self._sorted, oldest)]
            else:
                self._nans -= 1
            ring[at] = value
        if value == value:
            insort(self._sorted, value + 0.0)  # + 0.0 turns -0.0 into 0.0
        else:
            self._nans += 1
        self._count += 1

    def slide(self, values: Sequence[float]) -> list[float]:
        """Push each of ``values`` in turn into the full buffer; the median before each push.

        What :meth:`median` then :meth:`push` give per value, in one call: a batch of windows
        pays one call instead of several per value. Needs :attr:`complete`.
        """
        ring, ordered = self._ring, self._sorted
        size = self._size
        count, nans = self._count, self._nans
        if count < size:
            raise ValueError("slide needs a full buffer")
        # Full, the held count is always size: the median's ranks are fixed; a rank past the
        # numbers is a NaN (ranked last), as in ranked().
        middle = size // 2
        odd = size % 2
        medians = []
        append = medians.append
        nan = math.nan
        for value in values:
            numbers = size - nans
            upper = ordered[middle] if middle < numbers else nan
            if odd:
                append(upper)
            else:
                append(((ordered[middle - 1] if middle - 1 < numbers else nan) + upper) / 2)
            at = count % size
            oldest = ring[at]
            if oldest == oldest:
                del ordered[bisect_left(ordered, oldest)]
            else:
                nans -= 1
            ring[at] = value
            if value == value:
                insort(ordered, value + 0.0)
            else:
                nans += 1
            count += 1
        self._count, self._nans = count, nans
        return medians

    @property
    def size(self) -> int:
        """How many values are held once complete."""
        return self._size

    def values(self) -> np.ndarray:
        """The held values, in no particular order (a copy)."""
        # A copy: a view would stop the ring from growing (BufferError) while anyone held it.
        return np.array(self._ring, dtype=np.float64)

    def ranked(self, rank: int) -> float:
        """The held value at ``rank`` in ascending order (0: the smallest), NaN ranked last.

        What ``np.partition(values(), rank)[rank]`` gives, without touching the other values.
        """
        ordered = self._sorted
        if 0 <= rank < len(ordered):
            return ordered[rank]
        if 0 <= rank < len(ordered) + self._nans:
            return math.nan
        raise IndexError(f"rank {rank} outside 0..{len(self) - 1}")

    def median(self) -> float:
        """The median of the held values: ``np.median(values())`` when none is NaN.

        With NaNs held it is the median with NaN ranked last, as adaptation's partition gave it,
        not NaN: a rare NaN score moves the median by one rank instead of turning a device's
        threshold into NaN (never over) until the score is evicted.
        """
        count = len(self._sorted) + self._nans
        if count == 0:
            raise ValueError("the median of no values")
        middle = count // 2
        if count % 2:
            return self.ranked(middle)
        return (self.ranked(middle - 1) + self.ranked(middle)) / 2
