"""Level rules: the one interface every step of a judge's threshold chain has (pure, no I/O).

A window is judged against a *level*: the artifact's threshold, passed down a chain of rules,
each giving the level from the one the rules before it gave (calibration or the likelihood set
a device's own level, adaptation multiplies it), then the alert rule
(:mod:`detector.core.alerts`) turns the verdicts into transitions. A rule is a small frozen
object holding its parameters; what it knows of each device lives in a per-device state it
creates (:meth:`LevelRule.new_state`), so that a judge can hold any chain and forget a device in
one call. The chain is composed in one place, :meth:`LevelRules.chain`.

A rule sees a device's windows of a call as a :class:`Windows` view: the device id, the scores,
and, when the caller has them, each window's time span and inputs; so a rule on the inputs or
on event time fits the same interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import numpy as np

from detector.core.likelihood import ScorePrior

if TYPE_CHECKING:
    from detector.core.adaptation import AdaptationRule
    from detector.core.calibration import CalibrationRule
    from detector.core.extremes import ExtremeRule
    from detector.core.likelihood import LikelihoodRule

__all__ = ["JudgeLevels", "LevelRule", "LevelRules", "Windows"]

State = TypeVar("State")


@dataclass(frozen=True)
class JudgeLevels:
    """What judging a model's scores needs from its artifact."""

    threshold: float  # the artifact's threshold: the level the chain starts from
    reference_score: float  # the validation windows' median score
    prior: ScorePrior  # the validation log-scores' location and scale
    error_share: float = math.nan  # validation error / the data's variance (NaN: not recorded)
    # Each sensor's least and greatest training reading (None: not recorded).
    input_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None


class Windows(NamedTuple):
    """One device's windows of a judge call, in order: what a :class:`LevelRule` judges.

    ``rows`` are the windows' rows in the call; ``batch_spans`` and ``batch_inputs`` are the
    whole call's (read through :attr:`spans` and :attr:`inputs`), so building the view copies
    nothing a rule does not ask for. A tuple: one is built per device and call, on the hot path.
    A rule reads it during the call only: the judge refills one view window by window.
    """

    device_id: str
    scores: list[float]
    rows: list[int]
    batch_spans: Sequence[tuple[float, float]] | None = None
    batch_inputs: np.ndarray | None = None

    @property
    def spans(self) -> list[tuple[float, float]] | None:
        """Each window's event time (first reading, last reading), when the caller gave them."""
        spans = self.batch_spans
        return None if spans is None else [spans[row] for row in self.rows]

    @property
    def inputs(self) -> np.ndarray | None:
        """The windows' values, shape (windows, length, features), when the caller gave them."""
        inputs = self.batch_inputs
        return None if inputs is None else inputs[self.rows]


class LevelRule(Protocol[State]):
    """One step of the chain: the level a device's windows are judged by, from the previous one.

    A rule judges a device's windows of a call as a run (one call per device, not per window).
    What it learns from a window's score alone it learns in :meth:`levels`, each window after
    its own level is set (a level never judges a window it learned). What it learns from the
    verdicts (over the level, the device firing) it learns in :meth:`learn_judged`, after the
    alert rule; such a rule sets :attr:`learns_judged`, and the judge then hands it one window
    at a time, since the next window's level depends on this one's verdict.
    """

    @property
    def learns_judged(self) -> bool:
        """Whether :meth:`learn_judged` learns anything (the judge then goes window by window)."""
        ...

    @property
    def remembers_history(self) -> bool:
        """Whether the state is rebuilt from the device's recent scores (a replay restores it)."""
        ...

    def new_state(self, levels: JudgeLevels) -> State:
        """A device's state when it first meets this rule under a model with ``levels``."""
        ...

    def levels(self, state: State, windows: Windows, previous: list[float]) -> list[float]:
        """The levels ``windows`` are judged by, given those the rules before gave (in order)."""
        ...

    def learn_judged(
        self,
        state: State,
        windows: Windows,
        levels: list[float],
        over: list[bool],
        firing: list[bool],
    ) -> None:
        """Learn from judged windows: their final levels, whether each was over it, and whether
        the device fires once each is judged."""
        ...

    def complete(self, state: State) -> bool:
        """Whether the device's state is its own (enough scores in), not a starting guess."""
        ...


@dataclass(frozen=True)
class LevelRules:
    """The level rules a fleet is configured with; :meth:`chain` picks those a model uses."""

    calibration: CalibrationRule | None = None
    likelihood: LikelihoodRule | None = None
    adaptation: AdaptationRule | None = None
    extremes: ExtremeRule | None = None

    def chain(self, levels: JudgeLevels) -> tuple[LevelRule[Any], ...]:
        """The rules a model's windows go through, in order: the one place the chain is written.

        The likelihood, when it applies to the model (:meth:`LikelihoodRule.applies_to`), sets
        the device's level (instead of the artifact's threshold, or the higher of the two);
        otherwise calibration does, when on. Adaptation then multiplies either. Last, a window
        whose newest reading is a new extreme of its device's range is over whatever its level
        (:mod:`detector.core.extremes`).
        """
        likelihood = self.likelihood
        if likelihood is not None and likelihood.applies_to(levels.error_share):
            own_level: LevelRule[Any] | None = likelihood
        else:
            own_level = self.calibration
        rules = (own_level, self.adaptation, self.extremes)
        return tuple(rule for rule in rules if rule is not None)
