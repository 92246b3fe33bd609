"""The detector daemon: poll -> parse -> admit -> window -> score in micro-batches -> alert -> commit.

Offsets are committed only when every window made from the records up to them has been scored
and the resulting alerts and dead letters are acknowledged by the broker, so a crash can repeat
alerts (same ``alert_id``) but never lose one.

When a partition is assigned (start-up, restart, rebalance) the daemon seeks back
``windows.rebuild_records`` before the group's committed offset and replays that stretch to
rebuild its devices' windows and alert state without publishing anything, so the first readings
after a handover are scored with full windows and the alerts match an uninterrupted run.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CorruptRecordError, KafkaError
from kafka.structs import OffsetAndMetadata

from detector.admission import Admitter, Placement
from detector.alerts import make_alert
from detector.artifact import Artifact, ArtifactError, describe, load_artifact
from detector.config import DetectorConfig
from detector.health import HealthState
from detector.kafka_compat import undecodable_position
from detector.kafka_io import (
    MAX_REQUEST_BYTES,
    OutboundMessage,
    Publisher,
    RebalanceEvents,
    alert_message,
    dead_letter_message,
    undecodable_dead_letter,
)
from detector.logs import RateLimitedLog
from detector.metrics import DetectorMetrics
from detector.readings import ReadingParser, Rejection, RejectReason
from detector.reload import ModelWatcher, swap_incompatibility
from detector.scoring import Scorer, top_sensor_shares
from detector.windows import WindowStore

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 200
_HOUSEKEEPING_INTERVAL_S = 1.0
_MAX_IDLE_TICK_S = 5.0  # a longer gap between housekeeping runs is a stalled loop, not idleness


class PendingWindows:
    """Ready windows waiting to be scored together, copied out of the ring buffers.

    ``batch_size`` windows make a batch, but a record is always ingested whole (a gateway batch
    can hold many readings), so the buffer grows past it rather than split a record.
    """

    def __init__(self, batch_size: int, length: int, n_features: int) -> None:
        self.batch_size = batch_size
        self.windows = np.empty((batch_size, length, n_features), dtype=np.float32)
        self.device_ids: list[str] = []
        self.spans: list[tuple[float, float]] = []
        self.live: list[bool] = []  # False while rebuilding: score for state, publish nothing
        self.oldest: float | None = None  # monotonic time the first window was added

    def __len__(self) -> int:
        return len(self.device_ids)

    @property
    def full(self) -> bool:
        """A batch's worth of windows is waiting."""
        return len(self.device_ids) >= self.batch_size

    def add(self, store: WindowStore, slot: int, device_id: str, live: bool, now: float) -> None:
        """Copy the device's current window in (it will change as more readings arrive)."""
        if len(self.device_ids) == len(self.windows):
            self.windows = np.concatenate([self.windows, np.empty_like(self.windows)])
        store.window(slot, out=self.windows[len(self.device_ids)])
        self.device_ids.append(device_id)
        self.spans.append(store.window_span(slot))
        self.live.append(live)
        if self.oldest is None:
            self.oldest = now

    def clear(self) -> None:
        """Forget everything after scoring."""
        self.device_ids.clear()
        self.spans.clear()
        self.live.clear()
        self.oldest = None


