"""Per-device score likelihood: how unusual a window's score is for *this* device (pure, no I/O).

One model's scores differ by orders of magnitude between devices, and a threshold fitted on a
few validation windows can blind one device (set far above anything it scores) and deafen
another (set inside its normal noise). Here each device's window scores are judged against the
distribution of its own recent scores, in log space, where reconstruction errors are close to
symmetric:

    m = median of the last ``windows`` log-scores
    s = m - their 16th percentile            (the lower half's spread: anomalies raise scores,
                                              so they barely move it)
    tail probability of a score x:  p = 1 - Phi((ln x - m) / s)

A window is *over* when ``p < tail``, that is when ``x > exp(m + z * s)`` with
``z = Phi^-1(1 - tail)``: the level is an ordinary threshold, per device and moving, so the
alert rule, the alert messages and the plots need nothing new.

A new device has no history yet: its statistics are blended with the model's validation scores
(:class:`ScorePrior`), which count as ``prior_windows`` windows at first and fade to nothing as
the history fills, so a device is judged from its first window and is its own reference once
``windows`` scores are in. ``s`` is at least
``min_scale`` (a device whose scores never vary would otherwise alarm on rounding noise).

``min_error_share`` > 0 keeps the likelihood for models that learned little: those whose
validation error is at least that share of the data's variance (1: the model reconstructs a
window no better than the sensors' means would), whose scores are closer to the input's energy
than to a reconstruction error; other models are judged as without it.

``learn`` says which windows join the history: ``all`` (a fault that lasts is learned as the
new normal after about ``windows / 2`` windows, like NAB's likelihood) or ``calm`` (only windows
under the level while the device is not firing: a fault is never learned, nor is a new normal).

The state is the last ``windows`` log-scores the device learned (a ring buffer, kept sorted as
well so that the median and the quantile are read per window without sorting) and a count, so
with ``learn: all`` a replay that re-scores that many windows rebuilds it exactly, as after a
partition handover; with ``calm`` exactly when those windows were calm (a replay of the device's
whole history always rebuilds it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, ClassVar, Literal

from detector.core.recent import RecentScores

if TYPE_CHECKING:
    from detector.core.rules import JudgeLevels, Windows

__all__ = ["CombinePolicy", "DeviceLikelihood", "LearnPolicy", "LikelihoodRule", "ScorePrior"]

# Which windows join a device's history: every one, or only those judged normal while the
# device was not firing (a long fault is then never learned as the device's normal).
LearnPolicy = Literal["all", "calm"]
# How the device's level and the model's threshold combine: the device's level alone, or the
# higher of the two (over only when both agree).
CombinePolicy = Literal["replace", "max"]

# ln of the smallest score taken as is: a perfect reconstruction (score 0) is not -inf.
_LOG_FLOOR = math.log(1e-30)


@dataclass(frozen=True)
class ScorePrior:
    """Location and scale of a model's validation log-scores: a new device's reference."""

    location: float
    scale: float

    @classmethod
    def from_validation(
        cls, summary: Mapping[str, float], decile_edges: Sequence[float] | None = None
    ) -> ScorePrior:
        """From an artifact's ``threshold.error_summary`` and, when it has them, score deciles.

        With deciles the scale is the lower half's spread, as for a device's own history
        (``(ln p50 - ln p10) / 1.28``); without, the upper half's (``ln p90 - ln p50``).
        """
        median = max(float(summary.get("p50", 0.0)), 1e-30)
        location = math.log(median)
        z90 = NormalDist().inv_cdf(0.9)
        if decile_edges is not None and len(decile_edges) == 9:
            spread = location - math.log(max(float(decile_edges[0]), 1e-30))
        else:
            spread = math.log(max(float(summary.get("p90", median)), 1e-30)) - location
        return cls(location, max(spread / z90, 0.0))


@dataclass(frozen=True)
class LikelihoodRule:
    """How much history a device keeps and how small a tail probability raises an alarm.

    A level rule (:class:`~detector.core.rules.LevelRule`): the device's level replaces the
    previous one or is combined with it (``combine``). Its defaults are the configuration's
    (:class:`~detector.config.LikelihoodConfig` reads them from here).
    """

    # Rebuilt from the device's last ``windows`` scores: a replay restores it.
    remembers_history: ClassVar[bool] = True

    windows: int = 1000
    tail: float = 1e-3
    prior_windows: int = 100
    min_scale: float = 0.05
    learn: LearnPolicy = "all"
    combine: CombinePolicy = "max"
    # About one standard deviation below the median (the normal's 16th percentile).
    spread_quantile: float = 0.16
    min_error_share: float = 1.0

    def __post_init__(self) -> None:
        if self.learn not in ("all", "calm"):
            raise ValueError("likelihood learn must be 'all' or 'calm'")
        if self.combine not in ("replace", "max"):
            raise ValueError("likelihood combine must be 'replace' or 'max'")
        if not 0.0 < self.spread_quantile < 1.0 or abs(self.spread_quantile - 0.5) < 0.05:
            raise ValueError("likelihood spread_quantile must be in (0, 1), away from 0.5")
        if self.windows < 10:
            raise ValueError("likelihood windows must be >= 10")
        if not 0.0 < self.tail < 0.5:
            raise ValueError("likelihood tail must be in (0, 0.5)")
        if self.prior_windows < 1:
            raise ValueError("likelihood prior_windows must be >= 1")
        if self.min_scale <= 0.0:
            raise ValueError("likelihood min_scale must be > 0")
        if not self.min_error_share >= 0.0:
            raise ValueError("likelihood min_error_share must be >= 0")

    def applies_to(self, error_share: float) -> bool:
        """Whether a model whose validation error is ``error_share`` of the data's variance is
        judged with the likelihood (NaN, unknown: only when ``min_error_share`` is 0)."""
        return self.min_error_share <= 0.0 or error_share >= self.min_error_share

    @property
    def spread_z(self) -> float:
        """Standard deviations between the median and ``spread_quantile``."""
        return abs(NormalDist().inv_cdf(self.spread_quantile))

    @property
    def z(self) -> float:
        """Standard deviations above the median where the tail probability is ``tail``."""
        return NormalDist().inv_cdf(1.0 - self.tail)

    @property
    def learns_judged(self) -> bool:
        """``learn: calm`` learns a window only once the alert rule has judged it."""
        return self.learn == "calm"

    def new_state(self, levels: JudgeLevels) -> DeviceLikelihood:
        """A new device's history: empty, the model's validation scores as its prior."""
        return DeviceLikelihood(self, levels.prior)

    def levels(
        self, state: DeviceLikelihood, windows: Windows, previous: list[float]
    ) -> list[float]:
        """The device's level per window, or the higher of it and ``previous`` (``max``).

        With ``learn: all`` each score joins the history right after its window's level is set.
        """
        replace = self.combine == "replace"
        learn_all = self.learn == "all"
        scores = windows.scores
        if len(scores) == 1:  # one window (judge, or learning calm windows): no run to set up
            level = state.level()
            if learn_all:
                state.remember(scores[0])
            return [level if replace else max(level, previous[0])]
        level_of, remember = state.level, state.remember
        levels = []
        for score, before in zip(scores, previous, strict=True):
            level = level_of()
            levels.append(level if replace else max(level, before))
            if learn_all:
                remember(score)
        return levels

    def learn_judged(
        self,
        state: DeviceLikelihood,
        windows: Windows,
        levels: list[float],
        over: list[bool],
        firing: list[bool],
    ) -> None:
        """``learn: calm``: remember the windows under the level while the device is not firing."""
        if self.learn != "calm":
            return
        scores = windows.scores
        if len(scores) == 1:  # the judge hands a rule learning from verdicts one window
            if not (firing[0] or over[0]):
                state.remember(scores[0])
            return
        for score, is_over, is_firing in zip(scores, over, firing, strict=True):
            if not (is_firing or is_over):
                state.remember(score)

    def complete(self, state: DeviceLikelihood) -> bool:
        """Whether the device's history is full (its own, the prior faded)."""
        return state.complete


