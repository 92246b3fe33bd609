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
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from detector.clients import ClientError, Consumer, Partition, Record, Undecodable
from detector.config import DetectorConfig
from detector.core.artifact import ArtifactError, describe, resolve_candidate
from detector.core.routing import DEFAULT_PROFILE
from detector.health import HealthState
from detector.kafka_io import Publisher
from detector.lane import Lane, Model
from detector.metrics import DetectorMetrics
from detector.pipeline import Output, Pipeline
from detector.reload import BackgroundLoader, CandidateWatcher, FinishedLoad, ModelWatcher, Role
from detector.sensor import MetricsSensor, ReplaySensor

__all__ = ["Detector", "install_signal_handlers", "tune_garbage_collector"]

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 200
_HOUSEKEEPING_INTERVAL_S = 1.0
_MAX_IDLE_TICK_S = 5.0  # a longer gap between housekeeping runs is a stalled loop, not idleness


def _candidate_at_start(registry: Path, loaded: Model | None) -> Path | None:
    """What the candidate pointer named when the daemon started, loaded or refused then.

    A candidate refused at start-up was logged there; offering it again at the first registry
    check would only load and refuse it a second time on the loop.
    """
    if loaded is not None:
        return loaded.artifact.path
    try:
        return resolve_candidate(registry)
    except ArtifactError:
        return None


