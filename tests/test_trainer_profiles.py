"""Training one model per device profile: rows of a mixed fleet file, readings of a topic."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from kafka import TopicPartition

from detector.config import KafkaConfig
from detector.core.artifact import load_artifact
from detector.core.datafiles import DataFileError
from trainer import kafka_source
from trainer.cli import main
from trainer.config import DataConfig, TrainerConfig
from trainer.data import load_normal_data
from trainer.kafka_source import parse_time, read_normal_from_kafka

ROWS = 200
PUMP_SENSORS = ["flow", "pressure"]
FAN_SENSORS = ["rpm", "vibration"]


def _fleet_csv(path: Path, profile_values: tuple[object, object] = ("pump", "fan")) -> Path:
    """Wide fleet file: a pump and a fan interleaved, NaN in the other kind's sensor columns."""
    rng = np.random.default_rng(0)
    steps = np.arange(ROWS, dtype=float)
    pump = pd.DataFrame(
        {
            "ts": steps,
            "device_id": "pump-1",
            "profile": profile_values[0],
            "flow": np.sin(steps / 5) + 0.1 * rng.normal(size=ROWS),
            "pressure": 3 + np.cos(steps / 7) + 0.1 * rng.normal(size=ROWS),
        }
    )
    fan = pd.DataFrame(
        {
            "ts": steps,
            "device_id": "fan-1",
            "profile": profile_values[1],
            "rpm": 1200 + 30 * np.sin(steps / 4) + rng.normal(size=ROWS),
            "vibration": 0.2 + 0.05 * rng.normal(size=ROWS),
        }
    )
    fleet = pd.concat([pump, fan]).sort_values("ts", kind="stable")
    fleet[["ts", "device_id", "profile", *PUMP_SENSORS, *FAN_SENSORS]].to_csv(path, index=False)
    return path


def _config(tmp_path: Path, data: str = "profile_column: profile") -> Path:
    """A trainer config that fits in about a second (two epochs, no step minimum)."""
    config = tmp_path / "trainer.yaml"
    config.write_text(
        f"data: {{paths: [{_fleet_csv(tmp_path / 'fleet.csv')}], {data}}}\n"
        "window: {length: 16, stride: 2}\n"
        "model: {hidden_size: 8, latent_size: 4}\n"
        "training: {epochs: 2, min_steps: 0, device: cpu}\n"
        f"output: {{dir: {tmp_path / 'unused'}, profiles_dir: {tmp_path / 'models'}}}\n"
    )
    return config


def _fit(config: Path, *args: str) -> int:
    return main(["fit", "--config", str(config), "--no-progress", *args])


def test_each_profile_trains_on_its_own_rows_and_sensors_into_its_registry(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    assert _fit(config, "--profile", "pump") == 0
    assert _fit(config, "--profile", "fan") == 0
    pump = load_artifact(tmp_path / "models" / "pump").metadata
    fan = load_artifact(tmp_path / "models" / "fan").metadata
    assert pump.feature_names == PUMP_SENSORS and fan.feature_names == FAN_SENSORS
    assert (pump.training_data.rows, pump.training_data.devices) == (ROWS, 1)
    assert (fan.training_data.rows, fan.training_data.devices) == (ROWS, 1)
    # The same file, another subset: the two data hashes differ.
    assert pump.training_data.sha256 != fan.training_data.sha256
    assert not (tmp_path / "unused").exists()


def test_output_overrides_the_profile_registry(tmp_path: Path) -> None:
    assert _fit(_config(tmp_path), "--profile", "fan", "--output", str(tmp_path / "elsewhere")) == 0
    assert load_artifact(tmp_path / "elsewhere").metadata.feature_names == FAN_SENSORS
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "data.profile_column 'profile' is set: name the profile to train (--profile NAME)"),
        (
            ("--profile", "valve"),
            "no rows of profile 'valve' (data.profile_column 'profile') in the training data",
        ),
        (("--profile", ".."), "profile name '..' must be 1-64 letters"),
        (("--profile", "a/b"), "profile name 'a/b' must be 1-64 letters"),
        (("--profile", "x" * 65), "must be 1-64 letters"),
    ],
)
def test_profile_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert _fit(_config(tmp_path), *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()


def test_explicit_sensors_are_used_as_given(tmp_path: Path) -> None:
    config = DataConfig(
        paths=[_fleet_csv(tmp_path / "fleet.csv")], profile_column="profile", sensors=["pressure"]
    )
    table = load_normal_data(config, "pump")
    assert list(table.columns) == ["ts", "device_id", "pressure"]
    assert len(table) == ROWS
    # A sensor the profile does not have leaves no complete row.
    assert load_normal_data(config.model_copy(update={"sensors": ["rpm"]}), "pump").empty


def test_a_numeric_profile_column_selects_by_value(tmp_path: Path) -> None:
    config = DataConfig(
        paths=[_fleet_csv(tmp_path / "fleet.csv", profile_values=(1, 2))],
        profile_column="profile",
    )
    table = load_normal_data(config, "2")
    assert list(table.columns) == ["ts", "device_id", *FAN_SENSORS]
    assert set(table["device_id"]) == {"fan-1"}


def test_the_profile_column_is_not_a_sensor() -> None:
    with pytest.raises(ValueError, match="not a sensor"):
        TrainerConfig.model_validate(
            {"data": {"paths": ["x.csv"], "profile_column": "kind", "sensors": ["a", "kind"]}}
        )


def test_a_profile_whose_rows_have_no_sensor_values_is_refused(tmp_path: Path) -> None:
    path = _fleet_csv(tmp_path / "fleet.csv")
    frame = pd.read_csv(path)
    frame.loc[frame["profile"] == "fan", FAN_SENSORS] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(DataFileError, match="profile 'fan' have no sensor values"):
        load_normal_data(DataConfig(paths=[path], profile_column="profile"), "fan")


NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("-7d", NOW - 7 * 86400),
        ("-12h", NOW - 12 * 3600),
        ("-30m", NOW - 1800),
        ("-45s", NOW - 45),
        ("-1.5h", NOW - 5400),
        ("1700000000", 1_700_000_000.0),
        ("2024-03-01T12:00:00Z", 1_709_294_400.0),
        ("2024-03-01T12:00:00", 1_709_294_400.0),  # naive is UTC
        ("2024-03-01T13:00:00+01:00", 1_709_294_400.0),
    ],
)
def test_parse_time_forms(text: str, expected: float) -> None:
    assert parse_time(text, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "7d", "-7y", "+1h", "nan", "inf", ""])
