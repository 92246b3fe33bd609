"""A new extreme on the inputs: a level rule that reads the window's readings (pure, no I/O).

Numenta HTM's "spatial" rule: a reading further outside the range its device has shown so far
than ``margin`` x that range is anomalous, whatever the model makes of it. A reconstruction
model that learned little (its score close to the input's energy) misses a level the device has
never reached when it resembles a spike it has seen; the range catches it at the first reading.

The range is each sensor's minimum and maximum over the model's training data (when the
artifact records it) and the newest reading of every window the device has had judged; without
a training range, the device's first ``windows`` only build it. A window whose newest reading lies
outside it by more than the margin on any sensor is judged at half its own score at most: over
by construction (an alert's severity then reads at least 2). Its reading then widens the range, so a new
level pages once, not for as long as it lasts. Windows judged without their readings (a caller
that has none) pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from detector.core.rules import JudgeLevels, Windows

__all__ = ["DeviceRange", "ExtremeRule"]


@dataclass(frozen=True)
class ExtremeRule:
    """How many windows build a device's range before it judges, and how far past it pages.

    A level rule (:class:`~detector.core.rules.LevelRule`), last in the chain. Its defaults are
    the configuration's (:class:`~detector.config.ExtremesConfig` reads them).
    """

    # The range is the device's whole history: a replay of its last windows rebuilds only part,
    # which can only narrow it (one more page at most), so no replay is asked for.
    remembers_history: ClassVar[bool] = False
    learns_judged: ClassVar[bool] = False

    windows: int = 100
    margin: float = 0.05

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError("extremes windows must be >= 1")
        if self.margin < 0.0:
            raise ValueError("extremes margin must be >= 0")

    def new_state(self, levels: JudgeLevels) -> DeviceRange:
        """A new device's range: the model's training range, already built, when the artifact
        records one; else empty, built by the device's first ``windows``."""
        if levels.input_range is None:
            return DeviceRange()
        low, high = levels.input_range
        return DeviceRange(
            self.windows, np.array(low, dtype=np.float64), np.array(high, dtype=np.float64)
        )

    def levels(self, state: DeviceRange, windows: Windows, previous: list[float]) -> list[float]:
        """``previous``, but at most half the score for a window whose newest reading is a new
        extreme (a level already lower stays: such a window was over anyway)."""
        inputs = windows.inputs
        if inputs is None or not len(inputs):
            return previous
        newest = np.asarray(inputs[:, -1, :], dtype=np.float64)
        extreme = state.judge(newest, self.windows, self.margin)
        scores = windows.scores
        return [
            min(level, scores[i] / 2.0) if extreme[i] and scores[i] > 0.0 else level
            for i, level in enumerate(previous)
        ]

    def learn_judged(
        self,
        state: DeviceRange,
        windows: Windows,
        levels: list[float],
        over: list[bool],
        firing: list[bool],
    ) -> None:
        """Nothing: the range grew as the levels were set."""

    def complete(self, state: DeviceRange) -> bool:
        """Whether ``windows`` readings have built the range."""
        return state.seen >= self.windows


@dataclass
class DeviceRange:
    """Each sensor's least and greatest newest reading over a device's judged windows."""

    seen: int = 0
    low: np.ndarray | None = field(default=None, repr=False)
    high: np.ndarray | None = field(default=None, repr=False)

    def judge(self, newest: np.ndarray, windows: int, margin: float) -> np.ndarray:
        """For each row of ``newest`` (windows x sensors, in order): is it a new extreme of the
        range built by the rows before it (once ``windows`` have built it)? Then widen it."""
        count = len(newest)
        if self.low is None or self.high is None:
            self.low = np.full(newest.shape[1], np.inf)
            self.high = np.full(newest.shape[1], -np.inf)
        # The range each row is judged by: the state's, widened by the rows before it.
        low = np.minimum.accumulate(np.vstack([self.low, newest]), axis=0)[:-1]
        high = np.maximum.accumulate(np.vstack([self.high, newest]), axis=0)[:-1]
        with np.errstate(invalid="ignore"):  # 0 x inf before the first reading: not judged
            reach = margin * (high - low)
            outside = ((newest > high + reach) | (newest < low - reach)).any(axis=1)
        built = self.seen + np.arange(count) >= windows
        self.low = np.minimum(low[-1], newest[-1])
        self.high = np.maximum(high[-1], newest[-1])
        self.seen += count
        return outside & built
