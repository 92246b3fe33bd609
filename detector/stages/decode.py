"""Decode: a partition's records into columns of readings, with each record's rejections.

The first stage. A record's value is parsed against the models' feature orders
(:class:`~detector.core.readings.ReadingParser`); its readings join the columns of
:class:`Readings`, the batch type the later stages take, and whatever it held that cannot be
used is a :class:`~detector.core.readings.Rejection` of that record (one dead letter per record
at the end, :mod:`detector.stages.emit`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

from detector.clients.base import Record
from detector.core.readings import (
    ParsedColumns,
    ParsedMessage,
    ReadingParser,
    Rejection,
    RejectReason,
)
from detector.logs import RateLimitedLog

__all__ = ["Readings", "decode", "reject_internal_error"]


class Readings:
    """The readings of consecutive records of one partition, column by column.

    Row ``i`` is one reading; ``positions[i]`` is the record it came from. ``values`` is a
    ``(readings, features)`` float32 matrix: a reading's features are the first ones of its row,
    in its profile's order (see :class:`~detector.core.readings.ParsedColumns`). ``live[p]``
    says whether record ``p`` is new (``False`` while a handover replays it to rebuild windows:
    nothing it holds is counted or published again) and ``rejections[p]`` what of it was
    rejected so far, by any stage.
    """

    __slots__ = (
        "device_ids",
        "indices",
        "live",
        "positions",
        "profiles",
        "records",
        "rejections",
        "timestamps",
        "unknown_sensors",
        "values",
    )

    def __init__(
        self, records: Sequence[Record] = (), live: Sequence[bool] = (), width: int = 0
    ) -> None:
        self.records: Sequence[Record] = records
        self.live: list[bool] = list(live)
        self.rejections: list[list[Rejection]] = [[] for _ in self.live]
        self.device_ids: list[str] = []
        self.timestamps: list[float] = []
        self.values = np.empty((0, width), np.float32)
        self.indices: list[int | None] = []  # position in a batch message
        self.profiles: list[int] = []  # the lane each reading was routed to
        self.positions: list[int] = []  # the record's position among the records
        self.unknown_sensors = 0  # sensor names no model knows, in new records

    def __len__(self) -> int:
        """How many readings."""
        return len(self.device_ids)

    def reject(self, position: int, rejection: Rejection) -> None:
        """Reject (part of) record ``position``; a replayed record's were rejected when new."""
        if self.live[position]:
            self.rejections[position].append(rejection)

    def select(self, rows: Sequence[int]) -> Readings:
        """The readings at ``rows`` (one lane's), sharing the records and their rejections."""
        part = Readings()
        part.records, part.live, part.rejections = self.records, self.live, self.rejections
        for name in ("device_ids", "timestamps", "indices", "profiles", "positions"):
            column = getattr(self, name)
            setattr(part, name, [column[row] for row in rows])
        part.values = self.values[np.asarray(rows, dtype=np.int64)]
        return part

    def extend(self, columns: ParsedColumns, start: int, take: int) -> np.ndarray:
        """Append what records ``start`` to ``start + take`` hold, parsed as ``columns``' first
        ``take`` values; returns their rows of ``columns.values``, for the caller to join."""
        count = bisect_left(columns.positions, take)
        self.device_ids.extend(columns.device_ids[:count])
        self.timestamps.extend(columns.timestamps[:count])
        self.indices.extend(columns.indices[:count])
        self.profiles.extend(columns.profiles[:count])
        self.positions.extend([start + p for p in columns.positions[:count]])
        for offset in range(take):
            position = start + offset
            if self.live[position]:
                self.unknown_sensors += columns.unknown_sensors[offset]
                self.rejections[position].extend(columns.rejections[offset])
        return columns.values[:count]


# Records parsed together at first; later parses are sized by the readings per record seen.
_FIRST_PARSE = 64


def decode(
    parser: ReadingParser,
    topic: str,
    records: Sequence[Record],
    live: Sequence[bool],
    max_readings: int,
    trace_log: RateLimitedLog,
) -> Readings:
    """Parse records from the start of ``records`` until they hold ``max_readings`` readings.

    ``live[i]`` says whether ``records[i]`` is new. A record is always taken whole (a gateway
    batch may hold many readings), so the last one may go past ``max_readings``;
    ``len(result.records)`` says how many were taken. Values are parsed a run at a time
    (:meth:`~detector.core.readings.ReadingParser.parse_columns`), each run sized by the readings
    per record so far so that little is parsed beyond what is taken. Never raises on a record's
    content: see :func:`reject_internal_error` (``trace_log`` logs the tracebacks).
    """
    readings = Readings(records, live, parser.width)
    parts: list[np.ndarray] = []
    taken = 0
    size = _FIRST_PARSE
    while taken < len(records) and len(readings) < max_readings:
        run = records[taken : taken + size]
        columns, failures = _parse_run(parser, topic, run, trace_log)
        needed = max_readings - len(readings)
        # Up to the record holding the needed-th reading, whole; all of the run if short of it.
        take = columns.positions[needed - 1] + 1 if len(columns.positions) >= needed else len(run)
        parts.append(readings.extend(columns, taken, take))
        for offset, error in failures.items():
            if offset < take:
                reject_internal_error(readings, taken + offset, error, trace_log)
        taken += take
        per_record = max(len(readings), 1) / taken
        size = min(max(int((max_readings - len(readings)) / per_record) + 1, 1), len(records))
    if parts:
        readings.values = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if taken < len(records):
        readings.records = records[:taken]
        del readings.live[taken:], readings.rejections[taken:]
    return readings


def _parse_run(
    parser: ReadingParser,
    topic: str,
    records: Sequence[Record],
    trace_log: RateLimitedLog,
) -> tuple[ParsedColumns, dict[int, Exception]]:
    """The run's values parsed into columns, and the error of each record a bug stopped.

    The run is parsed in bulk; should that raise (a bug: it never does on bad input), the
    records are parsed one by one, and one that raises there too holds nothing: the caller
    rejects it as ``internal_error`` (:func:`reject_internal_error`).
    """
    values = [record.value for record in records]
    try:
        return parser.parse_columns(values, topic), {}
    except Exception as exc:
        trace_log.warning(
            "parse_columns.trace",
            "bulk parse failed, parsing %d records one by one",
            len(values),
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    messages: list[ParsedMessage] = []
    failures: dict[int, Exception] = {}
    for offset, value in enumerate(values):
        try:
            messages.append(parser.parse(value, topic))
        except Exception as exc:
            messages.append(ParsedMessage())
            failures[offset] = exc
    return ParsedColumns.of_messages(messages, parser.width), failures


def reject_internal_error(
    readings: Readings, position: int, error: Exception, trace_log: RateLimitedLog
) -> None:
    """A bug met while handling record ``position``: log its traceback (rate limited), reject it.

    Nothing a record holds may stop its partition: the record (or what is left of it) is
    rejected as ``internal_error`` and the stages go on with the next.
    """
    if readings.live[position]:
        record = readings.records[position]
        trace_log.warning(
            "internal_error.trace",
            "cannot ingest %s[%d] offset %d",
            record.topic,
            record.partition,
            record.offset,
            exc_info=(type(error), error, error.__traceback__),
        )
    rejection = Rejection(RejectReason.INTERNAL_ERROR, repr(error)[:200], None)
    readings.reject(position, rejection)
