"""ReadingParser.parse_many and the decode stage: a poll decoded at once equals each value parsed
on its own.

Every property draws whole polls (lists of message values) because parse_many shares work
across a poll's values (one vector conversion per profile): a value must come out the same
whatever its neighbours are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.clients.base import Record
from detector.core.readings import ParsedMessage, ReadingParser, RejectReason
from detector.core.routing import Router, RouteRule
from detector.logs import RateLimitedLog
from detector.stages.decode import decode

FEATURES = ["temperature", "pressure", "vibration"]
LIMIT = 600  # small, so that drawn values are oversized now and then
PARSER = ReadingParser(FEATURES, max_message_bytes=LIMIT)  # module level: hypothesis reruns
ROUTER = Router(
    ["pump", "fan"],
    [
        RouteRule("reading"),
        RouteRule("devices", ("pump-*",), "pump"),
        RouteRule("topics", ("fans",), "fan"),
    ],
)
ROUTED = ReadingParser(
    FEATURES,
    max_message_bytes=LIMIT,
    router=ROUTER,
    profile_features=[list(FEATURES), ["vibration", "temperature"]],
)
TOPICS = st.sampled_from(["readings", "fans"])
TRACE_LOG = RateLimitedLog(logging.getLogger(__name__))


def _assert_same_message(mine: ParsedMessage, theirs: ParsedMessage) -> None:
    assert mine.device_ids == theirs.device_ids
    assert mine.timestamps == theirs.timestamps
    assert [type(ts) for ts in mine.timestamps] == [type(ts) for ts in theirs.timestamps]
    # -0.0 == 0.0: the sign is compared too.
    assert [np.copysign(1.0, ts) for ts in mine.timestamps] == [
        np.copysign(1.0, ts) for ts in theirs.timestamps
    ]
    assert mine.indices == theirs.indices
    assert mine.profiles == theirs.profiles
    assert mine.rejections == theirs.rejections
    assert mine.unknown_sensors == theirs.unknown_sensors
    assert len(mine.values) == len(theirs.values)
    for vector, reference in zip(mine.values, theirs.values, strict=True):
        assert vector.dtype == reference.dtype == np.float32
        assert vector.shape == reference.shape
        assert vector.tobytes() == reference.tobytes()  # bit for bit: NaN, -0.0


def _assert_same(
    parser: ReadingParser, values: Sequence[bytes | None], topic: str = ""
) -> list[ParsedMessage]:
    """parse_many's result is parse's, value by value."""
    many = parser.parse_many(values, topic)
    assert len(many) == len(values)
    for mine, value in zip(many, values, strict=True):
        _assert_same_message(mine, parser.parse(value, topic))
    return many


# Number literals as they appear on the wire, some that no JSON encoder would write.
_number_literal = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=-4e38, max_value=4e38).map(repr),  # around the float32 limit
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.from_regex(r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e400",
            "3.4028235e38",
            "3.4028236e38",
            "3.5e38",
            "1" + "0" * 5000,
            "9007199254740992",
            "-9007199254740992",
            "9007199254740993",
            "-0.0",
            "-0",
            "5e-324",
            "1e-46",
            "true",
            "false",
            "null",
            '"1.5"',
            '"2023-11-14T22:13:20Z"',
            '"2023-11-14T22:13:20"',
            '"2023-11-14T23:13:20+01:00"',
            "[]",
            "{}",
            "[1.5]",
        ]
    ),
)
_device_literal = st.one_of(
    st.text(min_size=0, max_size=8).map(json.dumps),
    st.text(min_size=0, max_size=8).map(lambda text: json.dumps(text, ensure_ascii=False)),
    st.sampled_from(["pump-1", "fan-1", "other"]).map(json.dumps),
    st.integers(254, 258).map(lambda n: json.dumps("x" * n)),
    st.sampled_from(['"\\ud800"', '"\\ud83d\\ude00"', '"\\u00e9"', "7", "null", "true"]),
)
_profile_literal = st.one_of(
    st.sampled_from(['"pump"', '"fan"', '"compressor"', '""', "null", "3", "false"]),
    st.integers(63, 66).map(lambda n: json.dumps("p" * n)),
)
_extra_literal = st.sampled_from(
    [
        '"1.2.3"',
        "NaN",
        "1" + "0" * 5000,  # past Python's int-conversion limit: json refuses the whole message
        "[" * 3000 + "]" * 3000,  # past the recursion limit
        '{"nested": [1, {"x": null}]}',
        '"\\ud800"',
    ]
)
_key = st.sampled_from([*FEATURES, "humidity", "rpm"])


@st.composite
def _reading_text(draw: st.DrawFn) -> str:
    """One reading object's JSON text, its fields and numbers drawn from the literals above."""
    fields: list[tuple[str, str]] = []
    if draw(st.integers(0, 20)):  # now and then a field is missing
        fields.append(("device_id", draw(_device_literal)))
    if draw(st.integers(0, 20)):
        fields.append(("ts", draw(_number_literal | st.floats(0, 4e9).map(repr))))
    if draw(st.integers(0, 20)):
        if draw(st.integers(0, 15)):
            pairs = draw(st.lists(st.tuples(_key, _number_literal), max_size=6))
            fields.append(("sensors", "{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}"))
        else:
            fields.append(("sensors", draw(_number_literal)))
    if draw(st.booleans()):
        fields.append(("profile", draw(_profile_literal)))
    if not draw(st.integers(0, 10)):
        fields.append(("firmware", draw(_extra_literal)))
    if not draw(st.integers(0, 10)) and fields:
        fields.append(draw(st.sampled_from(fields)))  # a duplicate key: the last one counts
    fields = draw(st.permutations(fields))
    separator = draw(st.sampled_from([", ", ",", ",\n  "]))
    return "{" + separator.join(f'"{name}": {text}' for name, text in fields) + "}"


