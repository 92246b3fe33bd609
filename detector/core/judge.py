"""Scores to alert transitions: each device's level, then the alert rule (pure, no I/O).

A window is judged against a level: the artifact's threshold, passed down the model's chain of
level rules (:mod:`detector.core.rules`, composed in :meth:`LevelRules.chain`): calibration
(:mod:`detector.core.calibration`) or, when it applies to the model, the likelihood
(:mod:`detector.core.likelihood`) set the device's own level, adaptation
(:mod:`detector.core.adaptation`) multiplies it. The alert rule (:mod:`detector.core.alerts`)
turns the verdicts into ``firing`` and ``resolved`` transitions. The daemon and ``detector
evaluate`` both judge through a :class:`Judge`, so the offline backtest gives the alerts the
daemon would publish.

All per-device decision state lives in one :class:`DeviceJudgement`, so forgetting a device is
one call.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from detector.core.adaptation import AdaptationRule
from detector.core.alerts import AlertRule, AlertState, DeviceAlertState
from detector.core.artifact import ArtifactMetadata
from detector.core.calibration import CalibrationRule
from detector.core.extremes import ExtremeRule
from detector.core.likelihood import LikelihoodRule, ScorePrior
from detector.core.rules import JudgeLevels, LevelRule, LevelRules, Windows

__all__ = ["DeviceJudgement", "Judge", "JudgeLevels", "Judgements", "judge_levels"]


def judge_levels(metadata: ArtifactMetadata) -> JudgeLevels:
    """A model's threshold, median validation score and log-score prior, from its metadata."""
    threshold = metadata.threshold
    distribution = metadata.score_distribution
    edges = distribution.edges if distribution is not None else None
    return JudgeLevels(
        threshold.value,
        threshold.error_summary.get("p50", 0.0),
        ScorePrior.from_validation(threshold.error_summary, edges),
        metadata.validation.get("validation_error_share", math.nan),
        _input_range(metadata),
    )


def _input_range(metadata: ArtifactMetadata) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    recorded = metadata.input_range
    return None if recorded is None else (tuple(recorded.low), tuple(recorded.high))


def _flat_prior(reference_score: float) -> ScorePrior:
    """A prior with only a location (the likelihood's ``min_scale`` then sets the scale)."""
    return ScorePrior.from_validation({"p50": reference_score})


@dataclass(slots=True)
class DeviceJudgement:
    """One device's decision state: its alert-rule position and each level rule's state."""

    alert: DeviceAlertState = field(default_factory=DeviceAlertState)
    # One per rule of the judge's chain, in order; None until the device is judged under the
    # current model (a new model's chain starts every device afresh).
    states: tuple[Any, ...] | None = None


class Judgements(NamedTuple):
    """A batch of windows judged (:meth:`Judge.judge_many`): row ``i`` is window ``i``."""

    thresholds: np.ndarray  # float64: the level each window was judged by
    transitions: list[tuple[int, AlertState]]  # (row, transition), in row order
    firing: np.ndarray  # bool: whether the window's device fires once it is judged


# The one row of a window judged on its own, in DeviceAlertState.advance's lists.
_FIRST = (0,)


class _Verdicts(NamedTuple):
    """Per row of a call: over the level, clear of the resolve level, firing once judged."""

    over: list[bool]
    clear: list[bool]
    firing: list[bool]


def _learners(chain: Sequence[LevelRule[Any]]) -> tuple[int, ...]:
    """Where in ``chain`` the rules that learn from verdicts are."""
    return tuple(at for at, rule in enumerate(chain) if rule.learns_judged)


def _through(
    steps: Sequence[tuple[LevelRule[Any], Any]], windows: Windows, levels: list[float]
) -> list[float]:
    """The levels ``windows`` are judged by: ``levels`` (the artifact's threshold, per window)
    through each rule of the chain in turn (``steps``: the rules with the device's states).
    The one place a chain is applied. Rules return new lists: ``levels`` is not changed."""
    for rule, state in steps:
        levels = rule.levels(state, windows, levels)
    return levels


