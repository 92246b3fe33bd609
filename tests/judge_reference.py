"""The pre-refactor judge (issue 24), kept frozen as the oracle of ``tests/test_judge_rules.py``.

A verbatim copy of ``detector/core/judge.py``'s :class:`Judge` and ``detector/core/alerts.py``'s
``DeviceAlertState`` as they were before the judging rules became composable objects (commit
f158fb9): the fixed chain (likelihood or calibration, then adaptation, then the alert rule),
written once for :meth:`Judge.judge` and again for :meth:`Judge.judge_many`. Only the imports
changed: the per-device statistics it drives (``DeviceCalibration``, ``DeviceAdaptation``,
``DeviceLikelihood``) and the plain data it takes and returns (``AlertRule``, ``JudgeLevels``,
``Judgements``) are the live ones, untouched by the refactor. Do not edit it to follow the live
judge: it is what the live judge must equal, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from detector.core.adaptation import AdaptationRule, DeviceAdaptation
from detector.core.alerts import AlertRule, AlertState
from detector.core.calibration import CalibrationRule, DeviceCalibration
from detector.core.judge import JudgeLevels, Judgements
from detector.core.likelihood import DeviceLikelihood, LikelihoodRule, ScorePrior

__all__ = ["DeviceAlertState", "DeviceJudgement", "Judge"]


def _applicable(rule: LikelihoodRule | None, error_share: float) -> LikelihoodRule | None:
    """``rule`` when it judges a model with this ``error_share``, else ``None``."""
    return rule if rule is not None and rule.applies_to(error_share) else None


def _flat_prior(reference_score: float) -> ScorePrior:
    """A prior with only a location (the likelihood's ``min_scale`` then sets the scale)."""
    return ScorePrior.from_validation({"p50": reference_score})


@dataclass
class DeviceAlertState:
    """One device's position in the rule: recent over/under flags and whether it is firing."""

    recent: int = 0  # bit i set = the window i steps ago was over the threshold
    firing: bool = False
    below_streak: int = 0
    cooldown_left: int = 0

    def update(self, rule: AlertRule, over: bool, clear: bool | None = None) -> AlertState | None:
        """Feed one window's verdicts; returns the transition it caused, if any.

        ``clear`` says the window is below the resolve level; ``None`` means ``not over`` (no
        hysteresis).
        """
        if clear is None:
            clear = not over
        self.recent = ((self.recent << 1) | int(over)) & ((1 << rule.fire_n) - 1)
        if not self.firing:
            if self.cooldown_left > 0:
                # Overs seen during the cooldown still count once it ends.
                self.cooldown_left -= 1
                return None
            # Only an over window starts an episode, also when overs from the cooldown complete
            # the k of n.
            if over and self.recent.bit_count() >= rule.fire_k:
                self.firing = True
                self.below_streak = 0
                return "firing"
            return None
        if not clear:
            self.below_streak = 0
            return None
        self.below_streak += 1
        if self.below_streak >= rule.resolve_after:
            self.firing = False
            self.recent = 0
            self.below_streak = 0
            self.cooldown_left = rule.cooldown
            return "resolved"
        return None

    def update_rows(
        self,
        rule: AlertRule,
        rows: Iterable[int],
        over: list[bool],
        clear: list[bool],
        firing: list[bool],
        transitions: list[tuple[int, AlertState]],
    ) -> None:
        """:meth:`update` with ``over[row]`` and ``clear[row]`` for each of ``rows`` in turn.

        Whether the device fires after each row goes to ``firing[row]``, each transition to
        ``transitions`` as ``(row, state)``. The state is kept in locals over the rows: a batch
        with several windows of a device pays the attribute reads and writes once.
        """
        mask = (1 << rule.fire_n) - 1
        fire_k, resolve_after = rule.fire_k, rule.resolve_after
        recent, firing_now = self.recent, self.firing
        streak, cooldown_left = self.below_streak, self.cooldown_left
        for row in rows:
            is_over = over[row]
            recent = ((recent << 1) | is_over) & mask
            if not firing_now:
                if cooldown_left > 0:
                    cooldown_left -= 1
                elif is_over and recent.bit_count() >= fire_k:
                    firing_now = True
                    streak = 0
                    transitions.append((row, "firing"))
            elif not clear[row]:
                streak = 0
            else:
                streak += 1
                if streak >= resolve_after:
                    firing_now = False
                    recent = 0
                    streak = 0
                    cooldown_left = rule.cooldown
                    transitions.append((row, "resolved"))
            firing[row] = firing_now
        self.recent, self.firing = recent, firing_now
        self.below_streak, self.cooldown_left = streak, cooldown_left

    def observe(self, rule: AlertRule, score: float, threshold: float) -> AlertState | None:
        """Feed one window's score against ``threshold``; returns the transition, if any."""
        return self.update(rule, *rule.levels(score, threshold))


@dataclass
class DeviceJudgement:
    """One device's decision state: alert rule position, likelihood, calibration, adaptation."""

    alert: DeviceAlertState = field(default_factory=DeviceAlertState)
    calibration: DeviceCalibration | None = None
    adaptation: DeviceAdaptation | None = None
    likelihood: DeviceLikelihood | None = None


class Judge:
    """Per-device thresholds and alert-rule state for a fleet scored by one model."""

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
    ) -> None:
        """``threshold`` is the artifact's; ``reference_score`` its validation median score;
        ``prior`` its validation log-scores, what a new device's likelihood starts from;
        ``error_share`` its validation error over the data's variance (whether the likelihood
        applies, :meth:`LikelihoodRule.applies_to`)."""
        self.rule = rule
        self.calibration = calibration
        self.adaptation = adaptation
        self.likelihood_rule = likelihood
        self.likelihood = _applicable(likelihood, error_share)
        self.threshold = threshold
        self.reference_score = reference_score
        self.prior = prior or _flat_prior(reference_score)
        self.devices: dict[str, DeviceJudgement] = {}

    def install(self, levels: JudgeLevels) -> None:
        """A new model scores from now on: thresholds calibrate and adapt again, alerts go on."""
        self.threshold = levels.threshold
        self.reference_score = levels.reference_score
        self.prior = levels.prior
        self.likelihood = _applicable(self.likelihood_rule, levels.error_share)
        for device in self.devices.values():
            device.calibration = None
            device.adaptation = None
            device.likelihood = None

    def judge(self, device_id: str, score: float) -> tuple[float, AlertState | None]:
        """The threshold ``device_id``'s window with ``score`` is judged by, and any transition."""
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = DeviceJudgement()
        threshold = self.threshold
        likelihood = None
        if self.likelihood is not None:
            likelihood = device.likelihood
            if likelihood is None:
                likelihood = device.likelihood = DeviceLikelihood(self.likelihood, self.prior)
            level = likelihood.level()
            threshold = level if self.likelihood.combine == "replace" else max(level, threshold)
        elif self.calibration is not None:
            if device.calibration is None:
                device.calibration = DeviceCalibration()
            threshold = device.calibration.threshold_for(self.calibration, threshold, score)
        if self.adaptation is not None:
            if device.adaptation is None:
                device.adaptation = DeviceAdaptation(self.adaptation, self.reference_score)
            threshold *= device.adaptation.observe(score)
        transition = device.alert.observe(self.rule, score, threshold)
        if likelihood is not None and (
            likelihood.rule.learn == "all" or not (device.alert.firing or score > threshold)
        ):
            likelihood.remember(score)
        return threshold, transition

    def judge_many(self, device_ids: Sequence[str], scores: np.ndarray) -> Judgements:
        """:meth:`judge` for each window in turn (``device_ids[i]``, ``scores[i]``), in one call.

        Exactly the thresholds, transitions and state that calling :meth:`judge` per window
        gives. A device's windows depend on each other but not on other devices', so the batch
        is judged a device at a time; and unless the likelihood learns only calm windows, a
        window's threshold does not depend on the alert rule's state, so every threshold is
        set first and the over and clear verdicts of the whole batch are one array comparison.
        """
        count = len(device_ids)
        judged_scores = np.asarray(scores, dtype=np.float64)
        values = judged_scores.tolist()
        if len(values) != count:
            raise ValueError(f"{count} device ids for {len(values)} scores")
        levels: list[float] = [0.0] * count
        firing: list[bool] = [False] * count
        transitions: list[tuple[int, AlertState]] = []
        if self.likelihood is not None and self.likelihood.learn == "calm":
            # Which windows the likelihood learns depends on the alert state: window by window.
            devices = self.devices
            for row, (device_id, score) in enumerate(zip(device_ids, values, strict=True)):
                levels[row], transition = self.judge(device_id, score)
                firing[row] = devices[device_id].alert.firing
                if transition is not None:
                    transitions.append((row, transition))
            return Judgements(np.array(levels), transitions, np.array(firing, dtype=bool))
        rows_of: dict[str, list[int]] = {}
        for row, device_id in enumerate(device_ids):
            rows = rows_of.get(device_id)
            if rows is None:
                rows_of[device_id] = [row]
            else:
                rows.append(row)
        judged = [(self._device(device_id), rows) for device_id, rows in rows_of.items()]
        for device, rows in judged:
            run = [values[row] for row in rows]
            for row, level in zip(rows, self._levels(device, run), strict=True):
                levels[row] = level
        thresholds = np.array(levels)
        over = (judged_scores > thresholds).tolist()
        clear = (judged_scores <= self.rule.resolve_ratio * thresholds).tolist()
        for device, rows in judged:
            device.alert.update_rows(self.rule, rows, over, clear, firing, transitions)
        transitions.sort()
        return Judgements(thresholds, transitions, np.array(firing, dtype=bool))

    def _device(self, device_id: str) -> DeviceJudgement:
        """The device's state, new if it has none."""
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = DeviceJudgement()
        return device

    def _levels(self, device: DeviceJudgement, run: list[float]) -> list[float]:
        """The thresholds a run of one device's windows is judged by, in order, as :meth:`judge`
        sets them, each score remembered after its window (a likelihood learning every window)."""
        base = self.threshold
        rule = self.likelihood
        if rule is not None:
            likelihood = device.likelihood
            if likelihood is None:
                likelihood = device.likelihood = DeviceLikelihood(rule, self.prior)
            replace = rule.combine == "replace"
            levels = []
            for score in run:
                level = likelihood.level()
                levels.append(level if replace else max(level, base))
                likelihood.remember(score)
        elif self.calibration is not None:
            if device.calibration is None:
                device.calibration = DeviceCalibration()
            calibrate, calibration = device.calibration.threshold_for, self.calibration
            levels = [calibrate(calibration, base, score) for score in run]
        else:
            levels = [base] * len(run)
        if self.adaptation is not None:
            if device.adaptation is None:
                device.adaptation = DeviceAdaptation(self.adaptation, self.reference_score)
            factors = device.adaptation.observe_many(run)
            levels = [level * factor for level, factor in zip(levels, factors, strict=True)]
        return levels

    def firing(self, device_id: str) -> bool:
        """Whether the device is in a firing episode."""
        device = self.devices.get(device_id)
        return device is not None and device.alert.firing

    def adapting(self, device_id: str) -> bool:
        """Whether the device has fewer scores than its likelihood or adaptation needs."""
        device = self.devices.get(device_id)
        for rule, name in ((self.likelihood, "likelihood"), (self.adaptation, "adaptation")):
            if rule is None:
                continue
            state = None if device is None else getattr(device, name)
            if state is None or not state.complete:
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
