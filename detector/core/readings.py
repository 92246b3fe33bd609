"""Reading wire format and parsing: Kafka message bytes -> (device, timestamp, feature vector).

A message value is one JSON reading object or a JSON array of them (gateway batches)::

    {"device_id": "pump-7", "ts": 1700000000.0, "sensors": {"temperature": 61.2, ...}}

``ts`` is epoch seconds (number) or an ISO-8601 string (naive means UTC). Sensor names are mapped
to the model's feature order by name; names the model does not know are ignored and counted.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated

import msgspec
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from detector.core.routing import Router

__all__ = [
    "ParsedColumns",
    "ParsedMessage",
    "Reading",
    "ReadingParser",
    "RejectReason",
    "Rejection",
    "encode_reading",
]

StrictFloat = Annotated[float, Field(strict=True)]
_MAX_DEVICE_ID = 256
_MAX_PROFILE = 64
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_EXACT_INT = 2**53  # integers a float64 holds exactly
_NUMBER_TYPES = {float, int}  # exact types: bool is an int subclass and is invalid here


class Reading(BaseModel):
    """One reading as it appears on the wire."""

    model_config = ConfigDict(extra="ignore")

    device_id: Annotated[str, Field(strict=True, min_length=1, max_length=_MAX_DEVICE_ID)]
    ts: StrictFloat | datetime
    sensors: dict[str, StrictFloat]
    # Which device profile (model) the reading is for, when the routing rules read it.
    profile: Annotated[str, Field(strict=True, min_length=1, max_length=_MAX_PROFILE)] | None = None

    def epoch_seconds(self) -> float:
        """``ts`` as epoch seconds."""
        if isinstance(self.ts, datetime):
            moment = self.ts if self.ts.tzinfo else self.ts.replace(tzinfo=timezone.utc)
            return moment.timestamp()
        return float(self.ts)


class _WireReading(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A reading :meth:`ReadingParser.parse_many` can take without a second look.

    msgspec checks in C what :meth:`ReadingParser._parse_valid` checks in Python; whatever it
    refuses goes to :meth:`ReadingParser.parse`, which decides. The bounds are strict where the
    fast path's are inclusive (``ts`` of exactly 2**53) or absent (a float ``ts`` past 2**53, a
    number that rounds to the float32 maximum): those go to ``parse`` too. Unknown fields are
    refused rather than skipped: msgspec skips over what Python's json rejects (an integer past
    its 4 300 digits) and has its own nesting limit, not json's. ``gc=False``: the structs live
    for one poll and hold no cycles.
    """

    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_DEVICE_ID)]
    ts: Annotated[float, msgspec.Meta(gt=-_EXACT_INT, lt=_EXACT_INT)]
    sensors: dict[str, Annotated[float, msgspec.Meta(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)]]
    profile: Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_PROFILE)] | None = None


class RejectReason(str, enum.Enum):
    """Why a record (or one reading in a batch) was not used; a label of the rejected counter."""

    OVERSIZED = "oversized"
    UNPARSABLE = "unparsable"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    NON_FINITE = "non_finite"
    MISSING_SENSORS = "missing_sensors"
    DUPLICATE = "duplicate"
    LATE = "late"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_MANY_DEVICES = "too_many_devices"
    UNKNOWN_PROFILE = "unknown_profile"  # no routing rule gives the reading a configured profile
    PROFILE_CONFLICT = "profile_conflict"  # the device is tracked under another profile
    UNDECODABLE = "undecodable"  # the Kafka client could not decode the record itself
    INTERNAL_ERROR = "internal_error"  # a bug met while ingesting it: logged with the traceback


@dataclass(frozen=True)
class Rejection:
    """A rejected reading: the reason (a metric label) and a human-readable detail for logs.

    ``index`` is the reading's position in a batch message, ``None`` for a whole message.
    """

    reason: RejectReason
    detail: str
    index: int | None = None


@dataclass
class ParsedMessage:
    """Readings in feature order plus what was rejected or ignored in one message.

    A sensor the reading did not carry is NaN in its vector; whether it may be imputed is decided
    later (see :mod:`detector.core.admission`), since that needs the device's history.
    """

    device_ids: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    indices: list[int | None] = field(default_factory=list)  # position in a batch message
    profiles: list[int] = field(default_factory=list)  # each reading's profile (router's index)
    rejections: list[Rejection] = field(default_factory=list)
    unknown_sensors: int = 0


