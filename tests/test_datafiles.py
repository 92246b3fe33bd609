"""Loading wide-format sensor tables (CSV, SKAB-style CSV, Parquet) into ts/device_id/sensors."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.core.datafiles import DataFileError, load_table, sensor_columns

TS = 1_700_000_000.0


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_comma_csv_with_device_column(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    path.write_text(
        "ts,device_id,temperature,pressure\n"
        f"{TS + 1},b,11.0,1.1\n"
        f"{TS},a,10.0,1.0\n"
        f"{TS},b,12.0,1.2\n"
        f"{TS + 1},a,13.0,1.3\n"
    )
    table = load_table(path)
    assert list(table.columns) == ["ts", "device_id", "temperature", "pressure"]
    assert sensor_columns(table) == ["temperature", "pressure"]
    # Sorted by device, then time.
    assert table["device_id"].tolist() == ["a", "a", "b", "b"]
    assert table["ts"].tolist() == [TS, TS + 1, TS, TS + 1]
    assert table["temperature"].tolist() == [10.0, 13.0, 12.0, 11.0]
    assert table["ts"].dtype == np.float64


def test_skab_style_semicolon_file(tmp_path: Path) -> None:
    path = tmp_path / "valve1.csv"
    path.write_text(
        "datetime;Accelerometer1RMS;Pressure;anomaly;changepoint\n"
        "2020-03-09 10:14:34;0.0270;0.382;0.0;0.0\n"
        "2020-03-09 10:14:33;0.0273;0.054;0.0;0.0\n"
        "2020-03-09 10:14:35;0.0269;0.710;1.0;1.0\n"
    )
    table = load_table(path)
    assert sensor_columns(table) == ["Accelerometer1RMS", "Pressure"]  # labels excluded
    assert set(table["device_id"]) == {"valve1"}  # device defaults to the file stem
    assert table["ts"].tolist() == [
        _utc("2020-03-09T10:14:33"),
        _utc("2020-03-09T10:14:34"),
        _utc("2020-03-09T10:14:35"),
    ]
    np.testing.assert_allclose(table["Pressure"], [0.054, 0.382, 0.710])


def test_default_device_overrides_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("time,x\n1,2\n")
    assert load_table(path, default_device="pump-1")["device_id"].tolist() == ["pump-1"]


def test_timezone_aware_times_are_converted_to_utc(tmp_path: Path) -> None:
    path = tmp_path / "tz.csv"
    path.write_text("timestamp,x\n2023-11-14T23:13:20+01:00,1.0\n")
    assert load_table(path)["ts"].tolist() == [TS]


def test_explicit_columns_and_sensor_order(tmp_path: Path) -> None:
    path = tmp_path / "custom.csv"
    path.write_text("when,unit,a,b,c\n5,u1,1,2,3\n")
    table = load_table(path, time_column="when", device_column="unit", sensors=["c", "a"])
    assert list(table.columns) == ["ts", "device_id", "c", "a"]
    assert table.iloc[0].tolist() == [5.0, "u1", 3.0, 1.0]


def test_numeric_device_ids_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("ts,device_id,x\n1,7,0.5\n")
    assert load_table(path)["device_id"].tolist() == ["7"]


def test_non_numeric_sensor_cells_become_nan(tmp_path: Path) -> None:
    path = tmp_path / "dirty.csv"
    path.write_text("ts,x,y\n1,1.0,2.0\n2,oops,3.0\n")
    table = load_table(path, sensors=["x", "y"])
    assert np.isnan(table["x"].iloc[1])
    assert table["y"].tolist() == [2.0, 3.0]


def test_parquet_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame(
        {
            "ts": [TS, TS + 2, TS + 1],
            "device_id": ["d", "d", "d"],
            "temperature": [1.5, 3.5, 2.5],
            "vibration": [0.1, 0.3, 0.2],
        }
    )
    path = tmp_path / "readings.parquet"
    frame.to_parquet(path)
    table = load_table(path)
    expected = frame.sort_values("ts").reset_index(drop=True)
    pd.testing.assert_frame_equal(table, expected)


def test_parquet_with_datetime_column(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame(
        {
            "datetime": pd.to_datetime(["2023-11-14T22:13:20Z", "2023-11-14T22:13:21Z"]),
            "x": [1.0, 2.0],
        }
    )
    path = tmp_path / "times.parquet"
    frame.to_parquet(path)
    assert load_table(path)["ts"].tolist() == [TS, TS + 1]


def test_missing_time_column_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "no_time.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataFileError, match=r"no_time\.csv.*no time column"):
        load_table(path)


def test_named_time_column_not_found(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ts,a\n1,2\n")
    with pytest.raises(DataFileError, match=r"t\.csv.*'when'"):
        load_table(path, time_column="when")


def test_missing_sensor_column_names_the_file_and_sensor(tmp_path: Path) -> None:
    path = tmp_path / "sensors.csv"
    path.write_text("ts,a\n1,2\n")
    with pytest.raises(DataFileError, match=r"sensors\.csv.*humidity"):
        load_table(path, sensors=["a", "humidity"])


def test_missing_device_column_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dev.csv"
    path.write_text("ts,a\n1,2\n")
    with pytest.raises(DataFileError, match=r"dev\.csv.*unit"):
        load_table(path, device_column="unit")


def test_no_numeric_sensors(tmp_path: Path) -> None:
    path = tmp_path / "text.csv"
    path.write_text("ts,name,anomaly\n1,x,0\n")
    with pytest.raises(DataFileError, match="no numeric sensor columns"):
        load_table(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"nope\.csv"):
        load_table(tmp_path / "nope.csv")


def test_unparseable_time_column(tmp_path: Path) -> None:
    path = tmp_path / "badtime.csv"
    path.write_text("ts,a\nnot-a-time,2\n")
    with pytest.raises(DataFileError, match=r"badtime\.csv.*time column"):
        load_table(path)