_valid_reading = st.fixed_dictionaries(
    {
        "device_id": st.sampled_from(["pump-1", "fan-1", "other", "d"])
        | st.text(min_size=1, max_size=6),
        "ts": st.floats(0, 4e9) | st.integers(0, 2**40),
        "sensors": st.dictionaries(
            _key, st.floats(-1e6, 1e6) | st.integers(-(2**40), 2**40), max_size=5
        ),
    },
    optional={"profile": st.sampled_from(["pump", "fan", "compressor"])},
)


@st.composite
def _value(draw: st.DrawFn) -> bytes | None:
    """One message value: mostly readings, valid or not, then every way a value can be bad."""
    kind = draw(st.integers(0, 11))
    if kind <= 3:
        return json.dumps(draw(_valid_reading)).encode()
    if kind == 4:
        return json.dumps(draw(st.lists(_valid_reading, max_size=4))).encode()
    if kind <= 6:
        return draw(_reading_text()).encode("utf-8", "surrogatepass")
    if kind == 7:
        texts = draw(st.lists(_reading_text() | st.sampled_from(["1", '"x"', "null", "[]"])))
        return ("[" + ", ".join(texts) + "]").encode("utf-8", "surrogatepass")
    if kind == 8:  # a valid reading damaged: cut short, a byte changed or inserted
        raw = bytearray(json.dumps(draw(_valid_reading)).encode())
        at = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["cut", "set", "insert"]))
        if action == "cut":
            return bytes(raw[:at])
        byte = draw(st.integers(0, 255))
        if action == "set":
            raw[at] = byte
        else:
            raw.insert(at, byte)
        return bytes(raw)
    if kind == 9:  # other encodings and byte order marks
        text = json.dumps(draw(_valid_reading))
        return draw(
            st.sampled_from(
                [
                    text.encode("utf-16"),
                    text.encode("utf-16-le"),
                    text.encode("utf-32"),
                    b"\xef\xbb\xbf" + text.encode(),
                    b" \n\t" + text.encode() + b"\r\n",
                ]
            )
        )
    if kind == 10:
        return draw(st.none() | st.binary(max_size=64) | st.just(b"x" * (LIMIT + 1)))
    # Anything JSON can hold, junk of all shapes.
    junk = draw(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(st.sampled_from(["device_id", "ts", "sensors", "x"]), children)
            ),
            max_leaves=8,
        )
    )
    return json.dumps(junk, allow_nan=True).encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(values=st.lists(_value(), max_size=12))
