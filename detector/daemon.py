"""The detector daemon: poll -> parse -> window -> score in micro-batches -> alert -> commit.

Offsets are committed only when every window made from the records up to them has been scored
and the resulting alerts are acknowledged by the broker, so a crash can repeat alerts (same
``alert_id``) but never lose one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from detector.alerts import Alert, AlertRule, AlertTracker, TopSensor, alert_id
from detector.artifact import Artifact, describe
from detector.config import DetectorConfig
from detector.kafka_io import AlertPublisher
from detector.logs import RateLimitedLog
from detector.metrics import DetectorMetrics
from detector.readings import ParsedMessage, ReadingParser, Rejection, RejectReason
from detector.scoring import Scorer, top_sensor_shares, window_scores
from detector.windows import WindowStore

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 200


class PendingWindows:
    """Ready windows waiting to be scored together, copied out of the ring buffers."""

    def __init__(self, capacity: int, length: int, n_features: int) -> None:
        self.windows = np.empty((capacity, length, n_features), dtype=np.float32)
        self.device_ids: list[str] = []
        self.spans: list[tuple[float, float]] = []
        self.oldest: float | None = None  # monotonic time the first window was added

    def __len__(self) -> int:
        return len(self.device_ids)

    @property
    def full(self) -> bool:
        """No room for another window."""
        return len(self.device_ids) == len(self.windows)

    def add(self, store: WindowStore, slot: int, device_id: str, now: float) -> None:
        """Copy the device's current window in (it will change as more readings arrive)."""
        store.window(slot, out=self.windows[len(self.device_ids)])
        self.device_ids.append(device_id)
        self.spans.append(store.window_span(slot))
        if self.oldest is None:
            self.oldest = now

    def clear(self) -> None:
        """Forget everything after scoring."""
        self.device_ids.clear()
        self.spans.clear()
        self.oldest = None