class Judge:
    """Per-device levels and alert-rule state for a fleet scored by one model.

    Holds the model's chain of level rules (:attr:`chain`) and the alert rule; both
    :meth:`judge` and :meth:`judge_many` go through :func:`_through` (the chain) and
    :meth:`DeviceAlertState.advance` (the alert rule), the one copy of each.
    """

    def __init__(
        self,
        rule: AlertRule,
        threshold: float,
        calibration: CalibrationRule | None = None,
        adaptation: AdaptationRule | None = None,
        reference_score: float = 0.0,
        likelihood: LikelihoodRule | None = None,
        prior: ScorePrior | None = None,
        error_share: float = math.nan,
        extremes: ExtremeRule | None = None,
        input_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ) -> None:
        """``rule`` is the alert rule; the level rules are those configured (each ``None`` when
        off), :meth:`LevelRules.chain` picks those the model uses. ``threshold`` is the
        artifact's; ``reference_score`` its validation median score; ``prior`` its validation
        log-scores, what a new device's likelihood starts from; ``error_share`` its validation
        error over the data's variance (whether the likelihood applies); ``input_range`` each
        sensor's least and greatest training reading, where a device's range starts."""
        self.alert_rule = rule
        self.rules = LevelRules(calibration, likelihood, adaptation, extremes)
        self.devices: dict[str, DeviceJudgement] = {}
        self.levels = JudgeLevels(
            threshold,
            reference_score,
            prior or _flat_prior(reference_score),
            error_share,
            input_range,
        )
        self.chain: tuple[LevelRule[Any], ...] = self.rules.chain(self.levels)
        self._learners = _learners(self.chain)

    @property
    def remembers_history(self) -> bool:
        """Whether a device's levels follow its recent scores, so a replay must rebuild them."""
        return any(rule.remembers_history for rule in self.chain)

    def install(self, levels: JudgeLevels) -> None:
        """A new model scores from now on: every level rule starts again, alerts go on."""
        self.levels = levels
        self.chain = self.rules.chain(levels)
        self._learners = _learners(self.chain)
        for device in self.devices.values():
            device.states = None

    def judge(self, device_id: str, score: float) -> tuple[float, AlertState | None]:
        """The level ``device_id``'s window with ``score`` is judged by, and any transition."""
        levels = [0.0]
        transitions: list[tuple[int, AlertState]] = []
        verdicts = _Verdicts([False], [False], [False])
        self._judge_stepwise(
            self._device(device_id),
            device_id,
            _FIRST,
            [float(score)],  # a numpy score would give numpy verdicts
            levels,
            verdicts,
            transitions,
        )
        return levels[0], transitions[0][1] if transitions else None

    def judge_many(
        self,
        device_ids: Sequence[str],
        scores: np.ndarray,
        *,
        spans: Sequence[tuple[float, float]] | None = None,
        inputs: np.ndarray | None = None,
    ) -> Judgements:
        """:meth:`judge` for each window in turn (``device_ids[i]``, ``scores[i]``), in one call.

        ``spans`` (each window's first and last reading's event time) and ``inputs`` (the
        windows' values, shape (windows, length, features)) are there for rules that read them.

        Exactly the thresholds, transitions and state that calling :meth:`judge` per window
        gives. A device's windows depend on each other but not on other devices', so the batch
        is judged a device at a time; and unless a rule learns from the verdicts
        (:attr:`LevelRule.learns_judged`), a window's level does not depend on the alert rule's
        state, so every level is set first and the over and clear verdicts of the whole batch
        are one array comparison.
        """
        count = len(device_ids)
        judged_scores = np.asarray(scores, dtype=np.float64)
        values = judged_scores.tolist()
        if len(values) != count:
            raise ValueError(f"{count} device ids for {len(values)} scores")
        rows_of: dict[str, list[int]] = {}
        for row, device_id in enumerate(device_ids):
            rows = rows_of.get(device_id)
            if rows is None:
                rows_of[device_id] = [row]
            else:
                rows.append(row)
        firing: list[bool] = [False] * count
        transitions: list[tuple[int, AlertState]] = []
        levels: list[float] = [0.0] * count
        if self._learners:
            # The next window's level depends on this one's verdict: window by window.
            verdicts = _Verdicts([False] * count, [False] * count, firing)
            for device_id, rows in rows_of.items():
                self._judge_stepwise(
                    self._device(device_id),
                    device_id,
                    rows,
                    values,
                    levels,
                    verdicts,
                    transitions,
                    spans,
                    inputs,
                )
            transitions.sort()
            return Judgements(np.array(levels), transitions, np.array(firing, dtype=bool))
        judged = [(self._device(device_id), rows) for device_id, rows in rows_of.items()]
        base = self.levels.threshold
        if self.chain:
            for (device, rows), device_id in zip(judged, rows_of, strict=True):
                windows = Windows(device_id, [values[r] for r in rows], rows, spans, inputs)
                run = _through(self._steps(device), windows, [base] * len(rows))
                for row, level in zip(rows, run, strict=True):
                    levels[row] = level
            thresholds = np.array(levels)
        else:  # no level rule: every window is judged by the artifact's threshold
            thresholds = np.full(count, base, dtype=np.float64)
        over = (judged_scores > thresholds).tolist()
        clear = (judged_scores <= self.alert_rule.resolve_ratio * thresholds).tolist()
        rule = self.alert_rule
        for device, rows in judged:
            device.alert.advance(rule, rows, over, clear, firing, transitions)
        transitions.sort()
        return Judgements(thresholds, transitions, np.array(firing, dtype=bool))

    def _device(self, device_id: str) -> DeviceJudgement:
        """The device's state, new if it has none."""
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = DeviceJudgement()
        return device

    def _states(self, device: DeviceJudgement) -> tuple[Any, ...]:
        """The device's state under each rule of the chain, new if it has none."""
        states = device.states
        if states is None:
            levels = self.levels
            states = device.states = tuple([rule.new_state(levels) for rule in self.chain])
        return states

    def _steps(self, device: DeviceJudgement) -> tuple[tuple[LevelRule[Any], Any], ...]:
        """Each rule of the chain with the device's state under it, in order."""
        if not self.chain:
            return ()
        return tuple(zip(self.chain, device.states or self._states(device), strict=True))

    def _judge_stepwise(
        self,
        device: DeviceJudgement,
        device_id: str,
        rows: Sequence[int],
        values: list[float],
        levels: list[float],
        verdicts: _Verdicts,
        transitions: list[tuple[int, AlertState]],
        spans: Sequence[tuple[float, float]] | None = None,
        inputs: np.ndarray | None = None,
    ) -> None:
        """Judge a device's windows (``rows`` of ``values``) one at a time: each one's level
        (to ``levels[row]``), the alert rule (its verdicts to ``verdicts``), then what the
        rules learn from them."""
        steps = self._steps(device)
        learners = [steps[at] for at in self._learners] if self._learners else ()
        base = [self.levels.threshold]
        alert_rule = self.alert_rule
        ratio = alert_rule.resolve_ratio
        advance = device.alert.advance
        over, clear, firing = verdicts
        # One view, its one-element lists refilled per window: a rule reads the window during
        # the call only, and the loop builds no objects per window.
        score_of, row_of = [0.0], [0]
        window = Windows(device_id, score_of, row_of, spans, inputs)
        level_of, over_of, firing_of = [0.0], [False], [False]
        for row in rows:
            score = score_of[0] = values[row]
            row_of[0] = row
            level = levels[row] = _through(steps, window, base)[0]
            is_over = over[row] = score > level
            clear[row] = score <= ratio * level
            advance(alert_rule, (row,), over, clear, firing, transitions)
            if learners:
                level_of[0], over_of[0], firing_of[0] = level, is_over, firing[row]
                for rule, state in learners:
                    rule.learn_judged(state, window, level_of, over_of, firing_of)

    def firing(self, device_id: str) -> bool:
        """Whether the device is in a firing episode."""
        device = self.devices.get(device_id)
        return device is not None and device.alert.firing

    def adapting(self, device_id: str) -> bool:
        """Whether the device has fewer scores than a rule that follows its history needs."""
        device = self.devices.get(device_id)
        states = None if device is None else device.states
        for at, rule in enumerate(self.chain):
            if rule.remembers_history and (states is None or not rule.complete(states[at])):
                return True
        return False

    def forget(self, device_id: str) -> bool:
        """Drop everything about a device; returns whether it was firing."""
        device = self.devices.pop(device_id, None)
        return device is not None and device.alert.firing

    def retain(self, keep: Container[str]) -> None:
        """Keep only the devices in ``keep``, in a dict sized to them (deleting never shrinks)."""
        self.devices = {d: j for d, j in self.devices.items() if d in keep}

    def firing_count(self) -> int:
        """How many devices are firing now."""
        return sum(device.alert.firing for device in self.devices.values())
