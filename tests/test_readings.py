"""Reading parser: wire bytes -> (device, timestamp, feature vector), never raising on bad input."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.readings import ParsedMessage, ReadingParser, RejectReason, encode_reading
from detector.core.routing import Router, RouteRule

FEATURES = ["temperature", "pressure", "vibration"]
TS = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SENSORS = {"temperature": 61.5, "pressure": 1.25, "vibration": 0.5}
FUZZ_PARSER = ReadingParser(FEATURES)  # module level: hypothesis reruns the test body


@pytest.fixture
def parser() -> ReadingParser:
    return ReadingParser(FEATURES)


def _reading(**changes: object) -> dict[str, object]:
    reading: dict[str, object] = encode_reading("pump-7", TS, dict(SENSORS))
    reading.update(changes)
    return reading


def _bytes(document: object) -> bytes:
    return json.dumps(document).encode()


def _reasons(parsed: ParsedMessage) -> list[RejectReason]:
    return [rejection.reason for rejection in parsed.rejections]


def test_single_reading(parser: ReadingParser) -> None:
    parsed = parser.parse(_bytes(_reading()))
    assert parsed.rejections == []
    assert parsed.device_ids == ["pump-7"]
    assert parsed.timestamps == [TS]
    assert len(parsed.values) == 1
    assert parsed.values[0].dtype == np.float32
    np.testing.assert_array_equal(parsed.values[0], [61.5, 1.25, 0.5])
    assert parsed.unknown_sensors == 0


def test_batch_array_keeps_order(parser: ReadingParser) -> None:
    batch = [_reading(device_id=f"d{i}", ts=TS + i) for i in range(3)]
    parsed = parser.parse(_bytes(batch))
    assert parsed.device_ids == ["d0", "d1", "d2"]
    assert parsed.timestamps == [TS, TS + 1, TS + 2]
    assert len(parsed.values) == 3
    assert parsed.rejections == []


def test_values_follow_feature_order_not_json_key_order(parser: ReadingParser) -> None:
    raw = (
        b'{"sensors": {"vibration": 3.0, "temperature": 1.0, "pressure": 2.0},'
        b' "ts": 1700000000, "device_id": "d"}'
    )
    np.testing.assert_array_equal(parser.parse(raw).values[0], [1.0, 2.0, 3.0])
    reordered = ReadingParser(["vibration", "pressure", "temperature"])
    np.testing.assert_array_equal(reordered.parse(raw).values[0], [3.0, 2.0, 1.0])


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2023-11-14T22:13:20", TS),  # naive means UTC
        ("2023-11-14T22:13:20Z", TS),
        ("2023-11-14T23:13:20+01:00", TS),
        ("2023-11-14T22:13:20.250000", TS + 0.25),
        (1700000000, TS),
        (1700000000.75, TS + 0.75),
    ],
)
def test_timestamp_formats(parser: ReadingParser, ts: object, expected: float) -> None:
    parsed = parser.parse(_bytes(_reading(ts=ts)))
    assert parsed.rejections == []
    assert parsed.timestamps == [pytest.approx(expected, abs=1e-6)]


def test_integer_sensor_values_are_accepted(parser: ReadingParser) -> None:
    parsed = parser.parse(
        _bytes(_reading(sensors={"temperature": 60, "pressure": 1, "vibration": 0}))
    )
    np.testing.assert_array_equal(parsed.values[0], [60.0, 1.0, 0.0])


def test_unknown_sensors_are_ignored_and_counted(parser: ReadingParser) -> None:
    sensors = {**SENSORS, "humidity": 40.0, "rpm": 1500.0}
    parsed = parser.parse(_bytes([_reading(sensors=sensors), _reading(sensors=sensors)]))
    assert parsed.rejections == []
    assert parsed.unknown_sensors == 4
    np.testing.assert_array_equal(parsed.values[0], [61.5, 1.25, 0.5])


def test_extra_top_level_fields_are_ignored(parser: ReadingParser) -> None:
    parsed = parser.parse(_bytes(_reading(firmware="1.2.3")))
    assert parsed.device_ids == ["pump-7"]


def test_oversized_message_is_rejected_before_parsing() -> None:
    small = ReadingParser(FEATURES, max_message_bytes=64)
    message = _bytes(_reading())
    assert len(message) > 64
    parsed = small.parse(message)
    assert _reasons(parsed) == [RejectReason.OVERSIZED]
    assert parsed.device_ids == []
    assert ReadingParser(FEATURES, max_message_bytes=len(message)).parse(message).device_ids == [
        "pump-7"
    ]


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\x00\x01garbage",
        b'{"device_id": "d", "ts": 1',  # truncated JSON
        b'{"device_id": "\xff\xfe", "ts": 1, "sensors": {}}',  # invalid UTF-8
        b"[" * 100_000,  # nesting deeper than the recursion limit
        # Integers past Python's int-conversion limit (4 300 digits) make json raise ValueError.
        b"[1" + b"0" * 5000 + b"]",
        b'{"device_id": "d", "ts": 1' + b"0" * 5000 + b', "sensors": {}}',
    ],
    ids=[
        "none",
        "empty",
        "bad-bytes",
        "truncated",
        "invalid-utf8",
        "deep-nesting",
        "huge-int",
        "huge-int-ts",
    ],
)
def test_unparsable(parser: ReadingParser, value: bytes | None) -> None:
    parsed = parser.parse(value)
    assert _reasons(parsed) == [RejectReason.UNPARSABLE]
    assert parsed.device_ids == []


@pytest.mark.parametrize("missing", ["device_id", "ts", "sensors"])
def test_missing_field(parser: ReadingParser, missing: str) -> None:
    reading = _reading()
    del reading[missing]
    parsed = parser.parse(_bytes(reading))
    assert _reasons(parsed) == [RejectReason.MISSING_FIELD]
    assert missing in parsed.rejections[0].detail


@pytest.mark.parametrize(
    "document",
    [
        _reading(sensors={**SENSORS, "pressure": "1.5"}),
        _reading(sensors={**SENSORS, "pressure": True}),
        _reading(sensors={**SENSORS, "pressure": None}),
        _reading(sensors=[1.0, 2.0, 3.0]),
        _reading(device_id=7),
        _reading(device_id=""),
        _reading(ts="yesterday"),
        _reading(ts=True),
        [1, "x"],
        "just a string",
    ],
    ids=[
        "string-value",
        "bool-value",
        "null-value",
        "sensors-list",
        "numeric-device",
        "empty-device",
        "bad-ts-string",
        "bool-ts",
        "non-object-items",
        "top-level-string",
    ],
)
def test_invalid_type(parser: ReadingParser, document: object) -> None:
    parsed = parser.parse(_bytes(document))
    assert parsed.rejections
    assert set(_reasons(parsed)) == {RejectReason.INVALID_TYPE}
    assert parsed.device_ids == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": NaN, "pressure": 1, "vibration": 1}}',
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 1, "pressure": Infinity, '
        b'"vibration": 1}}',
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 1, "pressure": 1, '
        b'"vibration": -Infinity}}',
        b'{"device_id": "d", "ts": NaN, "sensors": {"temperature": 1, "pressure": 1, "vibration": 1}}',
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 1e300, "pressure": 1, '
        b'"vibration": 1}}',  # finite as float64, inf as float32
    ],
    ids=["nan", "inf", "neg-inf", "nan-ts", "float32-overflow"],
)
def test_non_finite(parser: ReadingParser, raw: bytes) -> None:
    parsed = parser.parse(raw)
    assert _reasons(parsed) == [RejectReason.NON_FINITE]
    assert parsed.values == []


def test_non_finite_unknown_sensor_is_still_rejected(parser: ReadingParser) -> None:
    raw = (
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 1, "pressure": 1, '
        b'"vibration": 1, "other": NaN}}'
    )
    assert _reasons(parser.parse(raw)) == [RejectReason.NON_FINITE]


def test_missing_sensors_come_through_as_nan_for_admission_to_decide(
    parser: ReadingParser,
) -> None:
    parsed = parser.parse(_bytes(_reading(sensors={"temperature": 1.0})))
    assert parsed.rejections == []
    (vector,) = parsed.values
    assert vector[0] == 1.0
    assert np.isnan(vector[1:]).all()


def test_batch_with_bad_items_keeps_the_good_ones(parser: ReadingParser) -> None:
    batch = [
        _reading(device_id="good-1"),
        _reading(device_id=5),
        "not an object",
        _reading(device_id="good-2", ts=TS + 1),
    ]
    parsed = parser.parse(_bytes(batch))
    assert parsed.device_ids == ["good-1", "good-2"]
    assert parsed.timestamps == [TS, TS + 1]
    assert parsed.indices == [0, 3]
    assert len(parsed.values) == 2
    assert _reasons(parsed) == [RejectReason.INVALID_TYPE, RejectReason.INVALID_TYPE]
    assert [rejection.index for rejection in parsed.rejections] == [1, 2]


def test_empty_batch_is_neither_accepted_nor_rejected(parser: ReadingParser) -> None:
    parsed = parser.parse(b"[]")
    assert parsed.device_ids == []
    assert parsed.rejections == []


def test_reject_reasons_are_metric_labels() -> None:
    assert {reason.value for reason in RejectReason} >= {
        "oversized",
        "unparsable",
        "missing_field",
        "invalid_type",
        "non_finite",
        "missing_sensors",
    }


def _check_consistent(parsed: ParsedMessage) -> None:
    assert len(parsed.device_ids) == len(parsed.timestamps) == len(parsed.values)
    for vector, ts in zip(parsed.values, parsed.timestamps, strict=True):
        assert vector.shape == (len(FEATURES),)
        # NaN marks a sensor the reading lacks (admission fills or rejects it); never inf.
        assert not np.isinf(vector).any()
        assert np.isfinite(ts)


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    parsed = FUZZ_PARSER.parse(value)
    _check_consistent(parsed)
    if not parsed.device_ids and not parsed.rejections:
        assert json.loads(value) == []  # only an empty batch yields nothing at all


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["2023-11-14T22:13:20", "pump-7", *FEATURES]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["device_id", "ts", "sensors", *FEATURES]), children)
    ),
    max_leaves=12,
)
_reading_like = st.fixed_dictionaries(
    {},
    optional={
        "device_id": _json,
        "ts": _json,
        "sensors": st.dictionaries(st.sampled_from([*FEATURES, "x"]), _json) | _json,
    },
)


@settings(max_examples=150, deadline=None)
@given(document=st.one_of(_reading_like, st.lists(_reading_like, max_size=4), _json))
def test_arbitrary_json_never_raises(document: object) -> None:
    """Structured fuzz: reading-shaped documents with arbitrary field values."""
    try:
        raw = json.dumps(document).encode()
    except ValueError:  # e.g. lone surrogates cannot be encoded
        return
    parsed = FUZZ_PARSER.parse(raw)
    _check_consistent(parsed)
    items = document if isinstance(document, list) else [document]
    assert len(parsed.device_ids) + len(parsed.rejections) == len(items)


def test_naive_datetime_is_utc_regardless_of_local_timezone(
    parser: ReadingParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    if hasattr(time, "tzset"):
        time.tzset()
    try:
        parsed = parser.parse(_bytes(_reading(ts="2023-11-14T22:13:20")))
        assert parsed.timestamps == [
            datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc).timestamp()
        ]
    finally:
        monkeypatch.undo()
        if hasattr(time, "tzset"):
            time.tzset()


class _ReferenceParser(ReadingParser):
    """The parser with its fast path switched off: stdlib JSON and pydantic for every reading."""

    def _parse_valid(self, document: object, topic: str) -> ParsedMessage | None:
        return None


REFERENCE_PARSER = _ReferenceParser(FEATURES)


def _assert_same(value: bytes | None) -> ParsedMessage:
    """The fast path's result is exactly the reference path's, rejections and details included."""
    fast, reference = FUZZ_PARSER.parse(value), REFERENCE_PARSER.parse(value)
    assert fast.device_ids == reference.device_ids
    assert fast.timestamps == reference.timestamps
    assert [type(ts) for ts in fast.timestamps] == [type(ts) for ts in reference.timestamps]
    assert fast.indices == reference.indices
    assert fast.rejections == reference.rejections
    assert fast.unknown_sensors == reference.unknown_sensors
    assert len(fast.values) == len(reference.values)
    for mine, theirs in zip(fast.values, reference.values, strict=True):
        assert mine.dtype == theirs.dtype == np.float32
        np.testing.assert_array_equal(mine, theirs)  # NaN (a missing sensor) equals NaN here
    return fast


_numbers = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=-4e38, max_value=4e38)  # around the float32 limit
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.booleans()
    | st.none()
    | st.text(max_size=5)
)
_valid_ish_reading = st.fixed_dictionaries(
    {
        "device_id": st.text(min_size=1, max_size=8) | st.text(min_size=250, max_size=260),
        "ts": st.floats(min_value=0, max_value=4e9)
        | st.integers(min_value=-(2**60), max_value=2**60)
        | st.sampled_from(["2023-11-14T22:13:20Z", "2023-11-14T22:13:20", "1700000000"]),
        "sensors": st.dictionaries(
            st.sampled_from([*FEATURES, "humidity", "rpm"]),
            st.floats(min_value=-1e6, max_value=1e6) | st.integers(-(2**40), 2**40),
        ),
    },
    optional={"firmware": st.text(max_size=3)},
)
_odd_reading = st.fixed_dictionaries(
    {
        "device_id": st.text(max_size=3) | st.integers() | st.none(),
        "ts": _numbers,
        "sensors": st.dictionaries(st.sampled_from([*FEATURES, "x"]), _numbers) | _numbers,
    }
)


@settings(max_examples=400, deadline=None)
@given(
    document=st.one_of(
        _valid_ish_reading,
        st.lists(_valid_ish_reading, max_size=5),
        st.lists(st.one_of(_valid_ish_reading, _odd_reading), max_size=5),
        _odd_reading,
        _json,
    ),
    allow_nan=st.booleans(),
)
def test_fast_path_equals_reference_path(document: object, allow_nan: bool) -> None:
    """Property: whatever the document, the fast path and the pydantic path agree exactly."""
    try:
        raw = json.dumps(document, allow_nan=allow_nan).encode("utf-8", "surrogatepass")
    except ValueError:  # NaN with allow_nan=False
        return
    _assert_same(raw)


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=256))
def test_fast_path_equals_reference_path_on_arbitrary_bytes(value: bytes) -> None:
    _assert_same(value)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 3.4028235e38}}',  # float32 max
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 3.4028236e38}}',  # rounds to max
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 3.5e38}}',  # overflows float32
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 1e308, "pressure": 1e308}}',
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 16777217}}',  # 2**24 + 1
        b'{"device_id": "d", "ts": 9007199254740993, "sensors": {}}',  # 2**53 + 1
        b'{"device_id": "d", "ts": 1, "sensors": {"temperature": 123456789012345678901234567890}}',
        b'{"device_id": "d", "ts": -0.0, "sensors": {"temperature": -0.0}}',
        b'{"device_id": "\\ud800", "ts": 1, "sensors": {}}',  # lone surrogate
        b'{"device_id": "d", "ts": 1, "sensors": {}, "sensors": {"temperature": 1}}',
        b'\xef\xbb\xbf{"device_id": "d", "ts": 1, "sensors": {}}',  # UTF-8 byte order mark
        '{"device_id": "d", "ts": 1, "sensors": {}}'.encode("utf-16"),
        b'[{"device_id": "d", "ts": 1, "sensors": {}}, {"device_id": "d", "ts": NaN}]',
        b"[]",
        b"[[]]",
        b"17",
    ],
)
def test_fast_path_edge_cases_equal_reference_path(raw: bytes) -> None:
    _assert_same(raw)


def test_fast_path_takes_valid_messages() -> None:
    """Valid readings, ints and missing sensors included, never need pydantic."""
    sensors = {"temperature": 60, "pressure": 1.5, "humidity": 3.0}
    document = [_reading(sensors=sensors), _reading(ts=TS + 1, device_id="d2")]
    parsed = FUZZ_PARSER._parse_valid(json.loads(_bytes(document)), "")
    assert parsed is not None
    assert parsed.unknown_sensors == 1
    assert parsed.device_ids == _assert_same(_bytes(document)).device_ids == ["pump-7", "d2"]


ROUTER = Router(
    ["pump", "fan"],
    [
        RouteRule("reading"),
        RouteRule("devices", ("pump-*",), "pump"),
        RouteRule("topics", ("fans",), "fan"),
    ],
)
PROFILE_FEATURES = [list(FEATURES), ["vibration", "temperature"]]
ROUTED_PARSER = ReadingParser(FEATURES, router=ROUTER, profile_features=PROFILE_FEATURES)
ROUTED_REFERENCE = _ReferenceParser(FEATURES, router=ROUTER, profile_features=PROFILE_FEATURES)
_routed_reading = st.fixed_dictionaries(
    {
        "device_id": st.sampled_from(["pump-1", "fan-1", "other"]),
        "ts": st.floats(min_value=0, max_value=4e9),
        "sensors": st.dictionaries(
            st.sampled_from([*FEATURES, "vibration"]), st.floats(min_value=-1e6, max_value=1e6)
        ),
    },
    optional={
        "profile": st.sampled_from(["pump", "fan", "compressor", ""])
        | st.integers()
        | st.none()
        | st.text(min_size=65, max_size=66)
    },
)


@settings(max_examples=300, deadline=None)
@given(
    document=st.one_of(_routed_reading, st.lists(_routed_reading, max_size=5)),
    topic=st.sampled_from(["readings", "fans"]),
)
def test_routed_fast_path_equals_reference_path(document: object, topic: str) -> None:
    """Property: with routing, both paths give each reading the same profile and features."""
    raw = json.dumps(document).encode()
    fast, reference = ROUTED_PARSER.parse(raw, topic), ROUTED_REFERENCE.parse(raw, topic)
    assert fast.profiles == reference.profiles
    assert fast.rejections == reference.rejections
    assert fast.device_ids == reference.device_ids
    for mine, theirs, profile in zip(fast.values, reference.values, fast.profiles, strict=True):
        assert len(mine) == len(PROFILE_FEATURES[profile])
        np.testing.assert_array_equal(mine, theirs)


def test_routing_maps_each_reading_to_its_profile_features() -> None:
    readings = [
        {"device_id": "pump-1", "ts": 1.0, "sensors": {"temperature": 1.0}},
        {"device_id": "fan-1", "ts": 1.0, "sensors": {"vibration": 2.0, "temperature": 3.0}},
        {"device_id": "x", "ts": 1.0, "sensors": {"temperature": 1.0}, "profile": "fan"},
        {"device_id": "y", "ts": 1.0, "sensors": {"temperature": 1.0}},
        {"device_id": "pump-2", "ts": 1.0, "sensors": {"temperature": 1.0}, "profile": "boiler"},
    ]
    parsed = ROUTED_PARSER.parse(json.dumps(readings).encode(), "fans")
    assert parsed.device_ids == ["pump-1", "fan-1", "x", "y"]
    assert parsed.profiles == [0, 1, 1, 1]  # fan-1 and y by topic, x by its own field
    np.testing.assert_array_equal(parsed.values[1], np.array([2.0, 3.0], dtype=np.float32))
    (rejection,) = parsed.rejections
    assert rejection.reason is RejectReason.UNKNOWN_PROFILE and rejection.index == 4
    unrouted = ROUTED_PARSER.parse(json.dumps(readings[3]).encode(), "readings")
    assert unrouted.rejections[0].reason is RejectReason.UNKNOWN_PROFILE
