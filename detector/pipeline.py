"""One poll's records in, alerts and dead letters out: the daemon's stages, with no Kafka I/O.

Records → parsed readings (:class:`~detector.core.readings.ReadingParser`) → admitted into each
device's window (:class:`~detector.core.admission.Admitter`, via the
:class:`~detector.core.devices.DeviceRegistry`) → ready windows batched (:class:`PendingWindows`) →
scored (:class:`~detector.core.scoring.Scorer`) → judged (:class:`~detector.core.judge.Judge`) → alert and
dead-letter messages. :meth:`Pipeline.process` returns them with the offsets they make safe to
commit once the broker has acknowledged them (:class:`Output`); the daemon's loop
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
from detector.core.admission import Admitter, Placement
from detector.core.alerts import make_alert
from detector.core.artifact import Artifact
from detector.core.devices import DeviceRegistry
from detector.core.offsets import OffsetTracker
from detector.core.readings import ParsedMessage, ReadingParser, Rejection, RejectReason
from detector.core.scoring import Scorer, top_sensor_shares
from detector.core.windows import WindowStore
from detector.kafka_io import (
    MAX_REQUEST_BYTES,
    OutboundMessage,
    alert_message,
    dead_letter_message,
    undecodable_dead_letter,
)
from detector.logs import RateLimitedLog
from detector.sensor import Sensor

__all__ = ["Output", "PendingWindows", "Pipeline"]

log = logging.getLogger(__name__)


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
        self._reserve(len(self.device_ids) + 1)
        store.window(slot, out=self.windows[len(self.device_ids)])
        self.device_ids.append(device_id)
        self.spans.append(store.window_span(slot))
        self.live.append(live)
        if self.oldest is None:
            self.oldest = now

    def extend(
        self,
        windows: np.ndarray,
        device_ids: list[str],
        spans: np.ndarray,
        live: np.ndarray,
        now: float,
    ) -> None:
        """Add windows cut elsewhere (:meth:`~detector.core.windows.WindowStore.append_many`)."""
        if not device_ids:
            return
        count, needed = len(self.device_ids), len(self.device_ids) + len(device_ids)
        self._reserve(needed)
        self.windows[count:needed] = windows
        self.device_ids.extend(device_ids)
        self.spans.extend(map(tuple, spans.tolist()))
        self.live.extend(live.tolist())
        if self.oldest is None:
            self.oldest = now

    def _reserve(self, needed: int) -> None:
        """Room for ``needed`` windows, doubling the buffer (at least) when it is short."""
        if needed > len(self.windows):
            grown = np.empty(
                (max(needed, 2 * len(self.windows)), *self.windows.shape[1:]), np.float32
            )
            grown[: len(self.device_ids)] = self.windows[: len(self.device_ids)]
            self.windows = grown

    def waited(self) -> float:
        """Seconds the oldest pending window has waited (0 when none is pending)."""
        return 0.0 if self.oldest is None else time.monotonic() - self.oldest

    def clear(self) -> None:
        """Forget everything after scoring."""
        self.device_ids.clear()
        self.spans.clear()
        self.live.clear()
        self.oldest = None


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


_SMOOTHING = 0.2  # weight of the newest batch in the forward-pass time per window
# Records ingested together in array operations at most (fewer when they hold a batch).
_CHUNK_RECORDS = 512


class _Columns:
    """The readings of consecutive records, column by column, and each record's rejections."""

    def __init__(self) -> None:
        self.device_ids: list[str] = []
        self.timestamps: list[float] = []
        self.values: list[np.ndarray] = []
        self.indices: list[int | None] = []  # position in a batch message
        self.positions: list[int] = []  # the record's position among the records
        self.live: list[bool] = []
        self.rejections: list[list[Rejection]] = []  # one list per record

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
        self.positions.extend([position] * count)
        self.live.extend([live] * count)