@dataclass
class ParsedColumns:
    """A run of message values parsed into columns: row ``i`` is one reading, in value order.

    ``values`` is ``(readings, widest profile's features)``: a reading's features are the first
    ones of its row, in its profile's order (NaN: a sensor it did not carry), and a reading of a
    narrower profile has NaN past them. ``positions[i]`` is the value reading ``i`` came from;
    ``rejections`` and ``unknown_sensors`` have one entry per value.
    """

    device_ids: list[str]
    timestamps: list[float]
    values: np.ndarray
    indices: list[int | None]  # position in a batch message
    profiles: list[int]  # each reading's profile (router's index)
    positions: list[int]
    rejections: list[list[Rejection]]
    unknown_sensors: list[int]

    @classmethod
    def of_messages(cls, messages: Sequence[ParsedMessage], width: int) -> ParsedColumns:
        """The columns of messages parsed one by one (``width``: the widest profile's features)."""
        columns = cls([], [], np.empty((0, width), np.float32), [], [], [], [], [])
        rows: list[list[float | None]] = []
        for position, message in enumerate(messages):
            columns.add_message(message, position, rows, width)
        columns.values = _matrix(rows, width)
        return columns

    def add_message(
        self,
        message: ParsedMessage,
        position: int,
        rows: list[list[float | None]],
        width: int,
        message_rows: list[list[float | None]] | None = None,
    ) -> None:
        """Append the readings of value ``position``; their rows go to ``rows`` (padded).

        ``message_rows``: the rows, already padded, when ``message`` holds no vectors.
        """
        count = len(message.device_ids)
        self.device_ids.extend(message.device_ids)
        self.timestamps.extend(message.timestamps)
        self.indices.extend(message.indices)
        self.profiles.extend(message.profiles)
        self.positions.extend([position] * count)
        self.rejections.append(message.rejections)
        self.unknown_sensors.append(message.unknown_sensors)
        if message_rows is not None:
            rows.extend(message_rows)
            return
        for vector in message.values:
            # tolist() gives the float32 values exactly, NaN included; back to float32 unchanged.
            row: list[float | None] = vector.tolist()
            rows.append(row + [None] * (width - len(row)) if len(row) < width else row)


def _matrix(rows: list[list[float | None]], width: int) -> np.ndarray:
    """``rows`` as a float32 matrix, ``None`` as NaN (``(0, width)`` when there are none)."""
    if not rows:
        return np.empty((0, width), np.float32)
    return np.array(rows, dtype=np.float32)


