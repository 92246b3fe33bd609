"""Tests for encode_messages: the readings a replayed table puts on the wire."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from detector.core.readings import ReadingParser
from detector.core.routing import Router, RouteRule
from detector_devtools.replay import encode_messages, interleave
from detector_devtools.synthetic import PROFILE_COLUMN, PROFILES, generate_mixed_fleet


def _single_kind() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": [100.0, 100.0, 101.5],
            "device_id": ["dev-000", "dev-001", "dev-000"],
            "temperature": [60.25, 61.0, 59.5],
            "pressure": [3.0, 2.875, 3.125],
        }
    )


def test_single_kind_table_encodes_exactly_as_before() -> None:
    # The bytes every existing caller (tests, bench, soak) has been sending: no profile field.
    assert encode_messages(_single_kind()) == [
        (
            b"dev-000",
            b'{"device_id": "dev-000", "ts": 100.0, '
            b'"sensors": {"temperature": 60.25, "pressure": 3.0}}',
        ),
        (
            b"dev-001",
            b'{"device_id": "dev-001", "ts": 100.0, '
            b'"sensors": {"temperature": 61.0, "pressure": 2.875}}',
        ),
        (
            b"dev-000",
            b'{"device_id": "dev-000", "ts": 101.5, '
            b'"sensors": {"temperature": 59.5, "pressure": 3.125}}',
        ),
    ]


def test_single_kind_batches_encode_exactly_as_before() -> None:
    assert encode_messages(_single_kind(), batch_size=2) == [
        (
            b"dev-000",
            b'[{"device_id": "dev-000", "ts": 100.0, '
            b'"sensors": {"temperature": 60.25, "pressure": 3.0}}, '
            b'{"device_id": "dev-000", "ts": 101.5, '
            b'"sensors": {"temperature": 59.5, "pressure": 3.125}}]',
        ),
        (
            b"dev-001",
            b'[{"device_id": "dev-001", "ts": 100.0, '
            b'"sensors": {"temperature": 61.0, "pressure": 2.875}}]',
        ),
    ]


def test_nan_sensor_is_left_out_not_sent_as_nan() -> None:
    table = _single_kind()
    table.loc[1, "pressure"] = np.nan
    values = [json.loads(value) for _, value in encode_messages(table)]
    assert values[1]["sensors"] == {"temperature": 61.0}
    assert values[0]["sensors"] == {"temperature": 60.25, "pressure": 3.0}
    assert all(b"NaN" not in value for _, value in encode_messages(table))


@pytest.fixture(scope="module")
def mixed() -> pd.DataFrame:
    return generate_mixed_fleet(2, 300, profiles=("pump", "fan", "compressor"), seed=4).readings


@pytest.mark.parametrize("batch_size", [1, 3])
def test_mixed_readings_carry_only_their_sensors_and_their_profile(
    mixed: pd.DataFrame, batch_size: int
) -> None:
    messages = encode_messages(interleave(mixed), batch_size)
    readings = []
    for key, value in messages:
        body = json.loads(value)
        for reading in body if isinstance(body, list) else [body]:
            assert reading["device_id"] == key.decode()
            readings.append(reading)
    assert len(readings) == len(mixed)
    for reading in readings:
        profile = reading["profile"]
        assert reading["device_id"].startswith(f"{profile}-")
        assert sorted(reading["sensors"]) == sorted(PROFILES[profile].sensors)
        assert PROFILE_COLUMN not in reading["sensors"]


def test_mixed_readings_route_by_their_profile_field_to_complete_vectors(
    mixed: pd.DataFrame,
) -> None:
    # The daemon's parser with a "reading" route only: each reading reaches its own profile's
    # model with every feature present, nothing missing, unknown or rejected.
    names = ["pump", "fan", "compressor"]
    parser = ReadingParser(
        list(PROFILES["pump"].sensors),
        router=Router(names, [RouteRule("reading")]),
        profile_features=[list(PROFILES[name].sensors) for name in names],
    )
    rows = interleave(mixed)
    for row, (_, value) in zip(rows.itertuples(), encode_messages(rows), strict=True):
        parsed = parser.parse(value)
        assert not parsed.rejections and parsed.unknown_sensors == 0
        assert names[parsed.profiles[0]] == getattr(row, PROFILE_COLUMN)
        assert np.isfinite(parsed.values[0]).all()


def test_a_row_without_a_profile_has_no_profile_field(mixed: pd.DataFrame) -> None:
    table = mixed.head(3).copy()
    table.loc[1, PROFILE_COLUMN] = np.nan
    values = [json.loads(value) for _, value in encode_messages(table)]
    assert [v.get("profile") for v in values] == ["pump", None, "fan"]
