"""Prometheus metrics of the daemon (``detector_`` prefix, no per-device labels).

Metrics about a model's work carry a ``profile`` label: the configured profile names (``default``
in the single-model form), never values taken from the data.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from detector.core.readings import RejectReason
from detector.core.routing import DEFAULT_PROFILE

__all__ = ["DetectorMetrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Scores are reported relative to the threshold would hide drift in the threshold itself, so the
# histogram is of raw scores on a log-spaced grid wide enough for any scaled-MSE model.
_SCORE_BUCKETS = tuple(round(10 ** (e / 4), 6) for e in range(-16, 9))


class DetectorMetrics:
    """All daemon metrics on one registry (its own, so tests can run several daemons)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        profiles: Sequence[str] = (DEFAULT_PROFILE,),
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "detector_records_consumed",
            "Kafka records consumed from the readings topics",
            registry=r,
        )
        self.readings_accepted = Counter(
            "detector_readings_accepted",
            "Readings accepted into a device window",
            ["profile"],
            registry=r,
        )
        self.records_rejected = Counter(
            "detector_records_rejected",
            "Records (or readings inside a batch record) rejected, by reason",
            ["reason"],
            registry=r,
        )
        self.unknown_sensors = Counter(
            "detector_unknown_sensors",
            "Sensor values ignored because the model has no such sensor",
            registry=r,
        )
        self.windows_scored = Counter(
            "detector_windows_scored", "Windows scored by the model", ["profile"], registry=r
        )
        self.batch_size = Histogram(
            "detector_batch_size",
            "Windows per scoring batch",
            ["profile"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.scoring_duration = Histogram(
            "detector_scoring_duration_seconds",
            "Wall time of one scoring batch (model: current, or the candidate in shadow)",
            ["profile", "model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "detector_batch_wait_seconds",
            "Time the oldest window of a batch waited to be scored",
            ["profile"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.loop_phase = Histogram(
            "detector_loop_phase_seconds",
            "Wall time of each phase of one main-loop iteration (poll includes waiting for records)",
            ["phase"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.anomaly_score = Histogram(
            "detector_anomaly_score",
            "Window reconstruction-error scores",
            ["profile"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.alerts = Counter(
            "detector_alerts", "Alerts published, by state", ["profile", "state"], registry=r
        )
        self.alerts_firing = Gauge(
            "detector_alerts_firing", "Devices currently firing", ["profile"], registry=r
        )
        self.devices_tracked = Gauge(
            "detector_devices_tracked", "Devices with a rolling window", ["profile"], registry=r
        )
        self.devices_evicted = Counter(
            "detector_devices_evicted",
            "Devices forgotten (idle: silent past the timeout; capacity: replaced at the limit)",
            ["profile", "reason"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "detector_consumer_lag",
            "Records behind the partition high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.publish_failures = Counter(
            "detector_alert_publish_failures",
            "Alert publishes that failed and were retried",
            registry=r,
        )
        self.producer_replacements = Counter(
            "detector_producer_replacements",
            "Producers closed and built anew after a failed publish attempt (a wedged producer)",
            registry=r,
        )
        self.dead_letters_dropped = Counter(
            "detector_dead_letters_dropped",
            "Dead letters the broker refused even without their content; offsets are in the log",
            registry=r,
        )
        self.commits = Counter(
            "detector_offset_commits", "Offset commits that succeeded", registry=r
        )
        self.commit_failures = Counter(
            "detector_offset_commit_failures", "Offset commits that failed", registry=r
        )
        self.model_info = Info(
            "detector_model", "The model artifact in use", ["profile"], registry=r
        )
        self.scoring_device = Info("detector_scoring", "Where the model runs", registry=r)
        self.last_progress = Gauge(
            "detector_last_progress_timestamp_seconds",
            "When the main loop last completed a poll",
            registry=r,
        )
        self.dead_letters = Counter(
            "detector_dead_letters",
            "Rejected records published to the dead-letter topic",
            registry=r,
        )
        self.imputed_readings = Counter(
            "detector_imputed_readings",
            "Readings whose missing sensors were filled from the previous reading",
            ["profile"],
            registry=r,
        )
        self.window_resets = Counter(
            "detector_window_resets",
            "Device windows restarted (gap: a long silence; clock: a run of late readings; "
            "rebalance: partition moved)",
            ["profile", "reason"],
            registry=r,
        )
        self.rebuild_records = Counter(
            "detector_rebuild_records",
            "Records re-read before the committed offset to rebuild windows of assigned partitions",
            registry=r,
        )
        self.model_reloads = Counter(
            "detector_model_reloads",
            "Attempts to swap in a new current or candidate model version, by result",
            ["profile", "result"],
            registry=r,
        )
        self.score_drift = Gauge(
            "detector_score_drift",
            "Population stability index of recent live window scores (firing devices left out) "
            "against the model's validation scores; NaN until drift.min_windows",
            ["profile"],
            registry=r,
        )
        self.shadow_info = Gauge(
            "detector_shadow_info",
            "1 for the candidate model scored in shadow beside the current one",
            ["profile", "current", "candidate"],
            registry=r,
        )
        self.shadow_started = Gauge(
            "detector_shadow_started_timestamp_seconds",
            "When shadow scoring of the profile's candidate began",
            ["profile"],
            registry=r,
        )
        self.shadow_windows = Counter(
            "detector_shadow_windows_scored",
            "Windows scored by both the current and the candidate model since the candidate came",
            ["profile"],
            registry=r,
        )
        self.shadow_alerts = Counter(
            "detector_shadow_alerts",
            "Alert transitions on the windows both models scored, by model (only current's are "
            "published)",
            ["profile", "model", "state"],
            registry=r,
        )
        self.shadow_score = Histogram(
            "detector_shadow_anomaly_score",
            "Window scores of the candidate model",
            ["profile"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.partitions_assigned = Gauge(
            "detector_partitions_assigned", "Partitions assigned to this daemon", registry=r
        )
        self.broker_reachable = Gauge(
            "detector_broker_reachable",
            "1 when the consumer holds a broker connection and its group heartbeat answers "
            "(what /readyz reports)",
            registry=r,
        )
        for reason in RejectReason:
            self.records_rejected.labels(reason=reason.value)
        for profile in profiles:
            self.readings_accepted.labels(profile=profile)
            self.imputed_readings.labels(profile=profile)
            self.windows_scored.labels(profile=profile)
            self.alerts_firing.labels(profile=profile)
            for state in ("firing", "resolved"):
                self.alerts.labels(profile=profile, state=state)
            for result in ("success", "rejected"):
                self.model_reloads.labels(profile=profile, result=result)
            for reason in ("gap", "clock", "rebalance"):
                self.window_resets.labels(profile=profile, reason=reason)
            for reason in ("idle", "capacity"):
                self.devices_evicted.labels(profile=profile, reason=reason)
