"""Backtest: recorded readings through the daemon's own stages, offline, with no broker.

Each device's rows, in time order, are admitted into its window exactly as the daemon admits
readings (:class:`~detector.core.admission.Admitter`: duplicates, late readings, gaps, imputation),
the ready windows are scored by the artifact's model in batches, and every score is judged by
the daemon's :class:`~detector.core.judge.Judge` (calibration, adaptation, alert rule). What comes
out is one row per reading (score, threshold, firing) and the alert messages the daemon would
have published. Two things differ from a live daemon, by design: ``detected_at`` is the window's
end (a backtest has no wall clock to report), and fleet-wide limits that depend on wall-clock
time (``max_devices`` replacement, idle forgetting, future timestamps) do not apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from detector.config import DetectorConfig
from detector.core.admission import Admitter
from detector.core.alerts import Alert, make_alert
from detector.core.artifact import Artifact
from detector.core.judge import judge_levels
from detector.core.routing import DEFAULT_PROFILE
from detector.core.scoring import Scorer, top_sensor_shares
from detector.core.windows import WindowStore

__all__ = ["DeviceEvaluation", "evaluate_device", "evaluate_table", "row_frame"]


@dataclass(frozen=True)
class DeviceEvaluation:
    """One device's backtest: per reading, its window's score and threshold, and the alert state."""

    device_id: str
    ts: np.ndarray  # every row of the device, in time order
    scores: np.ndarray  # the score of the window that ended at the row (NaN: none did)
    thresholds: np.ndarray  # the threshold that window was judged by (NaN: none)
    firing: np.ndarray  # the device is firing after the row (bool)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> readings
    alerts: list[Alert] = field(default_factory=list)


def evaluate_device(
    device_id: str,
    ts: np.ndarray,
    values: np.ndarray,
    artifact: Artifact,
    config: DetectorConfig,
    scorer: Scorer,
    profile: str = DEFAULT_PROFILE,
) -> DeviceEvaluation:
    """Stream one device's rows (time order) through admission, windows, scoring and judging.

    ``values`` is ``(rows, features)`` in the artifact's feature order; NaN is a missing sensor.
    """
    meta = artifact.metadata
    length, n_features = meta.window_length, len(meta.feature_names)
    store = WindowStore(length, n_features, stride=config.windows.stride, initial_capacity=1)
    admitter = Admitter(config.windows.policy(), store, meta.feature_names)
    slot = store.slot(device_id)
    ts = np.asarray(ts, dtype=np.float64)
    values = np.asarray(values, dtype=np.float32)
    windows = np.empty((max(len(ts), 1), length, n_features), dtype=np.float32)
    rows: list[int] = []
    spans: list[tuple[float, float]] = []
    rejected: dict[str, int] = {}
    for row in range(len(ts)):
        admission = admitter.admit(slot, device_id, float(ts[row]), values[row], math.inf)
        if admission.reason is not None:
            reason = admission.reason.value
            rejected[reason] = rejected.get(reason, 0) + 1
        elif admission.ready:
            store.window(slot, out=windows[len(rows)])
            rows.append(row)
            spans.append(store.window_span(slot))
    count = len(rows)
    errors = np.empty((count, n_features), dtype=np.float32)
    batch = config.scoring.max_batch_size
    for start in range(0, count, batch):
        errors[start : start + batch] = scorer.sensor_errors(
            windows[start : min(start + batch, count)]
        )
    window_scores = scorer.window_scores(errors) if count else np.empty(0)
    judge = config.alerts.judge(judge_levels(meta))
    scores = np.full(len(ts), np.nan)
    thresholds = np.full(len(ts), np.nan)
    firing = np.zeros(len(ts), dtype=bool)
    alerts: list[Alert] = []
    top_count = config.alerts.top_sensors
    judged = judge.judge_many([device_id] * count, window_scores)
    scores[rows] = window_scores
    thresholds[rows] = judged.thresholds
    firing[rows] = judged.firing
    for i, transition in judged.transitions:
        top = top_sensor_shares(errors[i], meta.feature_names, top_count)
        span = spans[i]
        alerts.append(
            make_alert(
                transition,
                device_id,
                span,
                float(window_scores[i]),
                float(judged.thresholds[i]),
                meta.version,
                top,
                span[1],
                profile,
            )
        )
    # Between windows (and after rejected readings) the device keeps its last state.
    last_window = np.maximum.accumulate(np.where(np.isnan(scores), -1, np.arange(len(ts))))
    covered = last_window >= 0
    firing[covered] = firing[last_window[covered]]
    return DeviceEvaluation(device_id, ts, scores, thresholds, firing, rejected, alerts)


def evaluate_table(
    table: pd.DataFrame,
    artifact: Artifact,
    config: DetectorConfig,
    scorer: Scorer | None = None,
    on_device: Callable[[DeviceEvaluation], None] | None = None,
    profile: str = DEFAULT_PROFILE,
) -> list[DeviceEvaluation]:
    """Backtest every device of a table from :func:`~detector.core.datafiles.load_table`.

    The table needs ``ts``, ``device_id`` and the artifact's sensor columns; devices are taken
    in order of first appearance, each device's rows in time order. ``on_device`` is called as
    each device finishes (progress). ``profile`` is what the alerts carry; the alert settings
    are ``config.alerts`` (for a profile's own: ``config.alerts_for(profile)``).
    """
    meta = artifact.metadata
    if scorer is None:
        scorer = Scorer.from_artifact(
            artifact, config.scoring.device, config.scoring.max_batch_size
        )
    missing = [name for name in meta.feature_names if name not in table.columns]
    if missing:
        raise ValueError(f"the model's sensors are not in the data: {missing}")
    results = []
    for device_id, rows in table.groupby("device_id", sort=False):
        rows = rows.sort_values("ts", kind="stable")
        result = evaluate_device(
            str(device_id),
            rows["ts"].to_numpy(),
            rows[meta.feature_names].to_numpy(dtype=np.float32),
            artifact,
            config,
            scorer,
            profile,
        )
        results.append(result)
        if on_device is not None:
            on_device(result)
    return results


def row_frame(result: DeviceEvaluation) -> pd.DataFrame:
    """``scores.csv`` rows of one device: device, ts, score, threshold, firing."""
    return pd.DataFrame(
        {
            "device_id": result.device_id,
            "ts": result.ts,
            "score": result.scores,
            "threshold": result.thresholds,
            "firing": result.firing.astype(np.int8),
        }
    )
