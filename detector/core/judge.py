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
from collections.abc import Container
from dataclasses import dataclass, field

from detector.core.adaptation import AdaptationRule, DeviceAdaptation
from detector.core.alerts import AlertRule, AlertState, DeviceAlertState
from detector.core.artifact import ArtifactMetadata
from detector.core.calibration import CalibrationRule, DeviceCalibration
from detector.core.likelihood import DeviceLikelihood, LikelihoodRule, ScorePrior

__all__ = ["DeviceJudgement", "Judge", "JudgeLevels", "judge_levels"]


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