def test_parse_time_refuses_other_text_naming_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="epoch seconds, ISO-8601, now or -<N>s/m/h/d"):
        parse_time(text, now=NOW)


def test_parse_time_without_now_counts_from_the_clock() -> None:
    before = time.time()
    assert before - 3600 <= parse_time("-1h") <= time.time() - 3600


class _FakeConsumer:
    """The part of ``KafkaConsumer`` the trainer uses, over one partition of fixed records."""

    records: ClassVar[list[bytes]] = []

    def __init__(self, **_settings: Any) -> None:
        self._position = 0

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}

    def assign(self, _partitions: list[TopicPartition]) -> None:
        pass

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.records) for tp in partitions}

    def offsets_for_times(self, query: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        return {tp: SimpleNamespace(offset=0) for tp in query}

    def seek(self, _tp: TopicPartition, offset: int) -> None:
        self._position = offset

    def position(self, _tp: TopicPartition) -> int:
        return self._position

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        batch = [
            SimpleNamespace(offset=i, value=value)
            for i, value in enumerate(self.records)
            if i >= self._position
        ]
        self._position = len(self.records)
        return {TopicPartition("readings", 0): batch}

    def close(self) -> None:
        pass


def _readings(start: float, profile: str | None, device: str, sensors: dict[str, float]) -> bytes:
    """One record: a batch of ``ROWS`` readings a second apart, with ``profile`` when given."""
    batch = []
    for i in range(ROWS):
        reading: dict[str, Any] = {
            "device_id": device,
            "ts": start + i,
            "sensors": {name: value + np.sin(i / 5) for name, value in sensors.items()},
        }
        if profile is not None:
            reading["profile"] = profile
        batch.append(reading)
    return json.dumps(batch).encode()


def test_kafka_readings_of_another_profile_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_source, "KafkaConsumer", _FakeConsumer)
    monkeypatch.setattr(
        _FakeConsumer,
        "records",
        [
            _readings(0, "pump", "pump-1", {"flow": 1.0}),
            _readings(0, "fan", "fan-1", {"rpm": 1200.0}),
            _readings(0, None, "pump-2", {"flow": 2.0}),  # a per-profile topic: no label
        ],
    )
    kafka = KafkaConfig(bootstrap_servers=["broker:9092"])
    data = read_normal_from_kafka(kafka, "readings", 0, ROWS, profile="pump")
    assert set(data.table["device_id"]) == {"pump-1", "pump-2"}
    assert list(data.table.columns) == ["ts", "device_id", "flow"]
    assert data.sources == [f"kafka://readings?since=0&until={ROWS}&profile=pump"]
    # Without a profile every reading is training data, as before profiles existed.
    unfiltered = read_normal_from_kafka(kafka, "readings", 0, ROWS)
    assert set(unfiltered.table["device_id"]) == {"pump-1", "fan-1", "pump-2"}
    monkeypatch.setattr(_FakeConsumer, "records", _FakeConsumer.records[1:2])
    with pytest.raises(DataFileError, match="no readings for profile 'pump' in 'readings'"):
        read_normal_from_kafka(kafka, "readings", 0, ROWS, profile="pump")


def test_retrain_a_profile_from_kafka_over_the_last_hours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CronJob's ``--since -1h --until now``: the profile's current model fixes the sensors."""
    config = _config(tmp_path)
    assert _fit(config, "--profile", "pump") == 0
    first = load_artifact(tmp_path / "models" / "pump").metadata.version
    monkeypatch.setattr(kafka_source, "KafkaConsumer", _FakeConsumer)
    recent = time.time() - 600
    monkeypatch.setattr(
        _FakeConsumer,
        "records",
        [
            # The readings carry a sensor the pump model does not have: it is not trained on.
            _readings(recent, "pump", "pump-1", {"flow": 1.0, "pressure": 3.0, "noise": 0.0}),
            _readings(recent, "fan", "fan-1", {"rpm": 1200.0, "vibration": 0.2}),
            _readings(recent - 7200, "pump", "pump-1", {"flow": 9.0, "pressure": 9.0}),
        ],
    )
    kafka = ("--from-kafka", "readings", "--bootstrap-servers", "broker:9092")
    window = ("--since", "-1h", "--until", "now")
    assert _fit(config, "--profile", "pump", *kafka, *window, "--promote", "shadow") == 0
    assert f"scored in shadow beside current {first}" in capsys.readouterr().out
    registry = tmp_path / "models" / "pump"
    candidate = (registry / "candidate").read_text().strip()
    meta = load_artifact(registry / candidate).metadata
    assert meta.feature_names == PUMP_SENSORS
    assert meta.training_data.rows == ROWS  # the pump's last hour only
    assert meta.training_data.time_start == pytest.approx(recent)