class Detector:
    """Owns the consumer loop; everything stateful about detection lives here."""

    def __init__(
        self,
        config: DetectorConfig,
        artifact: Artifact,
        consumer: KafkaConsumer,
        publisher: AlertPublisher,
        metrics: DetectorMetrics,
        scorer: Scorer | None = None,
    ) -> None:
        self.config = config
        self.artifact = artifact
        self.consumer = consumer
        self.publisher = publisher
        self.metrics = metrics
        meta = artifact.metadata
        self.feature_names = meta.feature_names
        self.threshold = meta.threshold.value
        self.scorer = scorer or Scorer.from_artifact(
            artifact, config.scoring.device, config.scoring.max_batch_size
        )
        self.parser = ReadingParser(meta.feature_names, config.kafka.max_partition_fetch_bytes)
        self.store = WindowStore(
            meta.window_length,
            len(meta.feature_names),
            stride=config.windows.stride,
            max_devices=config.windows.max_devices,
        )
        self.pending = PendingWindows(
            config.scoring.max_batch_size, meta.window_length, len(meta.feature_names)
        )
        self.tracker = AlertTracker(
            AlertRule(config.alerts.fire_k, config.alerts.fire_n, config.alerts.resolve_after)
        )
        self._stop = threading.Event()
        self.records_consumed = 0
        self._processed: dict[TopicPartition, int] = {}  # next offset to commit
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        self._bad_data_log = RateLimitedLog(log)
        metrics.model_info.info(
            {
                "version": meta.version,
                "threshold": f"{self.threshold:.6g}",
                "window_length": str(meta.window_length),
                "features": ",".join(meta.feature_names),
            }
        )
        metrics.scoring_device.info({"device": str(self.scorer.device)})

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the loop to finish: it scores what is pending, publishes, commits and returns."""
        self._stop.set()

    def run(self) -> None:
        """Consume until :meth:`stop`; then drain and close the consumer."""
        log.info("model %s", describe(self.artifact))
        log.info(
            "scoring on %s, consuming %s", self.scorer.device, self.config.kafka.readings_topics
        )
        self.scorer.warm_up(self.store.length)
        try:
            while not self._stop.is_set():
                records = self.consumer.poll(timeout_ms=self._poll_timeout_ms())
                self.process(records)
                self.metrics.last_progress.set_to_current_time()
            self.flush()
            self.commit(force=True)
        finally:
            self.consumer.close(autocommit=False)
            log.info(
                "stopped after %d records; committed offsets %s",
                self.records_consumed,
                {
                    f"{tp.topic}[{tp.partition}]": offset
                    for tp, offset in sorted(self._committed.items())
                },
            )

    def process(self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Ingest one poll's records; score and commit when a batch is full or due."""
        for partition, batch in records.items():
            for record in batch:
                self._ingest(self.parser.parse(record.value))
                self._processed[partition] = record.offset + 1
            self.metrics.records_consumed.inc(len(batch))
            self.records_consumed += len(batch)
        if self.pending and (
            self.pending.full or self._waited() * 1000 >= self.config.scoring.max_wait_ms
        ):
            self.flush()
        if not self.pending:
            self.commit()
        self.metrics.devices_tracked.set(len(self.store))
        self._update_lag()

    def _ingest(self, message: ParsedMessage) -> None:
        for rejection in message.rejections:
            self._reject(rejection)
        if message.unknown_sensors:
            self.metrics.unknown_sensors.inc(message.unknown_sensors)
        now = time.monotonic()
        for device_id, ts, values in zip(
            message.device_ids, message.timestamps, message.values, strict=True
        ):
            try:
                slot = self.store.slot(device_id)
            except OverflowError as exc:
                self._reject(Rejection(RejectReason.INVALID_TYPE, str(exc)))
                continue
            if ts <= self.store.last_timestamp(device_id):
                self._reject(
                    Rejection(RejectReason.OUT_OF_ORDER, f"{device_id} ts {ts} not after last")
                )
                continue
            self.metrics.readings_accepted.inc()
            if self.store.append(slot, ts, values):
                self.pending.add(self.store, slot, device_id, now)
                if self.pending.full:
                    self.flush()

    def _reject(self, rejection: Rejection) -> None:
        self.metrics.records_rejected.labels(reason=rejection.reason.value).inc()
        self._bad_data_log.warning(
            rejection.reason.value,
            "rejected reading (%s): %s",
            rejection.reason.value,
            rejection.detail,
        )

    def flush(self) -> None:
        """Score every pending window, run the alert rule and publish the resulting alerts."""
        count = len(self.pending)
        if count == 0:
            return
        self.metrics.batch_wait.observe(self._waited())
        started = time.perf_counter()
        errors = self.scorer.sensor_errors(self.pending.windows[:count])
        self.metrics.scoring_duration.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(count)
        self.metrics.windows_scored.inc(count)
        scores = window_scores(errors)
        detected_at = time.time()
        alerts = []
        for i in range(count):
            score = float(scores[i])
            self.metrics.anomaly_score.observe(score)
            device_id = self.pending.device_ids[i]
            transition = self.tracker.update(device_id, score > self.threshold)
            if transition is None:
                continue
            start, end = self.pending.spans[i]
            top = top_sensor_shares(errors[i], self.feature_names, self.config.alerts.top_sensors)
            alerts.append(
                Alert(
                    alert_id=alert_id(device_id, end, self.artifact.version, transition),
                    state=transition,
                    device_id=device_id,
                    window_start=start,
                    window_end=end,
                    score=score,
                    threshold=self.threshold,
                    severity=score / self.threshold,
                    model_version=self.artifact.version,
                    top_sensors=[TopSensor.model_validate(item) for item in top],
                    detected_at=detected_at,
                )
            )
        self.pending.clear()
        if alerts:
            self.publisher.publish(alerts)
            for alert in alerts:
                self.metrics.alerts.labels(state=alert.state).inc()
                log.info(
                    "alert %s device=%s score=%.4g severity=%.2f top=%s",
                    alert.state,
                    alert.device_id,
                    alert.score,
                    alert.severity,
                    alert.top_sensors[0].sensor if alert.top_sensors else "-",
                )
        self.metrics.alerts_firing.set(self.tracker.firing_count())

    def commit(self, force: bool = False) -> None:
        """Commit processed offsets of assigned partitions (only call with nothing pending)."""
        now = time.monotonic()
        if not force and (now - self._last_commit) * 1000 < self.config.commit_interval_ms:
            return
        assigned = self.consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self._processed.items()
            if tp in assigned and self._committed.get(tp) != offset
        }
        self._last_commit = now
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Another member may own these partitions now; it re-reads from the last commit,
            # which repeats work but loses nothing.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (%s); records will be re-read", exc)
            return
        self.metrics.commits.inc()
        self._committed.update({tp: meta.offset for tp, meta in offsets.items()})

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            position = self._processed.get(tp)
            if highwater is not None and position is not None:
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(highwater - position, 0)
                )

    def _waited(self) -> float:
        oldest = self.pending.oldest
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _poll_timeout_ms(self) -> int:
        if not self.pending:
            return _IDLE_POLL_MS
        remaining = self.config.scoring.max_wait_ms - self._waited() * 1000
        return max(int(remaining), 0)


def install_signal_handlers(detector: Detector) -> None:
    """SIGTERM and SIGINT stop the loop gracefully."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        detector.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
