"""What the pipeline reports as it works: a small interface, Prometheus and logs behind it.

The pipeline reports new records to one sensor (the daemon's :class:`MetricsSensor`) and records
it replays to rebuild state to another (:class:`ReplaySensor`, which counts them and nothing
else: they were counted, logged and dead-lettered when first consumed), instead of guarding every
metric with "if live". :class:`Sensor` itself reports nothing. Counts arrive once per poll or
batch, not per reading.
"""

from __future__ import annotations

import logging

import numpy as np

from detector.core.readings import RejectReason
from detector.logs import RateLimitedLog
from detector.metrics import DetectorMetrics

__all__ = ["MetricsSensor", "ReplaySensor", "Sensor"]

log = logging.getLogger(__name__)


class Sensor:
    """The interface; reports nothing (what unit tests and tools may pass)."""

    def records(self, count: int) -> None:
        """``count`` records of one poll were ingested."""

    def rejected(self, reason: RejectReason, detail: str) -> None:
        """A record or reading was rejected."""

    def readings(self, accepted: int, imputed: int, unknown_sensors: int) -> None:
        """Readings admitted, of those imputed, and sensor values ignored, in one poll."""

    def window_resets(self, reason: str, count: int = 1) -> None:
        """Device windows restarted (``gap``, ``clock``, ``rebalance``)."""

    def evicted(self, reason: str, count: int, firing: str | None = None) -> None:
        """Devices forgotten (``capacity``, ``idle``); ``firing``: one that was firing."""

    def batch(self, size: int, seconds: float, waited: float | None) -> None:
        """A batch of ``size`` windows was scored; ``waited``: its oldest new window's wait."""

    def scored(self, scores: np.ndarray) -> None:
        """The scores of new windows of a batch."""

    def alert(self, state: str) -> None:
        """An alert transition (``firing``, ``resolved``) was published."""

    def firing(self, count: int) -> None:
        """How many devices are firing now."""


class MetricsSensor(Sensor):
    """The daemon's sensor: Prometheus metrics, and bad-data logs rate-limited per reason."""

    def __init__(self, metrics: DetectorMetrics) -> None:
        self.metrics = metrics
        self._bad_data_log = RateLimitedLog(log)

    def records(self, count: int) -> None:
        """Count consumed records."""
        self.metrics.records_consumed.inc(count)

    def rejected(self, reason: RejectReason, detail: str) -> None:
        """Count the rejection and log it (once per reason and interval)."""
        self.metrics.records_rejected.labels(reason=reason.value).inc()
        self._bad_data_log.warning(reason.value, "rejected reading (%s): %s", reason.value, detail)

    def readings(self, accepted: int, imputed: int, unknown_sensors: int) -> None:
        """Count admitted and imputed readings and ignored sensor values."""
        if accepted:
            self.metrics.readings_accepted.inc(accepted)
        if imputed:
            self.metrics.imputed_readings.inc(imputed)
        if unknown_sensors:
            self.metrics.unknown_sensors.inc(unknown_sensors)

    def window_resets(self, reason: str, count: int = 1) -> None:
        """Count restarted windows by reason."""
        if count:
            self.metrics.window_resets.labels(reason=reason).inc(count)

    def evicted(self, reason: str, count: int, firing: str | None = None) -> None:
        """Count forgotten devices; warn when a firing one had to make room."""
        if count:
            self.metrics.devices_evicted.labels(reason=reason).inc(count)
        if firing is not None:
            self._bad_data_log.warning(
                "evicted_firing",
                "replaced firing device %s at max_devices: its episode gets no resolved alert",
                firing,
            )

    def batch(self, size: int, seconds: float, waited: float | None) -> None:
        """Observe the batch's size, forward-pass time and wait."""
        self.metrics.batch_size.observe(size)
        self.metrics.scoring_duration.observe(seconds)
        if waited is not None:
            self.metrics.batch_wait.observe(waited)

    def scored(self, scores: np.ndarray) -> None:
        """Count the windows and observe their scores."""
        self.metrics.windows_scored.inc(len(scores))
        for score in scores.tolist():
            self.metrics.anomaly_score.observe(score)

    def alert(self, state: str) -> None:
        """Count the transition."""
        self.metrics.alerts.labels(state=state).inc()

    def firing(self, count: int) -> None:
        """Set the firing gauge."""
        self.metrics.alerts_firing.set(count)


class ReplaySensor(Sensor):
    """For records replayed to rebuild state: counts them, reports nothing else."""

    def __init__(self, metrics: DetectorMetrics) -> None:
        self.metrics = metrics

    def records(self, count: int) -> None:
        """Count replayed records."""
        self.metrics.rebuild_records.inc(count)