@dataclass
class _PollCounts:
    accepted: int = 0
    imputed: int = 0
    unknown_sensors: int = 0
    resets: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """The daemon's stages for one model, driven a poll at a time; holds no Kafka client.

    ``sensor`` hears about new records, ``replay_sensor`` about records replayed to rebuild
    state after a handover (see :mod:`detector.sensor`). ``idle_clock`` is the loop's clock for
    device idleness (seconds the loop ran with the broker reachable). ``columnar``: admit the
    plain readings of a run of records in array operations (the default); ``False`` admits every
    reading on its own, which gives the same windows, rejections and alerts (the tests compare
    the two), only slower.
    """

    def __init__(
        self,
        config: DetectorConfig,
        artifact: Artifact,
        scorer: Scorer,
        sensor: Sensor | None = None,
        replay_sensor: Sensor | None = None,
        columnar: bool = True,
    ) -> None:
        self.config = config
        self.columnar = columnar
        self.sensor = sensor or Sensor()
        self.replay_sensor = replay_sensor or Sensor()
        meta = artifact.metadata
        windows = config.windows
        store = WindowStore(
            meta.window_length,
            len(meta.feature_names),
            stride=windows.stride,
            max_devices=windows.max_devices,
        )
        self.registry: DeviceRegistry[TopicPartition] = DeviceRegistry(
            store,
            Admitter(windows.policy(), store, meta.feature_names),
            config.alerts.judge(meta.threshold.value, 0.0),
            windows.capacity_min_idle_s,
        )
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.parser = ReadingParser(meta.feature_names, config.kafka.max_message_bytes)
        self.pending = PendingWindows(
            config.scoring.max_batch_size, meta.window_length, len(meta.feature_names)
        )
        self.records_consumed = 0  # new records, replays not counted
        self.idle_clock = 0.0
        self._outbox: list[OutboundMessage] = []
        self._safe: dict[TopicPartition, int] | None = None
        self._counts = _PollCounts()
        self._batches_scored = 0
        self._seconds_per_window = 0.0  # forward-pass time per window, smoothed over batches
        self._internal_log = RateLimitedLog(log)
        self.install(artifact, scorer)

    @property
    def artifact(self) -> Artifact:
        """The model scoring from now on."""
        return self._artifact

    @property
    def scorer(self) -> Scorer:
        """The scorer of :attr:`artifact`."""
        return self._scorer

    def install(self, artifact: Artifact, scorer: Scorer) -> None:
        """Make ``artifact`` score every following window; pending ones are scored by the old.

        Alert state carries over; thresholds calibrate and adapt again.
        """
        if self.pending:
            self._score_pending()
        meta = artifact.metadata
        self._artifact, self._scorer = artifact, scorer
        self.feature_names = meta.feature_names
        self.registry.judge.install(
            meta.threshold.value, meta.threshold.error_summary.get("p50", 0.0)
        )

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
                    self._score_pending()
                    self._safe = offsets.safe_point()
            self.sensor.records(live_count)
            self.replay_sensor.records(len(batch) - live_count)
            self.records_consumed += live_count
            resumed = offsets.finish_rebuild(tp)
            if resumed is not None:
                log.info("rebuilt %s up to offset %d", tp, resumed)
                self._check_adaptation_rebuilt(tp)
        counts, self._counts = self._counts, _PollCounts()
        self.sensor.readings(counts.accepted, counts.imputed, counts.unknown_sensors)
        for reason, count in counts.resets.items():
            self.sensor.window_resets(reason, count)
        if self._due():
            self._score_pending()
        return self._output()

    def flush(self) -> Output:
        """Score every pending window now."""
        if self.pending:
            self._score_pending()
        return self._output()

    def wait_ms(self) -> int | None:
        """Milliseconds until the pending windows are due (``None``: nothing is pending)."""
        if not self.pending:
            return None
        return max(int(self.config.scoring.max_wait_ms - self._latency_ms()), 0)

    def _latency_ms(self) -> float:
        """The oldest pending window's wait so far plus the predicted time to score them all."""
        pending = self.pending
        return 1000 * (pending.waited() + len(pending) * self._seconds_per_window)

    def _due(self) -> bool:
        """Whether to score now: a full batch, or ``max_wait_ms`` reached with the scoring time.

        The forward pass is part of the latency ``scoring.max_wait_ms`` bounds, so a batch is
        scored early enough for its predicted scoring time to fit: under load batches stay
        small enough to be scored within the budget instead of growing to ``max_batch_size``.
        """
        pending = self.pending
        if not pending:
            return False
        return pending.full or self._latency_ms() >= self.config.scoring.max_wait_ms

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
        forgotten = self.registry.forget_partitions(partitions)
        self.offsets.forget(partitions)
        self.sensor.window_resets("rebalance", forgotten)
        self.sensor.firing(self.registry.judge.firing_count())
        return forgotten

    def housekeeping(self) -> bool:
        """Forget idle devices and shrink per-device containers; returns whether memory was freed."""
        timeout = self.config.windows.device_idle_timeout_s
        if timeout is not None:
            forgotten = self.registry.forget_idle(before=self.idle_clock - timeout)
            if forgotten:
                self.sensor.evicted("idle", forgotten)
                log.info("forgot %d devices silent for over %g s", forgotten, timeout)
        return self.registry.tidy()

    def _output(self) -> Output:
        if not self.pending:
            self._safe = self.offsets.safe_point()
        messages, self._outbox = self._outbox, []
        safe, self._safe = self._safe, None
        return Output(messages, safe)

    def _check_adaptation_rebuilt(self, tp: TopicPartition) -> None:
        """Warn when the replay was too short to give the partition's devices their adaptation.

        Such a device's threshold adapts again from its next scores: it may page on a normal it
        had adapted to before the handover, until ``alerts.adaptation.windows`` scores are in.
        """
        judge = self.registry.judge
        if not self.offsets.take_partial(tp) or judge.adaptation is None:
            return
        if self.pending:
            self._score_pending()  # the replay's last windows are judged before counting
        devices = self.registry.devices_of(tp)
        short = sum(judge.adapting(d) for d in devices)
        if short:
            log.warning(
                "%d of %d devices of %s have fewer than alerts.adaptation.windows (%d) scores "
                "after replaying windows.rebuild_records (%d): their thresholds adapt again from "
                "scratch; raise windows.rebuild_records to at least devices per partition x "
                "(window length - 1 + adaptation windows)",
                short,
                len(devices),
                tp,
                judge.adaptation.windows,
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
                message = self.parser.parse(record.value)
            except Exception as exc:
                self._internal_error(tp, record, exc, live, rejections)
                continue
            for rejection in message.rejections:
                self._reject(rejection, live, rejections)
            if live:
                self._counts.unknown_sensors += message.unknown_sensors
            columns.add(message, position, live)
            if len(columns.device_ids) >= self.pending.batch_size:
                break
        records = records[: len(columns.rejections)]
        if columns.device_ids:
            fast = self._admit_in_order(tp, columns, now) if self.columnar else None
            self._admit_one_by_one(tp, records, columns, fast, now)
        topic = self.config.kafka.dead_letter_topic
        if topic:
            for record, rejections in zip(records, columns.rejections, strict=True):
                if rejections:
                    self._outbox.append(
                        dead_letter_message(topic, record, rejections, MAX_REQUEST_BYTES)
                    )
        return len(records), live_count

    def _admit_in_order(
        self, tp: TopicPartition, columns: _Columns, now: float
    ) -> np.ndarray | None:
        """Admit, in array operations, the readings of devices whose readings are all plain.

        Plain: complete, newer than the device's newest reading, not in the future and within
        ``max_gap_s`` of the previous one: what :class:`~detector.core.admission.Admitter` appends
        without a decision. Returns which readings were admitted; devices with any other reading
        are left whole to :meth:`_admit_one_by_one`, so each device's readings keep their order.
        ``None`` (nothing admitted) when the new devices would reach ``max_devices``: choosing
        whom to replace is a per-reading decision.
        """
        registry = self.registry
        store = registry.store
        devices = list(dict.fromkeys(columns.device_ids))
        new = sum(1 for device_id in devices if device_id not in store)
        if store.max_devices is not None and len(store) + new > store.max_devices:
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
        self._counts.accepted += int(live[chosen].sum())
        rows = chosen[ready]
        self.pending.extend(
            windows,
            [columns.device_ids[i] for i in rows.tolist()],
            spans,
            live[rows],
            time.monotonic(),
        )
        return fast

    def _admit_one_by_one(
        self,
        tp: TopicPartition,
        records: Sequence[ConsumerRecord],
        columns: _Columns,
        fast: np.ndarray | None,
        now: float,
    ) -> None:
        """Admit, in order, the readings :meth:`_admit_in_order` left (all without it)."""
        rows = range(len(columns.device_ids)) if fast is None else np.flatnonzero(~fast).tolist()
        failed: set[int] = set()
        for row in rows:
            position = columns.positions[row]
            if position in failed:
                continue
            live = columns.live[row]
            try:
                self._admit(
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
        tp: TopicPartition,
        device_id: str,
        ts: float,
        values: np.ndarray,
        index: int | None,
        live: bool,
        now: float,
        rejections: list[Rejection],
    ) -> None:
        registry = self.registry
        slot, evicted = registry.slot(device_id, tp, self.idle_clock)
        if evicted is not None:
            self.sensor.evicted("capacity", 1, evicted.device_id if evicted.firing else None)
            self.sensor.firing(registry.judge.firing_count())
        if slot is None:
            detail = f"{device_id}: {len(registry)} devices, none idle long enough to replace"
            self._reject(Rejection(RejectReason.TOO_MANY_DEVICES, detail, index), live, rejections)
            return
        admission = registry.admitter.admit(slot, device_id, ts, values, now)
        counts = self._counts
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
            self.pending.add(registry.store, slot, device_id, live, time.monotonic())

    def _reject(self, rejection: Rejection, live: bool, rejections: list[Rejection]) -> None:
        if not live:
            return  # counted and dead-lettered when it was first consumed
        self.sensor.rejected(rejection.reason, rejection.detail)
        rejections.append(rejection)

    def _score_pending(self) -> None:
        pending = self.pending
        count = len(pending)
        live = np.asarray(pending.live, dtype=bool)
        waited = pending.waited() if live.any() else None
        started = time.perf_counter()
        errors = self._scorer.sensor_errors(pending.windows[:count])
        self._batches_scored += 1
        spent = time.perf_counter() - started
        # Per window, smoothed: a batch's cost is close to linear in its size on CPU and GPU.
        self._seconds_per_window += _SMOOTHING * (spent / count - self._seconds_per_window)
        scoring = self.config.scoring
        if scoring.artificial_delay_ms and (
            scoring.artificial_delay_batches is None
            or self._batches_scored <= scoring.artificial_delay_batches
        ):
            time.sleep(scoring.artificial_delay_ms / 1000)
        self.sensor.batch(count, time.perf_counter() - started, waited)
        scores = self._scorer.window_scores(errors)
        self.sensor.scored(scores[live])
        detected_at = time.time()
        topic = self.config.kafka.alerts_topic
        judge = self.registry.judge
        version = self._artifact.version
        top_count = self.config.alerts.top_sensors
        for i in range(count):
            score = float(scores[i])
            device_id = pending.device_ids[i]
            threshold, transition = judge.judge(device_id, score)
            if transition is None or not live[i]:
                continue
            top = top_sensor_shares(errors[i], self.feature_names, top_count)
            alert = make_alert(
                transition, device_id, pending.spans[i], score, threshold, version, top, detected_at
            )
            self._outbox.append(alert_message(topic, alert))
            self.sensor.alert(transition)
            log.info(
                "alert %s device=%s score=%.4g severity=%.2f top=%s",
                transition,
                device_id,
                score,
                alert.severity,
                top[0]["sensor"] if top else "-",
            )
        pending.clear()
        self.sensor.firing(judge.firing_count())