class Detector:
    """Owns the consumer loop; everything stateful about detection lives here."""

    def __init__(
        self,
        config: DetectorConfig,
        artifact: Artifact,
        consumer: KafkaConsumer,
        publisher: Publisher,
        metrics: DetectorMetrics,
        scorer: Scorer | None = None,
        health: HealthState | None = None,
    ) -> None:
        self.config = config
        self.artifact = artifact
        self.consumer = consumer
        self.publisher = publisher
        self.metrics = metrics
        self.health = health or HealthState()
        meta = artifact.metadata
        self.feature_names = meta.feature_names
        self.judge = config.alerts.judge(meta.threshold.value, 0.0)
        self._install_model(
            artifact,
            scorer
            or Scorer.from_artifact(
                artifact,
                config.scoring.device,
                config.scoring.max_batch_size,
                config.scoring.threads,
            ),
        )
        self.watcher = ModelWatcher(
            config.model.path, artifact.path, config.model.reload_interval_s
        )
        self.parser = ReadingParser(meta.feature_names, config.kafka.max_message_bytes)
        windows = config.windows
        self.store = WindowStore(
            meta.window_length,
            len(meta.feature_names),
            stride=windows.stride,
            max_devices=windows.max_devices,
        )
        self.admitter = Admitter(windows.policy(), self.store, meta.feature_names)
        self.pending = PendingWindows(
            config.scoring.max_batch_size, meta.window_length, len(meta.feature_names)
        )
        self.rebalance = RebalanceEvents(consumer, lambda: self._safe_offsets)
        self.records_consumed = 0
        self._batches_scored = 0
        self._stop = threading.Event()
        self._outbox: list[OutboundMessage] = []
        self._record_rejections: list[Rejection] = []  # of the record being ingested
        self._processed: dict[TopicPartition, int] = {}  # next offset after what was ingested
        self._committed: dict[TopicPartition, int] = {}
        # Offsets whose windows are all scored and whose output is acknowledged; replaced (never
        # mutated) so the rebalance listener on kafka-python's IO thread reads a consistent dict.
        self._safe_offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        self._resume_at: dict[TopicPartition, int] = {}  # below this offset: rebuilding
        self._partial_rebuild: set[TopicPartition] = set()  # the replay starts after the log's
        self._device_partition: dict[str, TopicPartition] = {}
        # Seconds the loop ran with the broker reachable: devices are idle by this clock, so a
        # broker outage or a stalled loop makes none idle, and no device's own clock counts.
        self._idle_clock = 0.0
        self._last_commit = 0.0
        self._last_housekeeping = 0.0
        self._bad_data_log = RateLimitedLog(log)
        self.health.model_loaded = True
        self.health.partitions_assigned = lambda: len(self.consumer.assignment())
        self.health.broker_reachable = self._broker_reachable
        # Evaluated at each scrape, like /readyz: a loop blocked in a publish retry cannot leave
        # them stale (the broker gauge stayed 1 through an outage /readyz reported).
        self.metrics.broker_reachable.set_function(lambda: float(self._broker_reachable()))
        self.metrics.devices_tracked.set_function(lambda: len(self.store))

    def _install_model(self, artifact: Artifact, scorer: Scorer) -> None:
        """Make ``artifact`` the model that scores every following batch."""
        meta = artifact.metadata
        self.artifact = artifact
        self.scorer = scorer
        self.threshold = meta.threshold.value
        reference = meta.threshold.error_summary.get("p50", 0.0)
        self.judge.install(self.threshold, reference)
        self.metrics.model_info.info(
            {
                "version": meta.version,
                "threshold": f"{self.threshold:.6g}",
                "window_length": str(meta.window_length),
                "features": ",".join(meta.feature_names),
            }
        )
        self.metrics.scoring_device.info({"device": str(scorer.device)})

    def reload_if_changed(self) -> None:
        """Swap in the registry's new ``current`` version if it loads, fits and warms up.

        Pending windows are scored by the old model first, so every record is scored exactly
        once; a version that fails is refused and the running model stays. So is a pointer that
        cannot be followed, counted and logged once per distinct problem.
        """
        try:
            candidate = self.watcher.candidate()
        except ArtifactError as exc:
            self.metrics.model_reloads.labels(result="rejected").inc()
            log.error("refused model pointer, keeping %s: %s", self.artifact.version, exc)
            return
        if candidate is None:
            return
        try:
            artifact = load_artifact(candidate)
            reason = swap_incompatibility(self.artifact.metadata, artifact.metadata)
            if reason is not None:
                raise ArtifactError(reason)
            scoring = self.config.scoring
            scorer = Scorer.from_artifact(
                artifact, scoring.device, scoring.max_batch_size, scoring.threads
            )
            scorer.warm_up(self.store.length)
        except (ArtifactError, RuntimeError, MemoryError) as exc:
            self.metrics.model_reloads.labels(result="rejected").inc()
            log.error(
                "refused model %s, keeping %s: %s", candidate.name, self.artifact.version, exc
            )
            return
        self.flush()
        previous = self.artifact.version
        self._install_model(artifact, scorer)
        self.metrics.model_reloads.labels(result="success").inc()
        log.info("model %s replaced %s", artifact.version, previous)

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
        self.consumer.subscribe(self.config.kafka.readings_topics, listener=self.rebalance)
        try:
            while not self._stop.is_set():
                self.reload_if_changed()
                try:
                    records = self.consumer.poll(timeout_ms=self._poll_timeout_ms())
                except CorruptRecordError as exc:
                    self._skip_undecodable(exc)
                    continue
                records = self.handle_rebalance(records)
                self.process(records)
                self.health.progressed()
                self.metrics.last_progress.set_to_current_time()
            self.flush()
            self._mark_safe()
            self.commit(force=True)
        finally:
            self.consumer.close(autocommit=False)
            log.info(
                "stopped after %d records; committed offsets %s",
                self.records_consumed,
                {f"{tp.topic}[{tp.partition}]": off for tp, off in sorted(self._committed.items())},
            )

    def _skip_undecodable(self, error: CorruptRecordError) -> None:
        """Move past a record the Kafka client cannot decode: dead-letter where it was, go on.

        Its offset counts as processed, so the commit moves past it and a restart does not
        meet it again; while rebuilding it was already counted when first consumed.
        """
        found = undecodable_position(self.consumer)
        if found is None:
            raise error  # nowhere known to seek to: a restart is the only way on
        tp, offset = found
        self.consumer.seek(tp, offset + 1)
        self._processed[tp] = offset + 1
        resume = self._resume_at.get(tp)
        live = resume is None or offset >= resume
        if not live:
            return
        self.metrics.records_rejected.labels(reason=RejectReason.UNDECODABLE.value).inc()
        self._bad_data_log.warning(
            RejectReason.UNDECODABLE.value,
            "skipped undecodable record %s offset %d: %s",
            tp,
            offset,
            error,
        )
        topic = self.config.kafka.dead_letter_topic
        if topic:
            self._outbox.append(undecodable_dead_letter(topic, tp, offset, str(error)))

    def handle_rebalance(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]]
    ) -> Mapping[TopicPartition, Sequence[ConsumerRecord]]:
        """Act on partitions revoked or assigned during the last poll.

        Devices of a partition that moved are forgotten (their slots freed; those of a partition
        that stays are rebuilt with it); a newly assigned partition is rewound
        before its committed offset so its windows are rebuilt before anything is published.
        Returns the poll's records minus those of rewound partitions.
        """
        revoked, assigned = self.rebalance.take()
        if not revoked and not assigned:
            return records
        # Windows already cut are scored with the alert state they were cut under; their
        # offsets stay uncommitted if the partition left, so its new owner repeats the same
        # alerts (same alert_id) rather than this daemon inventing ones from a reset state.
        self.flush()
        moved = revoked | assigned
        for device_id, tp in list(self._device_partition.items()):
            if tp in moved:
                self._forget(device_id)
                self.metrics.window_resets.labels(reason="rebalance").inc()
        for tp in moved:
            self._processed.pop(tp, None)
            self._committed.pop(tp, None)
            self._resume_at.pop(tp, None)
            self._partial_rebuild.discard(tp)
        self._safe_offsets = {tp: m for tp, m in self._safe_offsets.items() if tp not in moved}
        rewound = {tp for tp in sorted(assigned) if self._rewind(tp)}
        self.metrics.partitions_assigned.set(len(self.consumer.assignment()))
        log.info("partitions revoked %s, assigned %s", sorted(revoked), sorted(assigned))
        return {tp: batch for tp, batch in records.items() if tp not in rewound}

    def _rewind(self, tp: TopicPartition) -> bool:
        """Seek ``tp`` back to rebuild its windows; returns whether its position was changed."""
        try:
            committed = self.consumer.committed(tp)
            if committed is None:
                return False  # a new group: auto_offset_reset decides, nothing to rebuild
            beginning = self.consumer.beginning_offsets([tp])[tp]
        except KafkaError as exc:
            log.warning("cannot look up offsets of %s (%s); resuming without rebuild", tp, exc)
            return False
        start = max(beginning, committed - self.config.windows.rebuild_records)
        self.consumer.seek(tp, start)
        self._committed[tp] = committed
        if start < committed:
            self._resume_at[tp] = committed
            log.info("rebuilding %s from offset %d (committed %d)", tp, start, committed)
        if start > beginning:
            self._partial_rebuild.add(tp)
        return True

    def process(self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Ingest one poll's records; score, publish and commit when a batch is full or due."""
        now = time.time()
        for tp, batch in records.items():
            resume = self._resume_at.get(tp)
            live_count = 0
            for record in batch:
                live = resume is None or record.offset >= resume
                live_count += live
                self._ingest(tp, record, live, now)
                self._processed[tp] = record.offset + 1
                if self.pending.full:
                    # Between records a full batch is a safe point: everything ingested so far
                    # is scored and published once it returns, so it may be committed.
                    self.flush()
                    self._mark_safe()
                    self.commit()
            self.metrics.records_consumed.inc(live_count)
            self.metrics.rebuild_records.inc(len(batch) - live_count)
            self.records_consumed += live_count
            if resume is not None and self._processed.get(tp, 0) >= resume:
                del self._resume_at[tp]
                log.info("rebuilt %s up to offset %d", tp, resume)
                self._check_adaptation_rebuilt(tp)
        if self.pending and (
            self.pending.full or self._waited() * 1000 >= self.config.scoring.max_wait_ms
        ):
            self.flush()
        if not self.pending:
            self._publish_outbox()
            self._mark_safe()
            self.commit()
        self._housekeeping()

    def _check_adaptation_rebuilt(self, tp: TopicPartition) -> None:
        """Warn when the replay was too short to give the partition's devices their adaptation.

        Such a device's threshold adapts again from its next scores: it may page on a normal it
        had adapted to before the handover, until ``alerts.adaptation.windows`` scores are in.
        """
        if tp not in self._partial_rebuild or self.judge.adaptation is None:
            return
        self._partial_rebuild.discard(tp)
        self.flush()  # the replay's last windows are judged before counting
        devices = [d for d, p in self._device_partition.items() if p == tp]
        short = sum(self.judge.adapting(d) for d in devices)
        if short:
            log.warning(
                "%d of %d devices of %s have fewer than alerts.adaptation.windows (%d) scores "
                "after replaying windows.rebuild_records (%d): their thresholds adapt again from "
                "scratch; raise windows.rebuild_records to at least devices per partition x "
                "(window length - 1 + adaptation windows)",
                short,
                len(devices),
                tp,
                self.judge.adaptation.windows,
                self.config.windows.rebuild_records,
            )

    def _mark_safe(self) -> None:
        """Declare everything ingested so far committable (nothing pending, all published).

        The rebalance listener commits these when partitions are revoked, and so does
        ``close()``: leaving them behind the last commit would move the group backwards.
        """
        self._safe_offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self._processed.items()
            if tp not in self._resume_at
        }

    def _ingest(self, tp: TopicPartition, record: ConsumerRecord, live: bool, now: float) -> None:
        """Parse and admit one record's readings; its rejections make one dead letter.

        Nothing a record holds may stop the partition: an unexpected error while ingesting it
        rejects the rest of it (``internal_error``, logged with the traceback) and the loop goes
        on with the next record.
        """
        self._record_rejections = []
        try:
            message = self.parser.parse(record.value)
            for rejection in message.rejections:
                self._reject(rejection.reason, rejection.detail, record, rejection.index, live)
            if message.unknown_sensors and live:
                self.metrics.unknown_sensors.inc(message.unknown_sensors)
            for device_id, ts, values, index in zip(
                message.device_ids,
                message.timestamps,
                message.values,
                message.indices,
                strict=True,
            ):
                self._admit(tp, record, device_id, ts, values, index, live, now)
        except Exception as exc:
            if live:
                self._bad_data_log.warning(
                    "internal_error.trace",
                    "cannot ingest %s offset %d",
                    tp,
                    record.offset,
                    exc_info=True,
                )
            self._reject(RejectReason.INTERNAL_ERROR, repr(exc)[:200], record, None, live)
        topic = self.config.kafka.dead_letter_topic
        if topic and self._record_rejections:
            self._outbox.append(
                dead_letter_message(topic, record, self._record_rejections, MAX_REQUEST_BYTES)
            )

    def _admit(
        self,
        tp: TopicPartition,
        record: ConsumerRecord,
        device_id: str,
        ts: float,
        values: np.ndarray,
        index: int | None,
        live: bool,
        now: float,
    ) -> None:
        slot = self._slot(device_id)
        if slot is None:
            detail = f"{device_id}: {len(self.store)} devices, none idle long enough to replace"
            self._reject(RejectReason.TOO_MANY_DEVICES, detail, record, index, live)
            return
        if self._device_partition.get(device_id) != tp:
            self._device_partition[device_id] = tp
        self.store.touch(slot, self._idle_clock)
        admission = self.admitter.admit(slot, device_id, ts, values, now)
        if admission.imputed and live:
            self.metrics.imputed_readings.inc()
        if admission.reason is not None:
            self._reject(admission.reason, admission.detail, record, index, live)
            return
        if live:
            self.metrics.readings_accepted.inc()
            placement = admission.placement
            if placement is Placement.RESET or placement is Placement.CLOCK_RESET:
                reason = "gap" if placement is Placement.RESET else "clock"
                self.metrics.window_resets.labels(reason=reason).inc()
        if admission.ready:
            self.pending.add(self.store, slot, device_id, live, time.monotonic())

    def _slot(self, device_id: str) -> int | None:
        """The device's window slot; at ``max_devices`` a new device takes the longest-idle one's.

        Only a device silent for ``capacity_min_idle_s`` is replaced, otherwise the new device
        is refused (``None``): a fleet larger than the limit whose devices all report would
        have each device replaced just before its next reading, and none would fill a window.
        """
        try:
            return self.store.slot(device_id)
        except OverflowError:
            oldest = self.store.longest_idle()
            if oldest is None or self._idle_clock - oldest[1] < (
                self.config.windows.capacity_min_idle_s
            ):
                return None
        if self._forget(oldest[0]):
            self._bad_data_log.warning(
                "evicted_firing",
                "replaced firing device %s at max_devices: its episode gets no resolved alert",
                oldest[0],
            )
        self.metrics.devices_evicted.labels(reason="capacity").inc()
        return self.store.slot(device_id)

    def _forget(self, device_id: str) -> bool:
        """Drop all of a device's state and free its slot; returns whether it was firing."""
        self.store.remove(device_id)
        self.admitter.forget(device_id)
        self._device_partition.pop(device_id, None)
        firing = self.judge.forget(device_id)
        if firing:
            self.metrics.alerts_firing.dec()
        return firing

    def _forget_idle(self) -> None:
        """Forget devices silent for ``device_idle_timeout_s`` of the idle clock, unless firing.

        A firing device is kept, so that when it reports again its episode resolves (or goes on)
        rather than stay open on the alerts topic; at ``max_devices`` it can still be replaced.
        """
        timeout = self.config.windows.device_idle_timeout_s
        if timeout is None:
            return
        forgotten = 0
        for device_id in self.store.idle(before=self._idle_clock - timeout):
            if not self.judge.firing(device_id):
                self._forget(device_id)
                forgotten += 1
        if forgotten:
            self.metrics.devices_evicted.labels(reason="idle").inc(forgotten)
            log.info("forgot %d devices silent for over %g s", forgotten, timeout)

    def _reject(
        self,
        reason: RejectReason,
        detail: str,
        record: ConsumerRecord,
        index: int | None,
        live: bool,
    ) -> None:
        if not live:
            return  # counted and dead-lettered when it was first consumed
        self.metrics.records_rejected.labels(reason=reason.value).inc()
        self._bad_data_log.warning(reason.value, "rejected reading (%s): %s", reason.value, detail)
        self._record_rejections.append(Rejection(reason, detail, index))

    def flush(self) -> None:
        """Score every pending window, run the alert rule and publish alerts and dead letters."""
        count = len(self.pending)
        if count:
            self._score_pending(count)
        self._publish_outbox()

    def _score_pending(self, count: int) -> None:
        live = np.asarray(self.pending.live, dtype=bool)
        live_count = int(live.sum())
        if live_count:
            self.metrics.batch_wait.observe(self._waited())
        started = time.perf_counter()
        errors = self.scorer.sensor_errors(self.pending.windows[:count])
        self._batches_scored += 1
        scoring = self.config.scoring
        if scoring.artificial_delay_ms and (
            scoring.artificial_delay_batches is None
            or self._batches_scored <= scoring.artificial_delay_batches
        ):
            time.sleep(scoring.artificial_delay_ms / 1000)
        self.metrics.scoring_duration.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(count)
        self.metrics.windows_scored.inc(live_count)
        scores = self.scorer.window_scores(errors)
        detected_at = time.time()
        topic = self.config.kafka.alerts_topic
        for i in range(count):
            score = float(scores[i])
            if live[i]:
                self.metrics.anomaly_score.observe(score)
            device_id = self.pending.device_ids[i]
            threshold, transition = self.judge.judge(device_id, score)
            if transition is None or not live[i]:
                continue
            top = top_sensor_shares(errors[i], self.feature_names, self.config.alerts.top_sensors)
            alert = make_alert(
                transition,
                device_id,
                self.pending.spans[i],
                score,
                threshold,
                self.artifact.version,
                top,
                detected_at,
            )
            self._outbox.append(alert_message(topic, alert))
            self.metrics.alerts.labels(state=transition).inc()
            log.info(
                "alert %s device=%s score=%.4g severity=%.2f top=%s",
                transition,
                device_id,
                score,
                alert.severity,
                top[0]["sensor"] if top else "-",
            )
        self.pending.clear()
        self.metrics.alerts_firing.set(self.judge.firing_count())

    def _publish_outbox(self) -> None:
        if not self._outbox:
            return
        messages, self._outbox = self._outbox, []
        self.publisher.publish(messages)
        dead = sum(1 for m in messages if m.dead_letter)
        if dead:
            self.metrics.dead_letters.inc(dead)

    def commit(self, force: bool = False) -> None:
        """Commit processed offsets of assigned partitions (only call with nothing pending)."""
        now = time.monotonic()
        if not force and (now - self._last_commit) * 1000 < self.config.commit_interval_ms:
            return
        assigned = self.consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self._processed.items()
            if tp in assigned and self._committed.get(tp) != offset and tp not in self._resume_at
        }
        self._last_commit = now
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            # The broker is away or another member owns these partitions now; either way the
            # records are re-read from the last commit, which repeats work but loses nothing.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (%s); will retry", exc)
            return
        self.metrics.commits.inc()
        self._committed.update({tp: meta.offset for tp, meta in offsets.items()})

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < _HOUSEKEEPING_INTERVAL_S:
            return
        if self._broker_reachable():
            self._idle_clock += min(now - self._last_housekeeping, _MAX_IDLE_TICK_S)
        self._last_housekeeping = now
        self._forget_idle()
        # A device forgotten while its window waited in the batch got its decision state back
        # when the window was scored; every state should belong to a tracked device.
        store = self.store
        if len(self.judge.devices) > len(store):
            self.judge.retain(store)
        if self.store.compact():
            # Deleting keys never shrinks a dict; copies are sized to what is left.
            self._device_partition = dict(self._device_partition)
            self.judge.retain(store)
            self.admitter.retain(store)
            _return_freed_memory()
        assignment = self.consumer.assignment()
        self.metrics.partitions_assigned.set(len(assignment))
        for tp in assignment:
            highwater = self.consumer.highwater(tp)
            position = self._processed.get(tp)
            if highwater is not None and position is not None:
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(highwater - position, 0)
                )

    def _broker_reachable(self) -> bool:
        # A connection still being retried counts as open, so once the consumer has joined its
        # group also require a recent heartbeat answer from the coordinator (every member, with
        # or without partitions, heartbeats every heartbeat_interval_ms). An outage can also
        # empty the assignment, so an empty one is no excuse after the first join.
        metrics = self.consumer.metrics() or {}  # None once the consumer is closed
        connections = metrics.get("consumer-metrics", {}).get("connection-count", 0)
        recent = _heartbeat_answer_age(self.consumer) < self.config.kafka.session_timeout_ms / 1000
        return connections > 0 and (recent or not self.rebalance.joined)

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


def _return_freed_memory() -> None:
    """Give the heap that forgotten devices freed back to the OS (glibc only; else a no-op).

    glibc keeps freed small blocks for reuse: with 300 000 devices forgotten RSS stayed at
    359 MiB (285 at start, 533 with them), 309 after a trim alone, 295 with a collection first.
    """
    gc.collect()  # parsed records and their readings can sit in reference cycles
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _heartbeat_answer_age(consumer: KafkaConsumer) -> float:
    """Seconds since the group coordinator last answered a heartbeat (``inf``: never).

    kafka-python's ``last-heartbeat-seconds-ago`` metric counts heartbeats *sent*, and it goes on
    sending (and failing) to a coordinator it has not yet noticed is gone; only its heartbeat
    object (not public API) records answers, so the metric is the fallback if that changes.
    """
    heartbeat = getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)
    answered = getattr(heartbeat, "last_receive", None)
    if isinstance(answered, float):
        return time.monotonic() - answered
    coordinator = consumer.metrics().get("consumer-coordinator-metrics", {})
    return float(coordinator.get("last-heartbeat-seconds-ago", math.inf))
