"""Offline evaluation with the daemon's own parts: windows, scorer and alert rule, no broker.

Used by benchmarks and by the tests that check streaming results equal offline ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.alerts import AlertRule, AlertState, DeviceAlertState
from detector.calibration import CalibrationRule, DeviceCalibration
from detector.scoring import Scorer
from detector.windows import sliding_windows, window_end_indices


@dataclass(frozen=True)
class SeriesResult:
    """One device's scored series: per window end row, its score and whether the device fires."""

    end_rows: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray  # the threshold each window was judged by
    sensor_errors: np.ndarray
    firing: np.ndarray
    transitions: list[tuple[int, AlertState]]  # (end row, transition)


def evaluate_series(
    scorer: Scorer,
    values: np.ndarray,
    length: int,
    threshold: float,
    rule: AlertRule,
    stride: int = 1,
    calibration: CalibrationRule | None = None,
) -> SeriesResult:
    """Score every window of one device's rows (time order) and run the alert rule over them.

    With ``calibration``, the device's threshold comes from its first windows as in the daemon.
    """
    windows = sliding_windows(np.asarray(values, dtype=np.float32), length, stride)
    errors = scorer.sensor_errors(windows)
    scores = scorer.window_scores(errors)
    state = DeviceAlertState()
    device = DeviceCalibration()
    firing = np.zeros(len(scores), dtype=bool)
    thresholds = np.full(len(scores), threshold, dtype=np.float64)
    end_rows = window_end_indices(len(values), length, stride)
    transitions: list[tuple[int, AlertState]] = []
    for i, score in enumerate(scores):
        if calibration is not None:
            thresholds[i] = device.threshold_for(calibration, threshold, float(score))
        transition = state.observe(rule, float(score), thresholds[i])
        if transition is not None:
            transitions.append((int(end_rows[i]), transition))
        firing[i] = state.firing
    return SeriesResult(end_rows, scores, thresholds, errors, firing, transitions)


def point_flags(result: SeriesResult, n_rows: int) -> np.ndarray:
    """0/1 per row: the device's alert state is ``firing`` after the window ending at that row.

    Rows before the first full window are 0, and with stride > 1 a row keeps the state of the
    last window that ended at or before it, as the daemon's state would.
    """
    flags = np.zeros(n_rows, dtype=np.int8)
    if len(result.end_rows) == 0:
        return flags
    last_window = np.searchsorted(result.end_rows, np.arange(n_rows), side="right") - 1
    covered = last_window >= 0
    flags[covered] = result.firing[last_window[covered]]
    return flags
