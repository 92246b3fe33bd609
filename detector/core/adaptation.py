"""Adaptation to a moving normal: a pure core (no I/O) shared by the daemon and ``evaluate``.

A device whose normal level shifts and stays would otherwise page for as long as it runs. With
adaptation on, each device keeps its last ``windows`` scores, and its threshold is scaled by how
far the median of them sits above the median the model scored on its own validation windows:

    threshold = base x clip(median(recent) / validation median, 1, max_ratio)

A sudden change still pages, since the median of many recent windows moves only once about half
of them are elevated; a new steady state stops paging after about ``windows / 2`` windows. The
factor never goes below 1 (a quiet device is not made more sensitive) nor above ``max_ratio`` (a
device that breaks for good does not silence itself completely).

The state is bounded (``2 x windows`` floats per device: the scores and the same sorted, whose
median is read per window without sorting) and is a function of the device's last ``windows``
scores only, so a replay that re-scores that many windows rebuilds it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from detector.core.recent import RecentScores

if TYPE_CHECKING:
    from detector.core.rules import JudgeLevels, Windows

__all__ = ["AdaptationRule", "DeviceAdaptation"]


@dataclass(frozen=True)
class AdaptationRule:
    """How many recent scores a device remembers and how far its threshold may be raised.

    A level rule (:class:`~detector.core.rules.LevelRule`) that multiplies the previous level.
    Its defaults are the configuration's (:class:`~detector.config.AdaptationConfig` reads them).
    """

    # The factor is a function of the device's last ``windows`` scores: a replay restores it.
    remembers_history: ClassVar[bool] = True
    # It learns every score, whatever the verdict.
    learns_judged: ClassVar[bool] = False

    windows: int = 1000
    max_ratio: float = 10.0

    def __post_init__(self) -> None:
        if self.windows < 2:
            raise ValueError("adaptation windows must be >= 2")
        if self.max_ratio < 1.0:
            raise ValueError("adaptation max_ratio must be >= 1")

    def new_state(self, levels: JudgeLevels) -> DeviceAdaptation:
        """A new device's recent scores (none), against the model's validation median."""
        return DeviceAdaptation(self, levels.reference_score)

    def levels(
        self, state: DeviceAdaptation, windows: Windows, previous: list[float]
    ) -> list[float]:
        """``previous`` times each window's factor; each score joins the recent ones after."""
        scores = windows.scores
        if len(scores) == 1:  # one window (judge, or a rule learning from verdicts): no run
            return [previous[0] * state.observe(scores[0])]
        factors = state.observe_many(scores)
        return [level * factor for level, factor in zip(previous, factors, strict=True)]

    def learn_judged(
        self,
        state: DeviceAdaptation,
        windows: Windows,
        levels: list[float],
        over: list[bool],
        firing: list[bool],
    ) -> None:
        """Nothing: the scores were learned as the levels were set."""

    def complete(self, state: DeviceAdaptation) -> bool:
        """Whether ``windows`` scores are in, so that the factor is the device's own."""
        return state.complete


@dataclass
class DeviceAdaptation:
    """One device's recent scores and the factor they give its threshold."""

    rule: AdaptationRule
    reference: float  # the validation windows' median score
    _recent: RecentScores = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._recent = RecentScores(self.rule.windows)

    @property
    def complete(self) -> bool:
        """Whether ``windows`` scores are in, so that the factor is the device's own."""
        return self._recent.complete

    def factor(self) -> float:
        """What the device's threshold is multiplied by now: 1 until ``windows`` scores are in."""
        if not self.complete or self.reference <= 0.0:
            return 1.0
        ratio = self._recent.median() / self.reference
        return min(max(ratio, 1.0), self.rule.max_ratio)

    def observe(self, score: float) -> float:
        """The factor to judge this window by, then remember its score.

        A window is judged before it joins the recent scores, so it never raises its own bar.
        """
        factor = self.factor()
        self._recent.push(score)
        return factor

    def observe_many(self, scores: Sequence[float]) -> list[float]:
        """:meth:`observe` for each of ``scores`` in turn: the factor each window is judged by."""
        recent = self._recent
        filling = min(len(scores), recent.size - len(recent))
        for score in scores[:filling]:
            recent.push(score)
        factors = [1.0] * filling
        if filling == len(scores):
            return factors
        medians = recent.slide(scores[filling:])
        reference, max_ratio = self.reference, self.rule.max_ratio
        if reference <= 0.0:
            factors.extend([1.0] * len(medians))
        else:
            factors.extend([min(max(m / reference, 1.0), max_ratio) for m in medians])
        return factors
