"""The daemon end to end on a real broker: alerts, metrics, bad input, commits, foreign clients."""

from __future__ import annotations

import json
import re
import signal

import numpy as np
import pytest

from detector.core.artifact import load_artifact
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    DemoData,
    Topics,
    committed_total,
    offline_transitions,
    produce,
    read_topic,
    streamed_transitions,
    wait_until,
)

pytestmark = pytest.mark.integration


def expected_windows(demo_data: DemoData, rows: int, devices: int) -> int:
    return rows - devices * (load_artifact(demo_data.model.path).metadata.window_length - 1)


def test_alerts_for_injected_anomalies_match_offline_scoring(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    messages = encode_messages(interleave(demo_data.anomalous.readings))
    daemon = start_daemon()
    produce(topics.bootstrap, topics.readings, messages)
    rows = len(demo_data.anomalous.readings)
    wait_until(
        lambda: (
            daemon.metric("detector_windows_scored_total") == expected_windows(demo_data, rows, 3)
        ),
        60,
        "daemon scored every window",
    )
    alerts = read_topic(topics.bootstrap, topics.alerts)
    firing = [a for a in alerts if a["state"] == "firing"]
    for episode in demo_data.anomalous.episodes:
        caught = [
            a
            for a in firing
            if a["device_id"] == episode.device_id
            and a["window_end"] >= episode.start_ts
            and a["window_start"] <= episode.end_ts
        ]
        assert caught, f"no firing alert for {episode}"

    version = load_artifact(demo_data.model.path).version
    for alert in alerts:
        assert alert["model_version"] == version
        assert alert["severity"] == pytest.approx(alert["score"] / alert["threshold"])
        assert alert["window_end"] - alert["window_start"] == pytest.approx(15.0)
        shares = [item["share"] for item in alert["top_sensors"]]
        assert len(shares) == 3 and shares == sorted(shares, reverse=True) and sum(shares) <= 1.0001
    assert len({a["alert_id"] for a in alerts}) == len(alerts)

    streamed = streamed_transitions(alerts)
    expected = offline_transitions(demo_data.model.path, demo_data.anomalous.readings)
    assert streamed == expected
    assert daemon.metric('detector_alerts_total{state="firing"}') == len(firing)


def test_normal_stream_with_malformed_messages(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    readings = interleave(demo_data.normal.readings)
    messages = encode_messages(readings)
    first = json.loads(messages[0][1])
    bad = [
        (b"dev-x", b"\x00\xffnot json"),
        (b"dev-x", b'{"device_id": "dev-x", "sensors": {}}'),
        (
            b"dev-x",
            json.dumps(
                {
                    **first,
                    "device_id": "dev-x",
                    "sensors": {**first["sensors"], "pressure": float("nan")},
                }
            ).encode(),
        ),
        (
            b"dev-x",
            json.dumps({**first, "device_id": "dev-x", "sensors": {"pressure": "high"}}).encode(),
        ),
    ]
    extra = {**first, "device_id": "dev-extra", "sensors": {**first["sensors"], "colour": 3.0}}
    batch = [extra, {**extra, "ts": extra["ts"] + 1.0}]
    mixed = messages[:100] + bad + [(b"dev-extra", json.dumps(batch).encode())] + messages[100:]
    daemon = start_daemon()
    produce(topics.bootstrap, topics.readings, mixed)
    wait_until(
        lambda: daemon.metric("detector_records_consumed_total") == len(mixed), 60, "all consumed"
    )
    wait_until(
        lambda: (
            daemon.metric("detector_windows_scored_total")
            == expected_windows(demo_data, len(readings), 3)
        ),
        30,
        "all windows scored",
    )
    wait_until(lambda: daemon.metric("detector_devices_tracked") == 4, 10, "gauges refreshed")
    metrics = daemon.metrics()
    assert metrics["detector_readings_accepted_total"] == len(readings) + 2
    assert metrics['detector_records_rejected_total{reason="unparsable"}'] == 1
    assert metrics['detector_records_rejected_total{reason="missing_field"}'] == 1
    assert metrics['detector_records_rejected_total{reason="non_finite"}'] == 1
    assert metrics['detector_records_rejected_total{reason="invalid_type"}'] == 1
    assert metrics["detector_unknown_sensors_total"] == 2
    assert metrics['detector_alerts_total{state="firing"}'] == 0
    assert daemon.process.poll() is None
    assert read_topic(topics.bootstrap, topics.alerts, timeout_s=5) == []


def test_sigterm_commits_exactly_what_was_processed(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    messages = encode_messages(interleave(demo_data.normal.readings))
    produce(topics.bootstrap, topics.readings, messages)
    first = start_daemon(DETECTOR_KAFKA__MAX_POLL_RECORDS="20")
    wait_until(
        lambda: first.metric("detector_records_consumed_total") > 0, 60, "first daemon consumed"
    )
    assert first.stop(signal.SIGTERM) == 0
    stopped = re.search(r"stopped after (\d+) records", first.log())
    assert stopped, first.log()[-2000:]
    processed = int(stopped.group(1))
    assert 0 < processed < len(messages)
    assert committed_total(topics.bootstrap, topics.group, topics.readings) == processed

    second = start_daemon()
    wait_until(
        lambda: second.metric("detector_records_consumed_total") == len(messages) - processed,
        60,
        "second daemon consumed exactly the rest",
    )
    assert second.stop(signal.SIGTERM) == 0
    assert committed_total(topics.bootstrap, topics.group, topics.readings) == len(messages)


def test_readings_from_librdkafka_producer_with_every_codec(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    messages = encode_messages(interleave(demo_data.normal.readings))[:400]
    codecs = ["gzip", "lz4", "zstd", "snappy"]
    daemon = start_daemon()
    for index, codec in enumerate(codecs):
        producer = confluent_kafka.Producer(
            {"bootstrap.servers": topics.bootstrap, "compression.type": codec, "linger.ms": 20}
        )
        for key, value in messages[index * 100 : (index + 1) * 100]:
            producer.produce(topics.readings, key=key, value=value)
        assert producer.flush(30) == 0
    wait_until(
        lambda: daemon.metric("detector_readings_accepted_total") == len(messages),
        60,
        "all compressed readings accepted",
    )
    rejected = [
        v for k, v in daemon.metrics().items() if k.startswith("detector_records_rejected_total")
    ]
    assert sum(rejected) == 0
    assert np.isclose(daemon.metric("detector_records_consumed_total"), len(messages))