def test_parse_many_equals_parse(values: list[bytes | None]) -> None:
    """Property: any mix of values, valid or not, comes out as parse gives each one."""
    _assert_same(PARSER, values)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_value(), max_size=12), topic=TOPICS)
def test_routed_parse_many_equals_parse(values: list[bytes | None], topic: str) -> None:
    """Property: with device profiles too, each reading gets parse's profile and features."""
    _assert_same(ROUTED, values, topic)


@settings(max_examples=200, deadline=None)
@given(
    readings=st.lists(
        st.fixed_dictionaries(
            {
                "device_id": st.text(min_size=1, max_size=4),
                "ts": st.floats(allow_nan=False, allow_infinity=False),
                "sensors": st.dictionaries(_key, st.floats(allow_nan=False, allow_infinity=False)),
            }
        ),
        max_size=10,
    )
)
def test_any_finite_float_decodes_as_parse_decodes_it(readings: list[dict[str, object]]) -> None:
    """Property: msgspec and orjson read every float literal alike (shortest repr or not)."""
    values = [json.dumps(reading).encode() for reading in readings]
    values += [json.dumps(reading, indent=1).encode() for reading in readings]
    _assert_same(PARSER, values)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.binary(max_size=128) | st.none(), max_size=8))
def test_arbitrary_bytes(values: list[bytes | None]) -> None:
    _assert_same(PARSER, values)


def _reading(**changes: object) -> dict[str, object]:
    reading: dict[str, object] = {
        "device_id": "pump-7",
        "ts": 1_700_000_000.0,
        "sensors": {"temperature": 61.5, "pressure": 1.25, "vibration": 0.5},
    }
    reading.update(changes)
    return reading


def test_a_poll_of_valid_and_bad_values_keeps_each_values_place() -> None:
    values = [
        json.dumps(_reading()).encode(),
        None,
        b'{"device_id": "d", "ts": NaN, "sensors": {}}',
        json.dumps([_reading(device_id="a"), _reading(device_id="b", ts=1)]).encode(),
        json.dumps(_reading(ts="2023-11-14T22:13:20Z")).encode(),
        b"x" * (LIMIT + 1),
        json.dumps(_reading(sensors={"temperature": 2, "humidity": 3.0})).encode(),
        b"[]",
    ]
    many = _assert_same(PARSER, values)
    assert [message.device_ids for message in many] == [
        ["pump-7"],
        [],
        [],
        ["a", "b"],
        ["pump-7"],
        [],
        ["pump-7"],
        [],
    ]
    assert [[r.reason for r in message.rejections] for message in many] == [
        [],
        [RejectReason.UNPARSABLE],
        [RejectReason.NON_FINITE],
        [],
        [],
        [RejectReason.OVERSIZED],
        [],
        [],
    ]
    assert many[3].indices == [0, 1]
    assert many[6].unknown_sensors == 1
    assert np.isnan(many[6].values[0][1:]).all()


def test_routed_poll_keeps_each_profiles_features_in_order() -> None:
    readings = [
        _reading(device_id="pump-1"),
        _reading(device_id="fan-1", sensors={"vibration": 2.0, "temperature": 3.0}),
        _reading(device_id="x", profile="fan"),
        _reading(device_id="y", profile="boiler"),  # unknown_profile, from parse
        _reading(device_id="pump-2", sensors={"temperature": 4.0}),
    ]
    values = [json.dumps(reading).encode() for reading in readings]
    values.append(json.dumps(readings).encode())
    many = _assert_same(ROUTED, values, "fans")
    assert [message.profiles for message in many] == [[0], [1], [1], [], [0], [0, 1, 1, 0]]
    np.testing.assert_array_equal(many[1].values[0], np.array([2.0, 3.0], dtype=np.float32))
    assert many[3].rejections[0].reason is RejectReason.UNKNOWN_PROFILE
    assert many[5].rejections[0].index == 3


