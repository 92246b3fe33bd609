"""One poll's records in, alerts and dead letters out: the stages wired together, no Kafka I/O.

A partition's records walk the stages of :mod:`detector.stages` in order: decode → route →
admit → window → score → judge → emit. :meth:`Pipeline.process` returns what they produced with
the offsets it makes safe to commit once the broker has acknowledged it (:class:`Output`); the
daemon's loop (:mod:`detector.daemon`) only polls, publishes and commits. Each profile's state
lives in its :class:`~detector.lane.Lane`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from detector.clients.base import Partition, Record
from detector.config import DetectorConfig
from detector.core.offsets import OffsetTracker
from detector.core.readings import ReadingParser, RejectReason
from detector.kafka_io import OutboundMessage, undecodable_dead_letter
from detector.lane import Lane, Model, PollCounts
from detector.logs import RateLimitedLog
from detector.reload import swap_incompatibility
from detector.sensor import Sensor
from detector.stages import emit
from detector.stages.admit import admit
from detector.stages.decode import decode
from detector.stages.judge import judge
from detector.stages.route import route
from detector.stages.score import score

__all__ = ["RECORDS_PER_CHUNK", "Output", "Pipeline"]

log = logging.getLogger(__name__)


@dataclass
class Output:
    """What a step of the pipeline produced, for the loop to publish and then commit."""

    messages: list[OutboundMessage] = field(default_factory=list)
    # Offsets committable once ``messages`` are acknowledged; None: nothing new is safe.
    safe: dict[Partition, int] | None = None

    @property
    def alerts(self) -> list[OutboundMessage]:
        """The alert messages."""
        return [m for m in self.messages if not m.dead_letter]

    @property
    def dead_letters(self) -> list[OutboundMessage]:
        """The dead letters."""
        return [m for m in self.messages if m.dead_letter]


# Records ingested together in array operations at most (fewer when they hold a batch).
RECORDS_PER_CHUNK = 512


class Pipeline:
    """The daemon's stages for every profile, driven a poll at a time; holds no Kafka client.

    ``models`` holds each configured profile's current model (``config.model.profile_map()``
    order; the single-model form is the one profile ``default``). ``sensor`` hears about new
    records, ``replay_sensor`` about records replayed to rebuild state after a handover (see
    :mod:`detector.sensor`); each lane reports to ``sensor.for_profile(name)``. ``idle_clock`` is
    the loop's clock for device idleness (seconds the loop ran with the broker reachable).
    ``columnar``: admit the plain readings of a run of records in array operations (the
    default); ``False`` admits every reading on its own, which gives the same windows,
    rejections and alerts (the tests compare the two), only slower.
    """

    def __init__(
        self,
        config: DetectorConfig,
        models: Mapping[str, Model],
        sensor: Sensor | None = None,
        replay_sensor: Sensor | None = None,
        columnar: bool = True,
    ) -> None:
        self.config = config
        self.columnar = columnar
        self.sensor = sensor or Sensor()
        self.replay_sensor = replay_sensor or Sensor()
        names = list(config.model.profile_map())
        if sorted(models) != sorted(names):
            raise ValueError(f"need a model for each profile {names}, got {sorted(models)}")
        self.lanes = [
            Lane(name, config, models[name], self.sensor.for_profile(name)) for name in names
        ]
        self._lane_of = {lane.name: lane for lane in self.lanes}
        router = config.model.router()
        self.parser = ReadingParser(
            self.lanes[0].feature_names,
            config.kafka.max_message_bytes,
            router,
            [lane.feature_names for lane in self.lanes] if router is not None else None,
        )
        self.offsets: OffsetTracker[Partition] = OffsetTracker()
        self.records_consumed = 0  # new records, replays not counted
        self.idle_clock = 0.0
        self._outbox: list[OutboundMessage] = []
        self._safe: dict[Partition, int] | None = None
        self._unknown_sensors = 0
        self._trace_log = RateLimitedLog(log)

    def lane(self, profile: str) -> Lane:
        """The lane of ``profile``."""
        return self._lane_of[profile]

    def pending(self) -> int:
        """Windows waiting to be scored, in every lane."""
        return sum(len(lane.pending) for lane in self.lanes)

    def install(self, profile: str, model: Model) -> None:
        """Make ``model`` score the profile's following windows; pending ones are scored by the old.

        Alert state carries over; thresholds calibrate and adapt again. The feature order and
        window length must be the old model's (see :func:`~detector.reload.swap_incompatibility`).
        """
        lane = self.lane(profile)
        self._check_fits(lane, model)
        if lane.pending:
            self._score(lane)
        lane.install(model)

    def shadow(self, profile: str, candidate: Model | None) -> None:
        """Score the profile's following windows with ``candidate`` in shadow too (``None``: stop)."""
        lane = self.lane(profile)
        if candidate is not None:
            self._check_fits(lane, candidate)
        if lane.pending:
            self._score(lane)
        lane.shadow(candidate)

    @staticmethod
    def _check_fits(lane: Lane, model: Model) -> None:
        """Raise ``ValueError`` unless ``model`` can score the lane's windows."""
        reason = swap_incompatibility(lane.model.artifact.metadata, model.artifact.metadata)
        if reason is not None:
            raise ValueError(f"{model.version} cannot score profile {lane.name}: {reason}")

    def process(
        self, records: Mapping[Partition, Sequence[Record]], now: float | None = None
    ) -> Output:
        """Ingest one poll's records (``now``: wall-clock time); score what is full or due."""
        now = time.time() if now is None else now
        offsets = self.offsets
        chunk = RECORDS_PER_CHUNK if self.columnar else 1
        for tp, batch in records.items():
            live_count = start = 0
            while start < len(batch):
                ingested, live = self._ingest(tp, batch[start : start + chunk], now)
                start += ingested
                live_count += live
                offsets.processed(tp, batch[start - 1].offset + 1)
                if self._due():
                    # Between records a scored batch is a safe point: everything ingested so far
                    # is scored once it returns, so it may be committed once published.
                    self._score_all()
                    self._safe = offsets.safe_point()
            self.sensor.records(live_count)
            self.replay_sensor.records(len(batch) - live_count)
            self.records_consumed += live_count
            resumed = offsets.finish_rebuild(tp)
            if resumed is not None:
                log.info("rebuilt %s up to offset %d", tp, resumed)
                self._check_adaptation_rebuilt(tp)
        self.sensor.readings(0, 0, self._unknown_sensors)
        self._unknown_sensors = 0
        for lane in self.lanes:
            counts, lane.counts = lane.counts, PollCounts()
            lane.sensor.readings(counts.accepted, counts.imputed, 0)
            for reason, count in counts.resets.items():
                lane.sensor.window_resets(reason, count)
        if self._due():
            self._score_all()
        return self._output()

    def flush(self) -> Output:
        """Score every pending window now."""
        self._score_all()
        return self._output()

    def wait_ms(self) -> int | None:
        """Milliseconds until some lane's pending windows are due (``None``: nothing pending)."""
        waits = [wait for lane in self.lanes if (wait := lane.pending.wait_ms()) is not None]
        return min(waits) if waits else None

    def _due(self) -> bool:
        """Whether some lane's pending windows are due (see :meth:`~detector.stages.window.PendingWindows.due`)."""
        return any(lane.pending.due() for lane in self.lanes)

    def _score_all(self) -> None:
        """Score every lane's pending windows: afterwards everything ingested is scored."""
        for lane in self.lanes:
            if lane.pending:
                self._score(lane)

    def _score(self, lane: Lane) -> None:
        """Score, judge and emit the lane's pending windows."""
        batch = score(lane)
        self._outbox.extend(emit.alerts(lane, batch, judge(lane, batch)))

    def skip_undecodable(self, tp: Partition, offset: int, detail: str) -> None:
        """A record the Kafka client cannot decode: dead-letter where it was, go on past it.

        Its offset counts as processed, so the commit moves past it and a restart does not
        meet it again; while rebuilding it was already dead-lettered when first consumed.
        """
        live = self.offsets.live(tp, offset)
        self.offsets.processed(tp, offset + 1)
        if not live:
            return
        self.sensor.rejected(RejectReason.UNDECODABLE, f"record {tp} offset {offset}: {detail}")
        topic = self.config.kafka.dead_letter_topic
        if topic:
            self._outbox.append(undecodable_dead_letter(topic, tp, offset, detail))

    def forget_partitions(self, partitions: set[Partition]) -> int:
        """Forget the devices and offsets of partitions that moved; returns how many devices.

        Call after :meth:`flush`: windows already cut are scored with the alert state they
        were cut under.
        """
        forgotten = 0
        for lane in self.lanes:
            count = lane.registry.forget_partitions(partitions)
            lane.sensor.window_resets("rebalance", count)
            lane.sensor.firing(lane.registry.judge.firing_count())
            forgotten += count
        self.offsets.forget(partitions)
        return forgotten

    def housekeeping(self) -> bool:
        """Forget idle devices and shrink per-device containers; returns whether memory was freed."""
        timeout = self.config.windows.device_idle_timeout_s
        freed = False
        for lane in self.lanes:
            if timeout is not None:
                forgotten = lane.registry.forget_idle(before=self.idle_clock - timeout)
                if forgotten:
                    lane.sensor.evicted("idle", forgotten)
                    log.info(
                        "forgot %d devices of profile %s silent for over %g s",
                        forgotten,
                        lane.name,
                        timeout,
                    )
            freed |= lane.registry.tidy()
        return freed

    def _output(self) -> Output:
        if not self.pending():
            self._safe = self.offsets.safe_point()
        messages, self._outbox = self._outbox, []
        safe, self._safe = self._safe, None
        return Output(messages, safe)

    def _check_adaptation_rebuilt(self, tp: Partition) -> None:
        """Warn when the replay was too short to rebuild the partition's devices' recent scores.

        Such a device's threshold adapts again from its next scores (adaptation, likelihood):
        it may page on a normal it had adapted to before the handover, until
        ``alerts.adaptation.windows`` (``alerts.likelihood.windows``) scores are in.
        """
        if not self.offsets.take_partial(tp):
            return
        lanes = [lane for lane in self.lanes if lane.registry.judge.remembers_history]
        if not lanes:
            return
        self._score_all()  # the replay's last windows are judged before counting
        devices = [(lane, d) for lane in lanes for d in lane.registry.devices_of(tp)]
        short = sum(lane.registry.judge.adapting(d) for lane, d in devices)
        if short:
            log.warning(
                "%d of %d devices of %s have fewer scores than alerts.adaptation.windows or "
                "alerts.likelihood.windows (%d) after replaying windows.rebuild_records (%d): "
                "their thresholds adapt again from scratch; raise windows.rebuild_records to at "
                "least devices per partition x (window length - 1 + those windows)",
                short,
                len(devices),
                tp,
                max(lanes[0].alerts.adaptation.windows, lanes[0].alerts.likelihood.windows),
                self.config.windows.rebuild_records,
            )

    def _ingest(self, tp: Partition, records: Sequence[Record], now: float) -> tuple[int, int]:
        """Decode, route and admit consecutive records of a partition: (records taken, new ones).

        Takes records until they hold a batch's worth of readings, so that no more windows wait
        than a batch. Each record's rejections make one dead letter.
        """
        live = [self.offsets.live(tp, record.offset) for record in records]
        readings = decode(
            self.parser,
            tp.topic,
            records,
            live,
            self.config.scoring.max_batch_size,
            self._trace_log,
        )
        self._unknown_sensors += readings.unknown_sensors
        failed: set[int] = set()  # records an internal error stopped, in every lane
        for lane, part in route(readings, self.lanes) if len(readings) else ():
            admit(
                lane,
                self.lanes,
                tp,
                part,
                now,
                self.idle_clock,
                failed,
                self._trace_log,
                self.columnar,
            )
        self._outbox.extend(
            emit.dead_letters(readings, self.sensor, self.config.kafka.dead_letter_topic)
        )
        return len(readings.records), sum(readings.live)
