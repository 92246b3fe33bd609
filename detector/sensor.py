"""What the pipeline reports as it works: a small interface, Prometheus and logs behind it.

The pipeline reports new records to one sensor (the daemon's :class:`MetricsSensor`) and records
it replays to rebuild state to another (:class:`ReplaySensor`, which counts them and nothing
else: they were counted, logged and dead-lettered when first consumed), instead of guarding every
metric with "if live". :class:`Sensor` itself reports nothing. Counts arrive once per poll or
batch, not per reading. What a profile's models do is reported to that profile's sensor
(:meth:`Sensor.for_profile`), whose metrics carry its ``profile`` label.
"""

from __future__ import annotations

import logging

import numpy as np

from detector.core.readings import RejectReason
from detector.core.routing import DEFAULT_PROFILE
from detector.logs import RateLimitedLog
from detector.metrics import DetectorMetrics

__all__ = ["MetricsSensor", "ReplaySensor", "Sensor"]

log = logging.getLogger(__name__)


class Sensor:
    """The interface; reports nothing (what unit tests and tools may pass)."""

    def for_profile(self, profile: str) -> Sensor:
        """The sensor of one device profile's readings, windows and models."""
        return self

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

    def judged(
        self,
        device_ids: list[str],
        spans: list[tuple[float, float]],
        scores: np.ndarray,
        thresholds: np.ndarray,
        firing: np.ndarray,
        live: np.ndarray,
    ) -> None:
        """A scored batch was judged: row ``i`` is window ``i`` (what ``detector evaluate`` keeps).

        ``thresholds``: the level each window was judged by; ``firing``: whether its device fires
        once it is judged; ``live``: new windows (not replayed to rebuild state).
        """

    def alert(self, state: str) -> None:
        """An alert transition (``firing``, ``resolved``) was published."""

    def firing(self, count: int) -> None:
        """How many devices are firing now."""

    def shadow(self, current: str, candidate: str | None) -> None:
        """The candidate scored in shadow is now ``candidate`` (``None``: shadow stopped)."""

    def shadow_batch(self, seconds: float, scores: np.ndarray) -> None:
        """The candidate scored a batch in ``seconds``; ``scores``: those of new windows."""

    def shadow_alert(self, model: str, state: str) -> None:
        """``model`` (``current`` or ``candidate``) made a transition on a shadowed window."""


class MetricsSensor(Sensor):
    """The daemon's sensor: Prometheus metrics, and bad-data logs rate-limited per reason."""

    def __init__(
        self,
        metrics: DetectorMetrics,
        profile: str | None = None,
        bad_data_log: RateLimitedLog | None = None,
    ) -> None:
        """``profile``: the lane this sensor reports for (``None``: the pipeline's own sensor,
        which counts records, rejections and unknown sensors and creates no profile series)."""
        self.metrics = metrics
        self.profile = profile or DEFAULT_PROFILE
        self._bad_data_log = bad_data_log or RateLimitedLog(log)
        self._shadowing: tuple[str, str] | None = None
        if profile is None:
            return
        # Children looked up once: labels() per batch is a dict lookup and a lock each time.
        self._accepted = metrics.readings_accepted.labels(profile=profile)
        self._imputed = metrics.imputed_readings.labels(profile=profile)
        self._windows = metrics.windows_scored.labels(profile=profile)
        self._batch_size = metrics.batch_size.labels(profile=profile)
        self._duration = metrics.scoring_duration.labels(profile=profile, model="current")
        self._wait = metrics.batch_wait.labels(profile=profile)
        self._score = metrics.anomaly_score.labels(profile=profile)
        self._firing = metrics.alerts_firing.labels(profile=profile)

    def for_profile(self, profile: str) -> MetricsSensor:
        """The same metrics and bad-data log, labelled with ``profile``."""
        return MetricsSensor(self.metrics, profile, self._bad_data_log)

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
            self._accepted.inc(accepted)
        if imputed:
            self._imputed.inc(imputed)
        if unknown_sensors:
            self.metrics.unknown_sensors.inc(unknown_sensors)

    def window_resets(self, reason: str, count: int = 1) -> None:
        """Count restarted windows by reason."""
        if count:
            self.metrics.window_resets.labels(profile=self.profile, reason=reason).inc(count)

    def evicted(self, reason: str, count: int, firing: str | None = None) -> None:
        """Count forgotten devices; warn when a firing one had to make room."""
        if count:
            self.metrics.devices_evicted.labels(profile=self.profile, reason=reason).inc(count)
        if firing is not None:
            self._bad_data_log.warning(
                "evicted_firing",
                "replaced firing device %s at max_devices: its episode gets no resolved alert",
                firing,
            )

    def batch(self, size: int, seconds: float, waited: float | None) -> None:
        """Observe the batch's size, forward-pass time and wait."""
        self._batch_size.observe(size)
        self._duration.observe(seconds)
        if waited is not None:
            self._wait.observe(waited)

    def scored(self, scores: np.ndarray) -> None:
        """Count the windows and observe their scores."""
        self._windows.inc(len(scores))
        for score in scores.tolist():
            self._score.observe(score)

    def alert(self, state: str) -> None:
        """Count the transition."""
        self.metrics.alerts.labels(profile=self.profile, state=state).inc()

    def firing(self, count: int) -> None:
        """Set the firing gauge."""
        self._firing.set(count)

    def shadow(self, current: str, candidate: str | None) -> None:
        """Replace the shadow series: the counts start from zero with each candidate."""
        metrics, profile = self.metrics, self.profile
        if self._shadowing is not None:
            metrics.shadow_info.remove(profile, *self._shadowing)
            for series in (metrics.shadow_started, metrics.shadow_windows, metrics.shadow_score):
                series.remove(profile)
            for model in ("current", "candidate"):
                for state in ("firing", "resolved"):
                    metrics.shadow_alerts.remove(profile, model, state)
        self._shadowing = None if candidate is None else (current, candidate)
        if candidate is None:
            return
        metrics.shadow_info.labels(profile, current, candidate).set(1)
        metrics.shadow_started.labels(profile).set_to_current_time()
        self._candidate_duration = metrics.scoring_duration.labels(
            profile=profile, model="candidate"
        )
        self._shadow_windows = metrics.shadow_windows.labels(profile)
        self._shadow_score = metrics.shadow_score.labels(profile)
        self._shadow_alerts = {
            (model, state): metrics.shadow_alerts.labels(profile, model, state)
            for model in ("current", "candidate")
            for state in ("firing", "resolved")
        }

    def shadow_batch(self, seconds: float, scores: np.ndarray) -> None:
        """Observe the candidate's batch time and scores."""
        self._candidate_duration.observe(seconds)
        if len(scores):
            self._shadow_windows.inc(len(scores))
            histogram = self._shadow_score
            for score in scores.tolist():
                histogram.observe(score)

    def shadow_alert(self, model: str, state: str) -> None:
        """Count the would-be (candidate) or published (current) transition."""
        self._shadow_alerts[model, state].inc()


class ReplaySensor(Sensor):
    """For records replayed to rebuild state: counts them, reports nothing else."""

    def __init__(self, metrics: DetectorMetrics) -> None:
        self.metrics = metrics

    def records(self, count: int) -> None:
        """Count replayed records."""
        self.metrics.rebuild_records.inc(count)