class ReadingParser:
    """Parses message values against fixed feature orders (the models').

    With one model, ``feature_names`` is its order and every reading is profile 0. With device
    profiles, ``profile_features`` holds each profile's order (in the ``router``'s profile
    order) and each reading is mapped to the features of the profile the router gives it.
    """

    def __init__(
        self,
        feature_names: list[str],
        max_message_bytes: int = 1_048_576,
        router: Router | None = None,
        profile_features: list[list[str]] | None = None,
    ) -> None:
        self.feature_names = list(feature_names)
        self.max_message_bytes = max_message_bytes
        self.router = router
        self._names = [list(names) for names in (profile_features or [self.feature_names])]
        self._indexes = [{name: i for i, name in enumerate(names)} for names in self._names]
        self._wire = msgspec.json.Decoder(_WireReading | list[_WireReading])
        if router is not None and len(router.profiles) != len(self._names):
            raise ValueError("need the feature order of every profile the router knows")

    def parse(self, value: bytes | None, topic: str = "") -> ParsedMessage:
        """Parse one message value from ``topic``; never raises on bad input."""
        result = ParsedMessage()
        if value is None:
            result.rejections.append(Rejection(RejectReason.UNPARSABLE, "empty message value"))
            return result
        if len(value) > self.max_message_bytes:
            result.rejections.append(
                Rejection(RejectReason.OVERSIZED, f"{len(value)} bytes > {self.max_message_bytes}")
            )
            return result
        try:
            fast = self._parse_valid(orjson.loads(value), topic)
        except orjson.JSONDecodeError:
            fast = None  # NaN, a UTF-16 text, a lone surrogate...: the full path decides
        if fast is not None:
            return fast
        try:
            document = json.loads(value)
        except (ValueError, RecursionError) as exc:
            # ValueError covers bad UTF-8, bad JSON and integers past Python's int-conversion
            # limit (4 300 digits), which json raises as a plain ValueError.
            result.rejections.append(Rejection(RejectReason.UNPARSABLE, str(exc)[:200]))
            return result
        if isinstance(document, list):
            for index, item in enumerate(document):
                self._parse_item(item, result, index, topic)
        else:
            self._parse_item(document, result, None, topic)
        return result

    @property
    def width(self) -> int:
        """The widest profile's features: the columns of :attr:`ParsedColumns.values`."""
        return max(map(len, self._names))

    def parse_columns(self, values: Sequence[bytes | None], topic: str = "") -> ParsedColumns:
        """Parse a run of message values from ``topic`` into columns; never raises on bad input.

        Reading for reading, the same as :meth:`parse` on each value (:meth:`parse_many` gives
        this as one :class:`ParsedMessage` per value; tests/test_parse_many.py checks it equals
        ``parse``) in about half the time, single readings or gateway batches alike
        (bench/decode.py): msgspec decodes and validates each value into a
        :class:`_WireReading` in C, and one numpy conversion makes the run's matrix. A value
        that is not ASCII ``bytes`` within ``max_message_bytes``, that msgspec refuses, or one of
        whose readings the router gives no profile is parsed by :meth:`parse` alone.
        """
        decode = self._wire.decode
        limit = self.max_message_bytes
        router = self.router
        names = self._names[0]
        width = self.width
        rows: list[list[float | None]] = []
        columns = ParsedColumns([], [], np.empty((0, width), np.float32), [], [], [], [], [])
        device_ids, timestamps = columns.device_ids, columns.timestamps
        indices, profiles, positions = columns.indices, columns.profiles, columns.positions
        rejections, unknown_sensors = columns.rejections, columns.unknown_sensors
        for position, value in enumerate(values):
            document = None
            # Non-ASCII bytes go to parse: its UTF-8 checks (BOM, UTF-16, surrogates) decide.
            if type(value) is bytes and len(value) <= limit and value.isascii():
                try:
                    document = decode(value)
                except msgspec.DecodeError:
                    document = None  # ValidationError included: parse words the rejection
            if router is None and type(document) is _WireReading:
                # Most values: one reading, one profile, inline.
                sensors = document.sensors
                row = list(map(sensors.get, names))
                rows.append(row)
                device_ids.append(document.device_id)
                timestamps.append(document.ts)
                indices.append(None)
                profiles.append(0)
                positions.append(position)
                rejections.append([])
                unknown_sensors.append(len(sensors) - width + row.count(None))
                continue
            message = None if document is None else self._from_wire(document, topic)
            if message is None:
                columns.add_message(self.parse(value, topic), position, rows, width)
                continue
            message_rows, message = message
            columns.add_message(message, position, rows, width, message_rows)
        columns.values = _matrix(rows, width)
        return columns

    def parse_many(self, values: Sequence[bytes | None], topic: str = "") -> list[ParsedMessage]:
        """:meth:`parse_columns` as one :class:`ParsedMessage` per value, as :meth:`parse` gives.

        The vectors are views of the run's matrix.
        """
        columns = self.parse_columns(values, topic)
        messages = [
            ParsedMessage(rejections=rejections, unknown_sensors=unknown)
            for rejections, unknown in zip(columns.rejections, columns.unknown_sensors, strict=True)
        ]
        widths = [len(names) for names in self._names]
        for row, position in enumerate(columns.positions):
            message = messages[position]
            profile = columns.profiles[row]
            message.device_ids.append(columns.device_ids[row])
            message.timestamps.append(columns.timestamps[row])
            message.values.append(columns.values[row, : widths[profile]])
            message.indices.append(columns.indices[row])
            message.profiles.append(profile)
        return messages

    def _from_wire(
        self, document: _WireReading | list[_WireReading], topic: str
    ) -> tuple[list[list[float | None]], ParsedMessage] | None:
        """A decoded message as :meth:`parse` reads it: its rows (padded to :attr:`width`) and
        its readings without vectors.

        ``None`` when the router gives a reading no profile: the rejection is :meth:`parse`'s
        to word.
        """
        batch = type(document) is list
        items = document if batch else (document,)
        router = self.router
        names = self._names[0]
        width = self.width
        rows: list[list[float | None]] = []
        message = ParsedMessage(indices=list(range(len(items))) if batch else [None])
        for item in items:
            profile = 0
            if router is not None:
                found = router.route(topic, item.device_id, item.profile)
                if found is None:
                    return None
                profile, names = found, self._names[found]
            sensors = item.sensors
            row: list[float | None] = list(map(sensors.get, names))
            message.unknown_sensors += len(sensors) - len(names) + row.count(None)
            message.device_ids.append(item.device_id)
            message.timestamps.append(item.ts)
            message.profiles.append(profile)
            rows.append(row + [None] * (width - len(names)) if len(names) < width else row)
        return rows, message

    def _parse_valid(self, document: object, topic: str) -> ParsedMessage | None:
        """The common case, a message whose readings are all valid, without pydantic.

        Returns ``None`` as soon as anything is unusual (a wrong type, a non-finite or float32
        overflowing number, an out-of-range ``device_id``, an ISO ``ts``): :meth:`parse` then
        decodes the message again with the standard library and validates every reading with
        pydantic, so both paths give the same result (tests/test_readings.py checks that).
        """
        items = document if isinstance(document, list) else [document]
        router = self.router
        names = self._names[0]
        device_ids: list[str] = []
        timestamps: list[float] = []
        vectors: list[np.ndarray] = []
        profiles: list[int] = []
        unknown = 0
        for item in items:
            if type(item) is not dict:
                return None
            device_id = item.get("device_id")
            ts = item.get("ts")
            sensors = item.get("sensors")
            if type(device_id) is not str or not 0 < len(device_id) <= _MAX_DEVICE_ID:
                return None
            declared = item.get("profile")
            if declared is not None and (
                type(declared) is not str or not 0 < len(declared) <= _MAX_PROFILE
            ):
                return None
            profile = 0
            if router is not None:
                found = router.route(topic, device_id, declared)
                if found is None:
                    return None  # rejected as unknown_profile by the full path
                profile, names = found, self._names[found]
            if type(ts) is int and -_EXACT_INT <= ts <= _EXACT_INT:
                ts = float(ts)
            elif type(ts) is not float or not math.isfinite(ts):
                return None
            if type(sensors) is not dict:
                return None
            values = sensors.values()
            kinds = set(map(type, values))
            if not kinds <= _NUMBER_TYPES:
                return None  # bool, str, null, ...
            # NaN or Inf makes the sum non-finite; a float32 overflow is left to the full path.
            if values and (
                not math.isfinite(sum(values))
                or max(values) > _FLOAT32_MAX
                or min(values) < -_FLOAT32_MAX
            ):
                return None
            row = list(map(sensors.get, names))
            missing = row.count(None)
            if missing or int in kinds:
                # Missing sensors are NaN for admission to decide; ints go through float64 first,
                # as pydantic converts them, so the float32 rounding is the same.
                row = [math.nan if number is None else float(number) for number in row]
            unknown += len(sensors) - (len(names) - missing)
            device_ids.append(device_id)
            timestamps.append(ts)
            vectors.append(np.array(row, dtype=np.float32))
            profiles.append(profile)
        return ParsedMessage(
            device_ids=device_ids,
            timestamps=timestamps,
            values=vectors,
            indices=list(range(len(items))) if isinstance(document, list) else [None],
            profiles=profiles,
            unknown_sensors=unknown,
        )

    def _parse_item(
        self, item: object, result: ParsedMessage, index: int | None, topic: str
    ) -> None:
        if not isinstance(item, dict):
            result.rejections.append(
                Rejection(
                    RejectReason.INVALID_TYPE,
                    f"reading must be an object, got {type(item).__name__}",
                    index,
                )
            )
            return
        try:
            reading = Reading.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = (
                RejectReason.MISSING_FIELD
                if first["type"] == "missing"
                else RejectReason.INVALID_TYPE
            )
            where = ".".join(str(part) for part in first["loc"])
            result.rejections.append(Rejection(reason, f"{where}: {first['msg']}", index))
            return
        profile = 0
        if self.router is not None:
            found = self.router.route(topic, reading.device_id, reading.profile)
            if found is None:
                detail = (
                    f"{reading.device_id}: no profile for it (topic {topic}, "
                    f"profile field {reading.profile!r})"
                )
                result.rejections.append(Rejection(RejectReason.UNKNOWN_PROFILE, detail, index))
                return
            profile = found
        ts = reading.epoch_seconds()
        positions = self._indexes[profile]
        vector = np.full(len(self._names[profile]), np.nan, dtype=np.float32)
        # Values beyond float32 become inf here and are rejected as non-finite just below.
        with np.errstate(over="ignore"):
            for name, number in reading.sensors.items():
                position = positions.get(name)
                if position is None:
                    result.unknown_sensors += 1
                else:
                    vector[position] = number
        # A finite float64 can still overflow float32 (1e300), hence the check on the vector too.
        if (
            not math.isfinite(ts)
            or not all(math.isfinite(v) for v in reading.sensors.values())
            or np.isinf(vector).any()
        ):
            result.rejections.append(
                Rejection(RejectReason.NON_FINITE, "NaN or Inf in ts or sensors", index)
            )
            return
        result.device_ids.append(reading.device_id)
        result.timestamps.append(ts)
        result.values.append(vector)
        result.indices.append(index)
        result.profiles.append(profile)


def encode_reading(device_id: str, ts: float, sensors: dict[str, float]) -> dict[str, object]:
    """The JSON-ready form of a reading (used by the replay tool and tests)."""
    return {"device_id": device_id, "ts": ts, "sensors": sensors}