class Detector:
    """The consumer loop: poll, hand the records to the :class:`Pipeline`, publish, commit.

    Also owns what is about Kafka itself: the group's rebalances (forget what moved, rewind
    what arrived to rebuild it), undecodable records, offsets commits, lag and broker health,
    and swapping in a new model version (loaded on a worker thread, swapped in between polls).
    """

    def __init__(
        self,
        config: DetectorConfig,
        models: Mapping[str, Model],
        consumer: Consumer,
        publisher: Publisher,
        metrics: DetectorMetrics,
        health: HealthState | None = None,
        candidates: Mapping[str, Model] | None = None,
    ) -> None:
        """``models``: each profile's current model; ``candidates``: those to score in shadow."""
        self.config = config
        self.consumer = consumer
        self.publisher = publisher
        self.metrics = metrics
        # Where a slow iteration spent its time (detector_loop_phase_seconds).
        self._phases = {
            phase: metrics.loop_phase.labels(phase=phase)
            for phase in ("reload", "poll", "pipeline", "publish", "commit", "housekeeping")
        }
        self.health = health or HealthState()
        self.pipeline = Pipeline(config, models, MetricsSensor(metrics), ReplaySensor(metrics))
        profiles = config.model.profile_map()
        interval = config.model.reload_interval_s
        self._watchers: dict[str, tuple[ModelWatcher, CandidateWatcher | None]] = {}
        self._loader = BackgroundLoader(config.scoring)
        for lane in self.pipeline.lanes:
            candidate = (candidates or {}).get(lane.name)
            if candidate is not None:
                self.pipeline.shadow(lane.name, candidate)
            registry = profiles[lane.name].path
            self._watchers[lane.name] = (
                ModelWatcher(registry, lane.model.artifact.path, interval),
                CandidateWatcher(registry, _candidate_at_start(registry, candidate), interval)
                if config.model.shadow
                else None,
            )
            self._describe_model(lane)
            # Evaluated at each scrape: a lane's devices and drift change between polls.
            metrics.devices_tracked.labels(profile=lane.name).set_function(
                lambda lane=lane: len(lane.registry)
            )
            metrics.score_drift.labels(profile=lane.name).set_function(lane.drift_score)
        self.metrics.scoring_device.info(
            {"device": str(models[self.pipeline.lanes[0].name].scorer.device)}
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

    def model(self, profile: str = DEFAULT_PROFILE) -> Model:
        """The model whose alerts are published for ``profile``."""
        return self.pipeline.lane(profile).model

    @property
    def records_consumed(self) -> int:
        """New records ingested so far (replays after a handover not counted)."""
        return self.pipeline.records_consumed

    def _describe_model(self, lane: Lane) -> None:
        meta = lane.model.artifact.metadata
        self.metrics.model_info.labels(profile=lane.name).info(
            {
                "version": meta.version,
                "threshold": f"{meta.threshold.value:.6g}",
                "window_length": str(meta.window_length),
                "features": ",".join(meta.feature_names),
            }
        )

    def reload_if_changed(self) -> None:
        """Swap in the versions that finished loading, then start loading any newly pointed at.

        Loading, checking and warming up run on a worker thread (:class:`BackgroundLoader`), so
        this returns at once and the loop goes on polling; a version is swapped in at a later
        call, once it is ready. Pending windows are scored by the old model first, so every
        record is scored exactly once; a version that fails is refused and the running model
        stays. So is a pointer that cannot be followed, counted and logged once per distinct
        problem. A pointer that moves again while a load runs supersedes it: only the newest
        version is swapped in. Profiles are independent: one's reload touches no other's models
        or state.
        """
        for done in self._loader.finished():
            self._swap_in(done)
        for lane in self.pipeline.lanes:
            current, candidate = self._watchers[lane.name]
            self._watch_current(lane, current)
            if candidate is not None:
                self._watch_candidate(lane, candidate)

    def _watch_current(self, lane: Lane, watcher: ModelWatcher) -> None:
        try:
            path = watcher.candidate()
        except ArtifactError as exc:
            self.metrics.model_reloads.labels(profile=lane.name, result="rejected").inc()
            log.error(
                "refused model pointer of %s, keeping %s: %s", lane.name, lane.model.version, exc
            )
            return
        if path is not None:
            self._load(lane, "model", path)

    def _watch_candidate(self, lane: Lane, watcher: CandidateWatcher) -> None:
        try:
            change = watcher.change()
        except ArtifactError as exc:
            self.metrics.model_reloads.labels(profile=lane.name, result="rejected").inc()
            log.error("refused candidate pointer of %s: %s", lane.name, exc)
            return
        if change is None:
            return
        if change.path is not None:
            self._load(lane, "candidate", change.path)
            return
        dropped = self._loader.discard(lane.name, "candidate")
        if dropped is not None:
            log.info("dropped loading candidate %s of %s: no candidate", dropped.name, lane.name)
        if lane.candidate is not None:
            log.info("shadow scoring of %s stopped (no candidate)", lane.name)
        self.pipeline.shadow(lane.name, None)

    def _load(self, lane: Lane, role: Role, path: Path) -> None:
        """Start loading ``path`` as the lane's ``role``; a load of an older pointer is dropped."""
        superseded = self._loader.submit(lane.name, role, lane.model.artifact.metadata, path)
        if superseded is not None:
            log.info(
                "dropped loading %s %s of %s: superseded by %s",
                role,
                superseded.name,
                lane.name,
                path.name,
            )

    def _swap_in(self, done: FinishedLoad) -> None:
        """Install (or shadow) a finished load, or count and log why it was refused."""
        lane = self.pipeline.lane(done.profile)
        reloads = self.metrics.model_reloads
        if done.model is None:
            reloads.labels(profile=lane.name, result="rejected").inc()
            kept = lane.model if done.role == "model" else lane.candidate
            log.error(
                "refused %s %s, keeping %s (profile %s): %s",
                done.role,
                done.path.name,
                kept.version if kept is not None else "none",
                lane.name,
                done.error,
            )
        elif done.role == "model":
            running = lane.model.version
            self.pipeline.install(lane.name, done.model)
            self._describe_model(lane)
            reloads.labels(profile=lane.name, result="success").inc()
            log.info("model %s replaced %s (profile %s)", done.model.version, running, lane.name)
        else:
            self.pipeline.shadow(lane.name, done.model)
            reloads.labels(profile=lane.name, result="success").inc()
            log.info(
                "scoring candidate %s in shadow beside %s (profile %s)",
                done.model.version,
                lane.model.version,
                lane.name,
            )

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the loop to finish: it scores what is pending, publishes, commits and returns."""
        self._stop.set()

    def run(self) -> None:
        """Consume until :meth:`stop`; then drain, close the consumer and end any model load."""
        for lane in self.pipeline.lanes:
            log.info("profile %s: model %s", lane.name, describe(lane.model.artifact))
            # Candidates were warmed up when they were loaded (load_compatible).
            lane.model.scorer.warm_up(lane.model.artifact.metadata.window_length)
        log.info(
            "scoring on %s, consuming %s",
            self.pipeline.lanes[0].model.scorer.device,
            self.config.kafka.readings_topics,
        )
        offsets = self.pipeline.offsets
        self.consumer.subscribe(self.config.kafka.readings_topics, lambda: offsets.safe)
        try:
            while not self._stop.is_set():
                with self._phases["reload"].time():
                    self.reload_if_changed()
                try:
                    with self._phases["poll"].time():
                        records = self.consumer.poll(timeout_ms=self._poll_timeout_ms())
                except Undecodable as exc:
                    self._skip_undecodable(exc)
                    continue
                records = self.handle_rebalance(records)
                self.process(records)
                self.health.progressed()
                self.metrics.last_progress.set_to_current_time()
            self._deliver(self.pipeline.flush())
            self.commit(force=True)
        finally:
            self.consumer.close()
            # After the group is left: a load in progress only delays the exit, by one step.
            self._loader.close()
            committed = self.pipeline.offsets.committed_offsets
            log.info(
                "stopped after %d records; committed offsets %s",
                self.records_consumed,
                {f"{tp.topic}[{tp.partition}]": off for tp, off in sorted(committed.items())},
            )

    def process(self, records: Mapping[Partition, Sequence[Record]]) -> None:
        """Run one poll's records through the pipeline; publish what it made, then commit."""
        phases = self._phases
        with phases["pipeline"].time():
            output = self.pipeline.process(records)
        with phases["publish"].time():
            self._deliver(output)
        with phases["commit"].time():
            self.commit()
        with phases["housekeeping"].time():
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

    def _skip_undecodable(self, error: Undecodable) -> None:
        """Move past a record the Kafka client cannot decode (see the pipeline's own)."""
        self.consumer.seek(error.partition, error.offset + 1)
        self.pipeline.skip_undecodable(error.partition, error.offset, error.detail)

    def handle_rebalance(
        self, records: Mapping[Partition, Sequence[Record]]
    ) -> Mapping[Partition, Sequence[Record]]:
        """Act on partitions revoked or assigned during the last poll.

        Devices of a partition that moved are forgotten (their slots freed; those of a partition
        that stays are rebuilt with it); a newly assigned partition is rewound
        before its committed offset so its windows are rebuilt before anything is published.
        Returns the poll's records minus those of rewound partitions.
        """
        revoked, assigned = self.consumer.rebalanced()
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

    def _rewind(self, tp: Partition) -> bool:
        """Seek ``tp`` back to rebuild its windows; returns whether its position was changed."""
        try:
            committed = self.consumer.committed(tp)
            if committed is None:
                return False  # a new group: auto_offset_reset decides, nothing to rebuild
            beginning = self.consumer.beginning_offset(tp)
        except ClientError as exc:
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
            self.consumer.commit(pending)
        except ClientError as exc:
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
        # Every member, with or without partitions, heartbeats every heartbeat_interval_ms: a
        # session's worth of silence is an outage.
        return self.consumer.broker_reachable(self.config.kafka.session_timeout_ms / 1000)

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


# Allocations between young collections: each poll allocates a few objects per record, nearly
# all freed by reference counting; collecting every 700 (Python's default) spent about a third
# of the in-process time per record walking them (bench-throughput stages, 14 -> 9.5 µs).
_YOUNG_COLLECTION_ALLOCATIONS = 10_000


def tune_garbage_collector() -> None:
    """Set the cyclic collector for a long-running daemon; call once start-up has loaded all.

    What start-up loaded (modules, the models, the config) lives as long as the process, so it
    is moved out of the collector's sight (``gc.freeze``) instead of being walked by every full
    collection, and young collections run less often. Reference cycles are still collected.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_ALLOCATIONS, older, oldest)


def _return_freed_memory() -> None:
    """Give the heap that forgotten devices freed back to the OS (glibc only; else a no-op).

    glibc keeps freed small blocks for reuse: with 300 000 devices forgotten RSS stayed at
    359 MiB (285 at start, 533 with them), 309 after a trim alone, 295 with a collection first.
    """
    gc.collect()  # parsed records and their readings can sit in reference cycles
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
