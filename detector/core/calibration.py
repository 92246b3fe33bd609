"""Per-device threshold calibration: a pure core (no I/O) shared by the daemon and benchmarks.

Fleets are not identical: one model's error on a given device can sit well above or below the
level the artifact's threshold was fitted on. With calibration on, each device's first
``windows`` scores (assumed normal, e.g. right after commissioning) are collected, and from then
on the device uses a threshold fitted on them with any :func:`~detector.core.thresholds.fit_threshold`
method, clamped to ``[min_ratio, max_ratio]`` x the artifact threshold so that a device that starts
out broken cannot calibrate itself blind. Until then it uses the artifact threshold. The state is
in memory: a restarted daemon calibrates again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from detector.core.thresholds import MIN_POT_PEAKS, ThresholdMethod, fit_threshold_with

if TYPE_CHECKING:
    from detector.core.rules import JudgeLevels, Windows

__all__ = ["CalibrationRule", "DeviceCalibration"]


@dataclass(frozen=True)
class CalibrationRule:
    """How many first windows to collect per device and how to turn them into its threshold.

    A level rule (:class:`~detector.core.rules.LevelRule`): a device's first ``windows`` are
    judged by the previous level, later ones by the threshold fitted on them. Its defaults are
    the configuration's (:class:`~detector.config.CalibrationConfig` reads them from here),
    except ``windows``, which the configuration sets to 0 to leave calibration off.
    """

    # Fitted once on the device's first windows, kept in memory only: a replay does not
    # restore it (a restarted daemon calibrates again).
    remembers_history: ClassVar[bool] = False
    # It collects every score, whatever the verdict.
    learns_judged: ClassVar[bool] = False

    windows: int
    method: ThresholdMethod = "quantile"
    quantile: float = 0.99
    k: float = 3.0
    margin: float = 1.0
    risk: float = 1e-3
    init_quantile: float = 0.9
    min_ratio: float = 0.5
    max_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.windows < 2:
            raise ValueError("windows must be >= 2")
        if not 0.0 < self.min_ratio <= 1.0 <= self.max_ratio:
            raise ValueError("need 0 < min_ratio <= 1 <= max_ratio")
        # Checked here, not when the last calibration window arrives in a running daemon.
        if self.method == "pot":
            if not 0.0 < self.risk < 1.0 - self.init_quantile:
                raise ValueError("pot needs 0 < risk < 1 - init_quantile")
            if self.windows * (1.0 - self.init_quantile) < MIN_POT_PEAKS:
                raise ValueError(
                    f"pot needs windows x (1 - init_quantile) >= {MIN_POT_PEAKS} tail samples"
                )
        elif self.method == "quantile" and not 0.0 < self.quantile < 1.0:
            raise ValueError("quantile must be in (0, 1)")

    def new_state(self, levels: JudgeLevels) -> DeviceCalibration:
        """A new device's calibration: nothing collected yet."""
        return DeviceCalibration()

    def levels(
        self, state: DeviceCalibration, windows: Windows, previous: list[float]
    ) -> list[float]:
        """The calibrated threshold, or ``previous`` while the device still calibrates."""
        threshold_for = state.threshold_for
        return [
            threshold_for(self, before, score)
            for score, before in zip(windows.scores, previous, strict=True)
        ]

    def learn_judged(
        self,
        state: DeviceCalibration,
        windows: Windows,
        levels: list[float],
        over: list[bool],
        firing: list[bool],
    ) -> None:
        """Nothing: the scores were collected as the levels were set."""

    def complete(self, state: DeviceCalibration) -> bool:
        """Whether the device's threshold is fitted."""
        return state.threshold is not None

    def fit(self, scores: np.ndarray, base: float) -> float:
        """The device threshold from its calibration ``scores``, given the artifact's ``base``."""
        value = fit_threshold_with(scores, self)
        return float(np.clip(value, self.min_ratio * base, self.max_ratio * base))


@dataclass
class DeviceCalibration:
    """One device's calibration: scores collected so far, then its fitted threshold."""

    scores: list[float] = field(default_factory=list)
    threshold: float | None = None

    def threshold_for(self, rule: CalibrationRule, base: float, score: float) -> float:
        """The threshold to judge this window by; its score joins the calibration if still open.

        The window that completes the calibration is still judged by ``base``: a threshold never
        judges a window it was fitted on.
        """
        if self.threshold is not None:
            return self.threshold
        if not math.isfinite(score):
            # Judged by ``base``, never fitted on: a threshold cannot be fitted through a NaN,
            # and one inf (a reading the model overflows on) would move a quantile to inf.
            return base
        self.scores.append(score)
        if len(self.scores) >= rule.windows:
            self.threshold = rule.fit(np.asarray(self.scores), base)
            self.scores = []
        return base