@pytest.mark.parametrize("values", [[], [None], [b""], [bytearray(b"{}")]])
def test_edge_polls(values: list[bytes | None]) -> None:
    _assert_same(PARSER, values)


class _BulkOnly(ReadingParser):
    """A parser whose per-value fallback fails the test."""

    def parse(self, value: bytes | None, topic: str = "") -> ParsedMessage:
        raise AssertionError(f"went to parse: {value!r}")


BULK_ONLY = _BulkOnly(FEATURES)
UNLIMITED = ReadingParser(FEATURES)  # the same default limit as BULK_ONLY's
# Within float32's range (below 1e30), with more digits than a float64 holds.
_decimal = st.from_regex(r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,30})?([eE][+-]?[0-9])?", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(
    numbers=st.lists(st.lists(_decimal, max_size=4), min_size=1, max_size=6),
    batch=st.booleans(),
)
def test_valid_readings_never_need_parse(numbers: list[list[str]], batch: bool) -> None:
    """Valid readings (ints, long literals, missing or unknown sensors) take the bulk path."""
    texts = []
    for i, row in enumerate(numbers):
        sensors = ", ".join(
            f'"{key}": {n}' for key, n in zip([*FEATURES, "rpm"], row, strict=False)
        )
        texts.append(f'{{"device_id": "pump-{i}", "ts": 1700000000, "sensors": {{{sensors}}}}}')
    values = [("[" + ", ".join(texts) + "]").encode()] if batch else [t.encode() for t in texts]
    many = BULK_ONLY.parse_many(values)
    for mine, value in zip(many, values, strict=True):
        _assert_same_message(mine, UNLIMITED.parse(value))


def _records(values: Sequence[bytes | None], topic: str) -> list[Record]:
    return [Record(topic, 0, offset, b"k", value, ()) for offset, value in enumerate(values)]


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(_value(), max_size=40),
    live=st.lists(st.booleans(), min_size=40, max_size=40),
    max_readings=st.integers(1, 30),
    routed=st.booleans(),
    topic=TOPICS,
)
def test_the_decode_stage_takes_whole_records_as_parse_reads_them(
    values: list[bytes | None],
    live: list[bool],
    max_readings: int,
    routed: bool,
    topic: str,
) -> None:
    """The daemon's decode stage: records taken whole until max_readings, each as parse reads it.

    Replayed records (not live) add their readings but none of their rejections or unknown
    sensors (those were counted when the records were new).
    """
    parser = ROUTED if routed else PARSER
    records = _records(values, topic)
    readings = decode(parser, topic, records, live[: len(values)], max_readings, TRACE_LOG)
    expected = [parser.parse(value, topic) for value in values]
    taken, count = 0, 0
    for message in expected:
        if count >= max_readings:
            break
        taken += 1
        count += len(message.device_ids)
    assert len(readings.records) == taken
    kept = expected[:taken]
    rows = [(p, i) for p, message in enumerate(kept) for i in range(len(message.device_ids))]
    assert readings.positions == [p for p, _ in rows]
    assert readings.device_ids == [kept[p].device_ids[i] for p, i in rows]
    assert readings.timestamps == [kept[p].timestamps[i] for p, i in rows]
    assert readings.indices == [kept[p].indices[i] for p, i in rows]
    assert readings.profiles == [kept[p].profiles[i] for p, i in rows]
    assert readings.values.dtype == np.float32 and readings.values.shape == (len(rows), 3)
    for row, (p, i) in enumerate(rows):
        vector = kept[p].values[i]
        assert readings.values[row, : len(vector)].tobytes() == vector.tobytes()
    assert readings.rejections == [
        message.rejections if live[p] else [] for p, message in enumerate(kept)
    ]
    assert readings.unknown_sensors == sum(
        message.unknown_sensors for p, message in enumerate(kept) if live[p]
    )