@dataclass
class DeviceLikelihood:
    """One device's recent log-scores (a ring buffer) and the level they set."""

    rule: LikelihoodRule
    prior: ScorePrior
    _recent: RecentScores = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._recent = RecentScores(self.rule.windows)

    @property
    def complete(self) -> bool:
        """Whether ``windows`` scores are in, so that the history is the device's own."""
        return self._recent.complete

    def statistics(self) -> tuple[float, float]:
        """``(m, s)``: the log-score location and scale the next window is judged by."""
        rule, prior = self.rule, self.prior
        seen = len(self._recent)
        if seen < 2:
            location, scale = prior.location, prior.scale
        else:
            recent = self._recent
            # Nearest ranks, not interpolated: the lower median and the rounded quantile rank.
            own_location = recent.ranked((seen - 1) // 2)
            spread = recent.ranked(round(rule.spread_quantile * (seen - 1)))
            own_scale = abs(spread - own_location) / rule.spread_z
            # The prior's weight fades as the history fills: a complete history is all the
            # device's own, whatever the model's validation scores were.
            prior_weight = rule.prior_windows * (1.0 - seen / rule.windows)
            weight = seen / (seen + prior_weight)
            location = prior.location + weight * (own_location - prior.location)
            scale = prior.scale + weight * (own_scale - prior.scale)
        return location, max(scale, rule.min_scale)

    def level(self) -> float:
        """The score over which the next window's tail probability is below ``tail``."""
        location, scale = self.statistics()
        return math.exp(min(location + self.rule.z * scale, 700.0))

    def tail_probability(self, score: float) -> float:
        """How likely a score at least this high is under the device's history."""
        location, scale = self.statistics()
        return 1.0 - NormalDist().cdf((_log(score) - location) / scale)

    def remember(self, score: float) -> None:
        """Add a judged window's score to the history (after judging it: never its own bar)."""
        self._recent.push(_log(score))


def _log(score: float) -> float:
    return max(math.log(score), _LOG_FLOOR) if score > 0.0 else _LOG_FLOOR
