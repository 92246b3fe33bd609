"""Scores to alert transitions: each device's threshold, then the alert rule (pure, no I/O).

A window's score is judged against the device's threshold: the artifact's, or the one its first
windows calibrated (:mod:`detector.core.calibration`); when the likelihood applies to the model
(:mod:`detector.core.likelihood`), the level the device's own recent scores set instead
(``combine: replace``) or the higher of the two (``max``); all times the factor its recent
scores give it (:mod:`detector.core.adaptation`, when on). The alert rule (:mod:`detector.core.alerts`) turns the verdicts into
``firing`` and ``resolved`` transitions. The daemon and ``detector evaluate`` both judge through
a :class:`Judge`, so the offline backtest gives the alerts the daemon would publish.

All per-device decision state lives in one :class:`DeviceJudgement`, so forgetting a device is
one call.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from detector.core.adaptation import AdaptationRule, DeviceAdaptation
from detector.core.alerts import AlertRule, AlertState, DeviceAlertState
from detector.core.artifact import ArtifactMetadata
from detector.core.calibration import CalibrationRule, DeviceCalibration
from detector.core.likelihood import DeviceLikelihood, LikelihoodRule, ScorePrior

__all__ = ["DeviceJudgement", "Judge", "JudgeLevels", "Judgements", "judge_levels"]


@dataclass(frozen=True)
class JudgeLevels:
    """What judging a model's scores needs from its artifact."""

    threshold: float  # the artifact's threshold
    reference_score: float  # the validation windows' median score
    prior: ScorePrior  # the validation log-scores' location and scale
    error_share: float = math.nan  # validation error / the data's variance (NaN: not recorded)


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
    )


def _applicable(rule: LikelihoodRule | None, error_share: float) -> LikelihoodRule | None:
    """``rule`` when it judges a model with this ``error_share``, else ``None``."""
    return rule if rule is not None and rule.applies_to(error_share) else None


def _flat_prior(reference_score: float) -> ScorePrior:
    """A prior with only a location (the likelihood's ``min_scale`` then sets the scale)."""
    return ScorePrior.from_validation({"p50": reference_score})


@dataclass
class DeviceJudgement:
    """One device's decision state: alert rule position, likelihood, calibration, adaptation."""

    alert: DeviceAlertState = field(default_factory=DeviceAlertState)
    calibration: DeviceCalibration | None = None
    adaptation: DeviceAdaptation | None = None
    likelihood: DeviceLikelihood | None = None


class Judgements(NamedTuple):
    """A batch of windows judged (:meth:`Judge.judge_many`): row ``i`` is window ``i``."""

    thresholds: np.ndarray  # float64: the level each window was judged by
    transitions: list[tuple[int, AlertState]]  # (row, transition), in row order
    firing: np.ndarray  # bool: whether the window's device fires once it is judged


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
