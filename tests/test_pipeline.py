"""The daemon's pipeline in-process, no broker: one poll of records in, messages and safe offsets out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.clients.base import Partition
from detector.config import DetectorConfig, load_config
from detector.core.artifact import load_artifact
from detector.core.readings import ParsedMessage, ReadingParser, RejectReason
from detector.core.routing import DEFAULT_PROFILE
from detector.core.scoring import Scorer
from detector.lane import Model
from detector.pipeline import Output, Pipeline
from detector.sensor import Sensor
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    PARTITIONS,
    ROOT,
    DemoData,
    consumer_records,
    offline_transitions,
    streamed_transitions,
)


class RecordingSensor(Sensor):
    """Keeps what the pipeline reported."""

    def __init__(self) -> None:
        self.records_seen = 0
        self.rejections: list[RejectReason] = []
        self.accepted = 0
        self.windows = 0
        self.alerts: list[str] = []

    def records(self, count: int) -> None:
        self.records_seen += count

    def rejected(self, reason: RejectReason, detail: str) -> None:
        self.rejections.append(reason)

    def readings(self, accepted: int, imputed: int, unknown_sensors: int) -> None:
        self.accepted += accepted

    def scored(self, scores: np.ndarray) -> None:
        self.windows += len(scores)

    def alert(self, state: str) -> None:
        self.alerts.append(state)


def _config(demo_data: DemoData, **scoring: object) -> DetectorConfig:
    config = load_config(ROOT / "configs" / "detector.yaml")
    values = config.model_dump()
    values["model"]["path"] = str(demo_data.model.path)
    values["scoring"].update(device="cpu", **scoring)
    values["kafka"]["dead_letter_topic"] = "dead"
    return DetectorConfig.model_validate(values)


def _models(demo_data: DemoData) -> dict[str, Model]:
    artifact = load_artifact(demo_data.model.path)
    return {DEFAULT_PROFILE: Model(artifact, Scorer.from_artifact(artifact, "cpu"))}


def _pipeline(demo_data: DemoData, sensor: Sensor | None = None, **scoring: object) -> Pipeline:
    return Pipeline(_config(demo_data, **scoring), _models(demo_data), sensor)


def _polls(records: dict[Partition, list], size: int) -> list[dict[Partition, list]]:
    longest = max(len(batch) for batch in records.values())
    return [
        {tp: batch[start : start + size] for tp, batch in records.items() if batch[start:]}
        for start in range(0, longest, size)
    ]


def _run(pipeline: Pipeline, polls: list[dict[Partition, list]]) -> list[Output]:
    outputs = [pipeline.process(poll) for poll in polls]
    return [*outputs, pipeline.flush()]


def _alerts(outputs: list[Output]) -> list[dict]:
    return [json.loads(m.value) for out in outputs for m in out.alerts]


def _comparable(alert: dict) -> dict:
    """An alert without its wall-clock time."""
    return {k: v for k, v in alert.items() if k != "detected_at"}


def test_pipeline_alerts_equal_the_backtest_and_every_offset_becomes_safe(
    demo_data: DemoData,
) -> None:
    sensor = RecordingSensor()
    pipeline = _pipeline(demo_data, sensor)
    records = consumer_records(encode_messages(interleave(demo_data.anomalous.readings)))
    outputs = _run(pipeline, _polls(records, 200))

    alerts = _alerts(outputs)
    assert streamed_transitions(alerts) == offline_transitions(
        demo_data.model.path, demo_data.anomalous.readings
    )
    assert sensor.alerts == [a["state"] for a in alerts]
    rows = len(demo_data.anomalous.readings)
    length = load_artifact(demo_data.model.path).metadata.window_length
    assert sensor.records_seen == sensor.accepted == rows
    assert sensor.windows == rows - demo_data.anomalous.readings["device_id"].nunique() * (
        length - 1
    )
    assert outputs[-1].safe == {tp: len(batch) for tp, batch in records.items()}


def test_offsets_of_unscored_windows_are_not_safe_until_scored(demo_data: DemoData) -> None:
    pipeline = _pipeline(demo_data, max_wait_ms=60_000, max_batch_size=65536)
    records = consumer_records(encode_messages(interleave(demo_data.anomalous.readings)))

    first = pipeline.process(_polls(records, 50)[0])

    assert pipeline.pending() > 0  # windows ready but not due
    assert first.safe is None and first.messages == []
    flushed = pipeline.flush()
    assert flushed.safe == {tp: min(50, len(batch)) for tp, batch in records.items()}
    assert pipeline.pending() == 0


def test_bad_records_are_dead_lettered_and_the_partition_goes_on(demo_data: DemoData) -> None:
    sensor = RecordingSensor()
    pipeline = _pipeline(demo_data, sensor)
    good = encode_messages(interleave(demo_data.normal.readings.head(300)))
    bad: list[tuple[bytes | None, bytes]] = [
        (b"device-0", b"not json"),
        (b"device-0", b"\xff\xfe"),
        (b"device-0", json.dumps({"device_id": "device-0", "ts": "x", "sensors": {}}).encode()),
        (b"device-0", json.dumps([1, 2, 3]).encode()),
    ]
    records = consumer_records(good[:100] + bad + good[100:])
    outputs = _run(pipeline, _polls(records, 64))

    dead = [m for out in outputs for m in out.dead_letters]
    assert len(dead) == len(bad)
    reasons = [dict(m.headers)["__detector.errors.reason"].decode() for m in dead]
    assert reasons == ["unparsable", "unparsable", "invalid_type", "invalid_type"]
    assert [m.value for m in dead] == [value for _key, value in bad]
    # One dead letter per record; a batch of three bad readings counts three rejections.
    assert sensor.rejections == [RejectReason.UNPARSABLE] * 2 + [RejectReason.INVALID_TYPE] * 4
    assert outputs[-1].safe == {tp: len(batch) for tp, batch in records.items()}
    assert sensor.accepted == 300


def test_replayed_records_rebuild_state_and_publish_nothing(demo_data: DemoData) -> None:
    records = consumer_records(encode_messages(interleave(demo_data.anomalous.readings)))
    uninterrupted = _alerts(_run(_pipeline(demo_data), _polls(records, 200)))

    sensor = RecordingSensor()
    rebuilt = _pipeline(demo_data, sensor)
    resume = {tp: len(batch) // 2 for tp, batch in records.items()}
    for tp, committed in resume.items():
        rebuilt.offsets.rewound(tp, 0, committed, 0)
    alerts = _alerts(_run(rebuilt, _polls(records, 200)))

    # Alerts of windows ending at or after the committed offsets, exactly as uninterrupted.
    position = {
        (json.loads(r.value)["device_id"], json.loads(r.value)["ts"]): (tp, r.offset)
        for tp, batch in records.items()
        for r in batch
    }

    def live(alert: dict) -> bool:
        tp, offset = position[(alert["device_id"], alert["window_end"])]
        return offset >= resume[tp]

    expected = [_comparable(a) for a in uninterrupted if live(a)]
    assert expected and [_comparable(a) for a in alerts] == expected
    assert sensor.records_seen == sum(len(b) - resume[tp] for tp, b in records.items())
    assert not any(rebuilt.offsets.rebuilding(tp) for tp in records)


def test_forgetting_partitions_forgets_every_piece_of_device_state(demo_data: DemoData) -> None:
    pipeline = _pipeline(demo_data)
    records = consumer_records(encode_messages(interleave(demo_data.anomalous.readings)))
    _run(pipeline, _polls(records, 200))
    assert all(
        count > 0
        for name, count in pipeline.lanes[0].registry.tracked().items()
        if "streak" not in name
    )

    forgotten = pipeline.forget_partitions(set(records))

    assert forgotten == demo_data.anomalous.readings["device_id"].nunique()
    assert all(count == 0 for count in pipeline.lanes[0].registry.tracked().values())
    assert pipeline.offsets.safe == {} and pipeline.offsets.position(PARTITIONS[0]) is None


@pytest.mark.parametrize("poll_size", [1, 7, 500])
def test_poll_size_does_not_change_the_alerts(demo_data: DemoData, poll_size: int) -> None:
    records = consumer_records(encode_messages(interleave(demo_data.anomalous.readings.head(1500))))
    baseline = _alerts(_run(_pipeline(demo_data), _polls(records, 1000)))
    alerts = _alerts(_run(_pipeline(demo_data), _polls(records, poll_size)))

    # Partitions interleave differently, so the order differs; each alert is the same.
    def key(alert: dict) -> tuple:
        return alert["device_id"], alert["window_end"], alert["state"]

    assert baseline
    assert sorted(map(_comparable, alerts), key=key) == sorted(map(_comparable, baseline), key=key)


_ACTIONS = ("keep", "keep", "keep", "missing", "late", "duplicate", "future", "gap", "garbage")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    actions=st.lists(st.sampled_from(_ACTIONS), min_size=60, max_size=240),
    batch_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    poll_size=st.integers(1, 80),
    max_devices=st.sampled_from([100_000, 2]),
)
def test_columnar_ingest_gives_exactly_the_per_reading_path(
    demo_data: DemoData,
    actions: list[str],
    batch_sizes: list[int],
    poll_size: int,
    max_devices: int,
) -> None:
    """Windows, rejections, dead letters and alerts agree for streams with every kind of fault."""
    readings = interleave(demo_data.anomalous.readings).head(len(actions))
    sensors = [c for c in readings.columns if c not in ("device_id", "ts")]
    items: list[object] = []
    shift: dict[str, float] = {}
    for action, (_, row) in zip(actions, readings.iterrows(), strict=False):
        device = str(row["device_id"])
        if action == "gap":
            shift[device] = shift.get(device, 0.0) + 100.0
        ts = float(row["ts"]) + shift.get(device, 0.0)
        values = {name: float(row[name]) for name in sensors}
        if action == "missing":
            del values[sensors[len(items) % len(sensors)]]
        elif action == "late":
            ts -= 3.0 if len(items) % 2 else 60.0  # inside and outside the grace period
        elif action == "future":
            ts += 1e6
        item: object = {"device_id": device, "ts": ts, "sensors": values}
        if action == "garbage":
            item = {"device_id": device, "ts": "soon", "sensors": values}
        items.append(item)
        if action == "duplicate":
            items.append(item)
    messages: list[tuple[bytes | None, bytes]] = []
    position = 0
    while position < len(items):
        size = batch_sizes[len(messages) % len(batch_sizes)]
        chunk = items[position : position + size]
        position += size
        key = str(chunk[0]["device_id"]).encode() if isinstance(chunk[0], dict) else None
        body = chunk[0] if size == 1 else chunk
        messages.append((key, json.dumps(body).encode()))
    messages.insert(len(messages) // 2, (b"dev-000", b"\x00not json"))
    records = consumer_records(messages)
    polls = _polls(records, poll_size)
    config = _config(demo_data, max_wait_ms=0).model_dump()
    config["windows"].update(max_gap_s=30.0, max_devices=max_devices)
    detector_config = DetectorConfig.model_validate(config)

    def run(columnar: bool) -> tuple[RecordingSensor, Pipeline, list[Output]]:
        sensor = RecordingSensor()
        pipeline = Pipeline(detector_config, _models(demo_data), sensor, columnar=columnar)
        outputs = [pipeline.process(poll, now=1_700_010_000.0) for poll in polls]
        return sensor, pipeline, [*outputs, pipeline.flush()]

    one_sensor, one, one_outputs = run(columnar=False)
    many_sensor, many, many_outputs = run(columnar=True)
    assert one_sensor.accepted > 0 and one_sensor.rejections

    def key(alert: dict) -> tuple:
        return alert["device_id"], alert["window_end"], alert["state"]

    assert sorted(map(_comparable, _alerts(many_outputs)), key=key) == sorted(
        map(_comparable, _alerts(one_outputs)), key=key
    )
    assert [(m.key, m.value, m.headers) for o in many_outputs for m in o.dead_letters] == [
        (m.key, m.value, m.headers) for o in one_outputs for m in o.dead_letters
    ]
    assert sorted(many_sensor.rejections) == sorted(one_sensor.rejections)
    assert (many_sensor.accepted, many_sensor.windows) == (one_sensor.accepted, one_sensor.windows)
    assert many_outputs[-1].safe == one_outputs[-1].safe
    one_registry, many_registry = one.lanes[0].registry, many.lanes[0].registry
    one_store, many_store = one_registry.store, many_registry.store
    assert sorted(many_store.device_ids) == sorted(one_store.device_ids)
    for device in one_store.device_ids:
        one_slot, many_slot = one_store.slot(device), many_store.slot(device)
        np.testing.assert_array_equal(many_store.window(many_slot), one_store.window(one_slot))
        assert many_store.window_span(many_slot) == one_store.window_span(one_slot)
        assert many_registry.judge.firing(device) == one_registry.judge.firing(device)
    assert many_registry.tracked() == one_registry.tracked()


class _BuggyParser(ReadingParser):
    """A parser with a bug that one message triggers (fault injection for the safety net)."""

    def parse(self, value: bytes | None, topic: str = "") -> ParsedMessage:
        if value == b'"trigger"':
            raise RuntimeError("bug met while parsing")
        return super().parse(value, topic)


@pytest.mark.parametrize("columnar", [True, False])
def test_a_bug_met_on_one_record_dead_letters_it_and_the_partition_goes_on(
    demo_data: DemoData, columnar: bool
) -> None:
    sensor = RecordingSensor()
    pipeline = Pipeline(_config(demo_data), _models(demo_data), sensor, columnar=columnar)
    pipeline.parser = _BuggyParser(pipeline.lanes[0].feature_names)
    good = encode_messages(interleave(demo_data.normal.readings.head(300)))
    records = consumer_records([*good[:150], (b"dev-000", b'"trigger"'), *good[150:]])
    outputs = _run(pipeline, _polls(records, 64))

    dead = [m for out in outputs for m in out.dead_letters]
    assert [dict(m.headers)["__detector.errors.reason"] for m in dead] == [b"internal_error"]
    assert dead[0].value == b'"trigger"'
    assert sensor.rejections == [RejectReason.INTERNAL_ERROR]
    assert sensor.accepted == 300 and sensor.windows > 0
    assert outputs[-1].safe == {tp: len(batch) for tp, batch in records.items()}
