"""One poll's records in, alerts and dead letters out: the daemon's stages, with no Kafka I/O.

Records → parsed readings, each routed to its device profile
(:class:`~detector.core.readings.ReadingParser`, :class:`~detector.core.routing.Router`) → admitted
into its device's window in that profile's :class:`~detector.lane.Lane`
(:class:`~detector.core.admission.Admitter`, via the :class:`~detector.core.devices.DeviceRegistry`)
→ ready windows batched (:class:`~detector.lane.PendingWindows`) → scored
(:class:`~detector.core.scoring.Scorer`, and a shadow candidate's) → judged
(:class:`~detector.core.judge.Judge`) → alert and dead-letter messages. :meth:`Pipeline.process`
returns them with the offsets they make safe to commit once the broker has acknowledged them
(:class:`Output`); the daemon's loop
(:mod:`detector.daemon`) only polls, publishes and commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from detector.config import DetectorConfig
from detector.core.admission import Placement
from detector.core.offsets import OffsetTracker
from detector.core.readings import ParsedMessage, ReadingParser, Rejection, RejectReason
from detector.kafka_io import (
    MAX_REQUEST_BYTES,
    OutboundMessage,
    dead_letter_message,
    undecodable_dead_letter,
)
from detector.lane import Lane, Model, PollCounts
from detector.logs import RateLimitedLog
from detector.reload import swap_incompatibility
from detector.sensor import Sensor

__all__ = ["Output", "Pipeline"]

log = logging.getLogger(__name__)


@dataclass
class Output:
    """What a step of the pipeline produced, for the loop to publish and then commit."""

    messages: list[OutboundMessage] = field(default_factory=list)
    # Offsets committable once ``messages`` are acknowledged; None: nothing new is safe.
    safe: dict[TopicPartition, int] | None = None

    @property
    def alerts(self) -> list[OutboundMessage]:
        """The alert messages."""
        return [m for m in self.messages if not m.dead_letter]

    @property
    def dead_letters(self) -> list[OutboundMessage]:
        """The dead letters."""
        return [m for m in self.messages if m.dead_letter]


# Records ingested together in array operations at most (fewer when they hold a batch).
_CHUNK_RECORDS = 512


class _Columns:
    """The readings of consecutive records, column by column, and each record's rejections."""

    def __init__(self) -> None:
        self.device_ids: list[str] = []
        self.timestamps: list[float] = []
        self.values: list[np.ndarray] = []
        self.indices: list[int | None] = []  # position in a batch message
        self.profiles: list[int] = []  # the lane each reading was routed to
        self.positions: list[int] = []  # the record's position among the records
        self.live: list[bool] = []
        self.rejections: list[list[Rejection]] = []  # one list per record

    def select(self, rows: list[int]) -> _Columns:
        """The readings at ``rows`` (one lane's), sharing the records' rejection lists."""
        part = _Columns()
        for name in ("device_ids", "timestamps", "values", "indices", "profiles", "positions"):
            column = getattr(self, name)
            setattr(part, name, [column[row] for row in rows])
        part.live = [self.live[row] for row in rows]
        part.rejections = self.rejections
        return part

    def next_record(self) -> list[Rejection]:
        """Start the next record; returns the list its rejections go to."""
        self.rejections.append([])
        return self.rejections[-1]

    def add(self, message: ParsedMessage, position: int, live: bool) -> None:
        """Append one record's readings."""
        count = len(message.device_ids)
        self.device_ids.extend(message.device_ids)
        self.timestamps.extend(message.timestamps)
        self.values.extend(message.values)
        self.indices.extend(message.indices)
        self.profiles.extend(message.profiles)
        self.positions.extend([position] * count)
        self.live.extend([live] * count)


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
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.records_consumed = 0  # new records, replays not counted
        self.idle_clock = 0.0
        self._outbox: list[OutboundMessage] = []
        self._safe: dict[TopicPartition, int] | None = None
        self._unknown_sensors = 0
        self._internal_log = RateLimitedLog(log)

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
            lane.score(self._outbox)
        lane.install(model)

    def shadow(self, profile: str, candidate: Model | None) -> None:
        """Score the profile's following windows with ``candidate`` in shadow too (``None``: stop)."""
        lane = self.lane(profile)
        if candidate is not None:
            self._check_fits(lane, candidate)
        if lane.pending:
            lane.score(self._outbox)
        lane.shadow(candidate)

    @staticmethod
    def _check_fits(lane: Lane, model: Model) -> None:
        """Raise ``ValueError`` unless ``model`` can score the lane's windows."""
        reason = swap_incompatibility(lane.model.artifact.metadata, model.artifact.metadata)
        if reason is not None:
            raise ValueError(f"{model.version} cannot score profile {lane.name}: {reason}")

    def process(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], now: float | None = None
    ) -> Output:
        """Ingest one poll's records (``now``: wall-clock time); score what is full or due."""
        now = time.time() if now is None else now
        offsets = self.offsets
        chunk = _CHUNK_RECORDS if self.columnar else 1
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
        waits = [wait for lane in self.lanes if (wait := lane.wait_ms()) is not None]
        return min(waits) if waits else None

    def _due(self) -> bool:
        """Whether some lane is due (see :meth:`~detector.lane.Lane.due`)."""
        return any(lane.due() for lane in self.lanes)

    def _score_all(self) -> None:
        """Score every lane's pending windows: afterwards everything ingested is scored."""
        for lane in self.lanes:
            if lane.pending:
                lane.score(self._outbox)

    def skip_undecodable(self, tp: TopicPartition, offset: int, detail: str) -> None:
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

    def forget_partitions(self, partitions: set[TopicPartition]) -> int:
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

    def _check_adaptation_rebuilt(self, tp: TopicPartition) -> None:
        """Warn when the replay was too short to rebuild the partition's devices' recent scores.

        Such a device's threshold adapts again from its next scores (adaptation, likelihood):
        it may page on a normal it had adapted to before the handover, until
        ``alerts.adaptation.windows`` (``alerts.likelihood.windows``) scores are in.
        """
        if not self.offsets.take_partial(tp):
            return
        lanes = [
            lane
            for lane in self.lanes
            if lane.registry.judge.adaptation is not None
            or lane.registry.judge.likelihood is not None
        ]
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

    def _ingest(
        self, tp: TopicPartition, records: Sequence[ConsumerRecord], now: float
    ) -> tuple[int, int]:
        """Parse and admit consecutive records of a partition: (records taken, new ones).

        Takes records until they hold a batch's worth of readings, so that no more windows
        wait than a batch. Each record's rejections make one dead letter. Nothing a record
        holds may stop the partition: an unexpected error while ingesting it rejects the rest
        of it (``internal_error``, logged with the traceback) and the loop goes on.
        """
        columns = _Columns()
        live_count = 0
        for position, record in enumerate(records):
            live = self.offsets.live(tp, record.offset)
            live_count += live
            rejections = columns.next_record()
            try:
                message = self.parser.parse(record.value, tp.topic)
            except Exception as exc:
                self._internal_error(tp, record, exc, live, rejections)
                continue
            for rejection in message.rejections:
                self._reject(rejection, live, rejections)
            if live:
                self._unknown_sensors += message.unknown_sensors
            columns.add(message, position, live)
            if len(columns.device_ids) >= self.config.scoring.max_batch_size:
                break
        records = records[: len(columns.rejections)]
        if columns.device_ids:
            failed: set[int] = set()  # records an internal error stopped, in every lane
            for lane, part in self._by_lane(columns):
                fast = self._admit_in_order(lane, tp, part, now) if self.columnar else None
                self._admit_one_by_one(lane, tp, records, part, fast, now, failed)
        topic = self.config.kafka.dead_letter_topic
        if topic:
            for record, rejections in zip(records, columns.rejections, strict=True):
                if rejections:
                    self._outbox.append(
                        dead_letter_message(topic, record, rejections, MAX_REQUEST_BYTES)
                    )
        return len(records), live_count

    def _by_lane(self, columns: _Columns) -> list[tuple[Lane, _Columns]]:
        """The readings of each lane they were routed to (all of them to the one lane).

        A device no lane tracks yet is claimed by the lane of its first reading here, in
        reading order, so that its later readings for another lane are ``profile_conflict``
        as they would be record by record.
        """
        if len(self.lanes) == 1:
            return [(self.lanes[0], columns)]
        rows: dict[int, list[int]] = {}
        claims: dict[str, int] = {}
        for row, (device_id, profile) in enumerate(
            zip(columns.device_ids, columns.profiles, strict=True)
        ):
            claimed = claims.get(device_id)
            if claimed is None:
                # -1: tracked already; the lane's own admission checks which profile holds it.
                tracked = any(device_id in lane.registry for lane in self.lanes)
                claimed = claims[device_id] = -1 if tracked else profile
            if claimed >= 0 and claimed != profile:
                detail = (
                    f"{device_id}: tracked as profile {self.lanes[claimed].name}, "
                    f"reading is for {self.lanes[profile].name}"
                )
                rejection = Rejection(RejectReason.PROFILE_CONFLICT, detail, columns.indices[row])
                position = columns.positions[row]
                self._reject(rejection, columns.live[row], columns.rejections[position])
                continue
            rows.setdefault(profile, []).append(row)
        return [(self.lanes[profile], columns.select(part)) for profile, part in rows.items()]

    def _claimed_elsewhere(self, lane: Lane, device_id: str) -> Lane | None:
        """The other lane tracking ``device_id``: a device keeps the profile it started with."""
        if len(self.lanes) == 1:
            return None
        for other in self.lanes:
            if other is not lane and device_id in other.registry:
                return other
        return None

    def _admit_in_order(
        self, lane: Lane, tp: TopicPartition, columns: _Columns, now: float
    ) -> np.ndarray | None:
        """Admit, in array operations, the readings of devices whose readings are all plain.

        Plain: complete, newer than the device's newest reading, not in the future and within
        ``max_gap_s`` of the previous one: what :class:`~detector.core.admission.Admitter` appends
        without a decision. Returns which readings were admitted; devices with any other reading
        are left whole to :meth:`_admit_one_by_one`, so each device's readings keep their order.
        ``None`` (nothing admitted) when the new devices would reach ``max_devices``, choosing
        whom to replace being a per-reading decision, or when a new device is tracked under
        another profile (rejected reading by reading).
        """
        registry = lane.registry
        store = registry.store
        devices = list(dict.fromkeys(columns.device_ids))
        new = [device_id for device_id in devices if device_id not in store]
        if store.max_devices is not None and len(store) + len(new) > store.max_devices:
            return None
        if any(self._claimed_elsewhere(lane, device_id) for device_id in new):
            return None
        slot_of: dict[str, int] = {}
        for device_id in devices:
            slot, _ = registry.slot(device_id, tp, self.idle_clock)
            if slot is None:  # cannot happen below max_devices; the per-reading path decides
                return None
            slot_of[device_id] = slot
        slots = np.fromiter(map(slot_of.__getitem__, columns.device_ids), np.int64)
        ts = np.asarray(columns.timestamps, dtype=np.float64)
        values = np.stack(columns.values)
        policy = registry.admitter.policy
        order = np.argsort(slots, kind="stable")
        grouped, grouped_ts = slots[order], ts[order]
        first = np.r_[True, grouped[1:] != grouped[:-1]]
        previous = np.where(first, store.last_timestamps(grouped), np.r_[-np.inf, grouped_ts[:-1]])
        plain = grouped_ts > previous
        if policy.max_gap_s is not None:
            plain &= ~np.isfinite(previous) | (grouped_ts - previous <= policy.max_gap_s)
        plain &= grouped_ts <= now + policy.max_future_skew_s
        plain &= ~np.isnan(values[order]).any(axis=1)
        starts = np.flatnonzero(first)
        device_plain = np.minimum.reduceat(plain.astype(np.int8), starts).astype(bool)
        fast = np.empty(len(slots), dtype=bool)
        fast[order] = np.repeat(device_plain, np.diff(np.r_[starts, len(slots)]))
        if not fast.any():
            return fast
        admitter = registry.admitter
        device_of = {slot: device_id for device_id, slot in slot_of.items()}
        for slot in grouped[starts][device_plain].tolist():
            device_id = device_of[slot]
            admitter.imputed_streak.pop(device_id, None)
            admitter.late_streak.pop(device_id, None)
        chosen = np.flatnonzero(fast)
        ready, windows, spans = store.append_many(slots[chosen], ts[chosen], values[chosen])
        live = np.asarray(columns.live, dtype=bool)
        lane.counts.accepted += int(live[chosen].sum())
        rows = chosen[ready]
        lane.pending.extend(
            windows,
            [columns.device_ids[i] for i in rows.tolist()],
            spans,
            live[rows],
            time.monotonic(),
        )
        return fast

    def _admit_one_by_one(
        self,
        lane: Lane,
        tp: TopicPartition,
        records: Sequence[ConsumerRecord],
        columns: _Columns,
        fast: np.ndarray | None,
        now: float,
        failed: set[int],
    ) -> None:
        """Admit, in order, the readings :meth:`_admit_in_order` left (all without it).

        ``failed``: positions of records whose rest an internal error rejected (added to here).
        """
        rows = range(len(columns.device_ids)) if fast is None else np.flatnonzero(~fast).tolist()
        for row in rows:
            position = columns.positions[row]
            if position in failed:
                continue
            live = columns.live[row]
            try:
                self._admit(
                    lane,
                    tp,
                    columns.device_ids[row],
                    columns.timestamps[row],
                    columns.values[row],
                    columns.indices[row],
                    live,
                    now,
                    columns.rejections[position],
                )
            except Exception as exc:
                failed.add(position)
                self._internal_error(tp, records[position], exc, live, columns.rejections[position])

    def _internal_error(
        self,
        tp: TopicPartition,
        record: ConsumerRecord,
        error: Exception,
        live: bool,
        rejections: list[Rejection],
    ) -> None:
        if live:
            self._internal_log.warning(
                "internal_error.trace",
                "cannot ingest %s offset %d",
                tp,
                record.offset,
                exc_info=(type(error), error, error.__traceback__),
            )
        rejection = Rejection(RejectReason.INTERNAL_ERROR, repr(error)[:200], None)
        self._reject(rejection, live, rejections)

    def _admit(
        self,
        lane: Lane,
        tp: TopicPartition,
        device_id: str,
        ts: float,
        values: np.ndarray,
        index: int | None,
        live: bool,
        now: float,
        rejections: list[Rejection],
    ) -> None:
        registry = lane.registry
        if device_id not in registry:
            other = self._claimed_elsewhere(lane, device_id)
            if other is not None:
                detail = f"{device_id}: tracked as profile {other.name}, reading is for {lane.name}"
                rejection = Rejection(RejectReason.PROFILE_CONFLICT, detail, index)
                self._reject(rejection, live, rejections)
                return
        slot, evicted = registry.slot(device_id, tp, self.idle_clock)
        if evicted is not None:
            lane.sensor.evicted("capacity", 1, evicted.device_id if evicted.firing else None)
            lane.sensor.firing(registry.judge.firing_count())
        if slot is None:
            detail = f"{device_id}: {len(registry)} devices, none idle long enough to replace"
            self._reject(Rejection(RejectReason.TOO_MANY_DEVICES, detail, index), live, rejections)
            return
        admission = registry.admitter.admit(slot, device_id, ts, values, now)
        counts = lane.counts
        if admission.imputed and live:
            counts.imputed += 1
        if admission.reason is not None:
            rejection = Rejection(admission.reason, admission.detail, index)
            self._reject(rejection, live, rejections)
            return
        if live:
            counts.accepted += 1
            placement = admission.placement
            if placement is Placement.RESET or placement is Placement.CLOCK_RESET:
                reason = "gap" if placement is Placement.RESET else "clock"
                counts.resets[reason] = counts.resets.get(reason, 0) + 1
        if admission.ready:
            lane.pending.add(registry.store, slot, device_id, live, time.monotonic())

    def _reject(self, rejection: Rejection, live: bool, rejections: list[Rejection]) -> None:
        if not live:
            return  # counted and dead-lettered when it was first consumed
        self.sensor.rejected(rejection.reason, rejection.detail)
        rejections.append(rejection)
