"""The detector daemon's loop: poll -> :class:`~detector.pipeline.Pipeline` -> publish -> commit.

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

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CorruptRecordError, KafkaError
from kafka.structs import OffsetAndMetadata

from detector.config import DetectorConfig
from detector.core.artifact import Artifact, ArtifactError, describe, load_artifact
from detector.core.scoring import Scorer
from detector.health import HealthState
from detector.kafka_compat import undecodable_position
from detector.kafka_io import Publisher, RebalanceEvents
from detector.metrics import DetectorMetrics
from detector.pipeline import Output, Pipeline
from detector.reload import ModelWatcher, swap_incompatibility
from detector.sensor import MetricsSensor, ReplaySensor

__all__ = ["Detector", "install_signal_handlers"]

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 200
_HOUSEKEEPING_INTERVAL_S = 1.0
_MAX_IDLE_TICK_S = 5.0  # a longer gap between housekeeping runs is a stalled loop, not idleness


class Detector:
    """The consumer loop: poll, hand the records to the :class:`Pipeline`, publish, commit.

    Also owns what is about Kafka itself: the group's rebalances (forget what moved, rewind
    what arrived to rebuild it), undecodable records, offsets commits, lag and broker health,
    and swapping in a new model version.
    """

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
        self.consumer = consumer
        self.publisher = publisher
        self.metrics = metrics
        self.health = health or HealthState()
        scorer = scorer or Scorer.from_artifact(
            artifact,
            config.scoring.device,
            config.scoring.max_batch_size,
            config.scoring.threads,
        )
        self.pipeline = Pipeline(
            config, artifact, scorer, MetricsSensor(metrics), ReplaySensor(metrics)
        )
        self._describe_model()
        self.watcher = ModelWatcher(
            config.model.path, artifact.path, config.model.reload_interval_s
        )
        offsets = self.pipeline.offsets
        self.rebalance = RebalanceEvents(
            consumer,
            lambda: {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.safe.items()},
        )
        self._stop = threading.Event()
        self._last_commit = 0.0
        self._last_housekeeping = 0.0
        self.health.model_loaded = True
        self.health.partitions_assigned = lambda: len(self.consumer.assignment())
        self.health.broker_reachable = self._broker_reachable
        # Evaluated at each scrape, like /readyz: a loop blocked in a publish retry cannot leave
        # them stale (the broker gauge stayed 1 through an outage /readyz reported).
        self.metrics.broker_reachable.set_function(lambda: float(self._broker_reachable()))
        self.metrics.devices_tracked.set_function(lambda: len(self.pipeline.registry))

    @property
    def artifact(self) -> Artifact:
        """The model in use."""
        return self.pipeline.artifact

    @property
    def records_consumed(self) -> int:
        """New records ingested so far (replays after a handover not counted)."""
        return self.pipeline.records_consumed

    def _describe_model(self) -> None:
        meta = self.pipeline.artifact.metadata
        self.metrics.model_info.info(
            {
                "version": meta.version,
                "threshold": f"{meta.threshold.value:.6g}",
                "window_length": str(meta.window_length),
                "features": ",".join(meta.feature_names),
            }
        )
        self.metrics.scoring_device.info({"device": str(self.pipeline.scorer.device)})

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
            scorer.warm_up(artifact.metadata.window_length)
        except (ArtifactError, RuntimeError, MemoryError) as exc:
            self.metrics.model_reloads.labels(result="rejected").inc()
            log.error(
                "refused model %s, keeping %s: %s", candidate.name, self.artifact.version, exc
            )
            return
        previous = self.artifact.version
        self.pipeline.install(artifact, scorer)
        self._describe_model()
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
            "scoring on %s, consuming %s",
            self.pipeline.scorer.device,
            self.config.kafka.readings_topics,
        )
        self.pipeline.scorer.warm_up(self.artifact.metadata.window_length)
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
            self._deliver(self.pipeline.flush())
            self.commit(force=True)
        finally:
            self.consumer.close(autocommit=False)
            committed = self.pipeline.offsets.committed_offsets
            log.info(
                "stopped after %d records; committed offsets %s",
                self.records_consumed,
                {f"{tp.topic}[{tp.partition}]": off for tp, off in sorted(committed.items())},
            )

    def process(self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]]) -> None:
        """Run one poll's records through the pipeline; publish what it made, then commit."""
        self._deliver(self.pipeline.process(records))
        self.commit()
        self._housekeeping()

    def flush(self) -> None:
        """Score every pending window and publish the alerts and dead letters."""
        self._deliver(self.pipeline.flush())

    def _deliver(self, output: Output) -> None:
        """Publish (blocks until acknowledged), then declare the offsets it covers safe."""
        if output.messages:
            self.publisher.publish(output.messages)
            dead = len(output.dead_letters)
            if dead:
                self.metrics.dead_letters.inc(dead)
        if output.safe is not None:
            self.pipeline.offsets.mark_safe(output.safe)

    def _skip_undecodable(self, error: CorruptRecordError) -> None:
        """Move past a record the Kafka client cannot decode (see the pipeline's own)."""
        found = undecodable_position(self.consumer)
        if found is None:
            raise error  # nowhere known to seek to: a restart is the only way on
        tp, offset = found
        self.consumer.seek(tp, offset + 1)
        self.pipeline.skip_undecodable(tp, offset, str(error))

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
        output = self.pipeline.flush()
        output.safe = None
        self._deliver(output)
        self.pipeline.forget_partitions(revoked | assigned)
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
        self.pipeline.offsets.rewound(tp, start, committed, beginning)
        if start < committed:
            log.info("rebuilding %s from offset %d (committed %d)", tp, start, committed)
        return True

    def commit(self, force: bool = False) -> None:
        """Commit the safe offsets of assigned partitions not committed yet."""
        now = time.monotonic()
        if not force and (now - self._last_commit) * 1000 < self.config.commit_interval_ms:
            return
        pending = self.pipeline.offsets.uncommitted(self.consumer.assignment())
        self._last_commit = now
        if not pending:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in pending.items()})
        except KafkaError as exc:
            # The broker is away or another member owns these partitions now; either way the
            # records are re-read from the last commit, which repeats work but loses nothing.
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (%s); will retry", exc)
            return
        self.metrics.commits.inc()
        self.pipeline.offsets.committed(pending)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < _HOUSEKEEPING_INTERVAL_S:
            return
        if self._broker_reachable():
            self.pipeline.idle_clock += min(now - self._last_housekeeping, _MAX_IDLE_TICK_S)
        self._last_housekeeping = now
        if self.pipeline.housekeeping():
            _return_freed_memory()
        assignment = self.consumer.assignment()
        self.metrics.partitions_assigned.set(len(assignment))
        for tp in assignment:
            highwater = self.consumer.highwater(tp)
            position = self.pipeline.offsets.position(tp)
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

    def _poll_timeout_ms(self) -> int:
        wait = self.pipeline.wait_ms()
        return _IDLE_POLL_MS if wait is None else wait


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
