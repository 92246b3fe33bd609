"""Nothing lost, nothing crashes: kills, broker outages, rebalances, bad input, fuzz, backpressure.

Every test runs the daemon as a process against a real broker (``pytest -m fault`` selects them).
The figures the issue asks for (kills, duplicates, outage length, lag, RSS) are logged; run with
``--log-cli-level=INFO`` to see them.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from kafka import KafkaProducer

from detector.core.artifact import load_artifact
from detector.exits import EXIT_UNAVAILABLE
from detector.kafka_io import DLQ_HEADER_PREFIX
from detector_devtools.embedded_broker import EmbeddedProxy, create_topics
from detector_devtools.replay import encode_messages, interleave
from detector_devtools.synthetic import SENSORS
from tests.conftest import (
    WINDOW,
    DemoData,
    Topics,
    committed_total,
    hand_over,
    offline_transitions,
    produce,
    read_records,
    read_topic,
    run_through_kills,
    streamed_transitions,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

FIGURES = logging.getLogger("fault-figures")


def assert_every_episode_fires(alerts: list[dict], demo_data: DemoData) -> None:
    firing = [a for a in alerts if a["state"] == "firing"]
    for episode in demo_data.anomalous.episodes:
        assert any(
            a["device_id"] == episode.device_id
            and a["window_end"] >= episode.start_ts
            and a["window_start"] <= episode.end_ts
            for a in firing
        ), f"no firing alert for {episode}"


def test_kill_9_mid_stream_misses_no_anomaly(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    messages = encode_messages(interleave(demo_data.anomalous.readings))
    produce(topics.bootstrap, topics.readings, messages)
    rng = random.Random(20261123)
    kills = 3
    targets = [rng.randint(100, 600) for _ in range(kills)]
    final = run_through_kills(start_daemon, topics, len(messages), targets)
    assert final.metric("detector_rebuild_records_total") > 0
    alerts = read_topic(topics.bootstrap, topics.alerts)
    assert_every_episode_fires(alerts, demo_data)
    # Rebuilt windows and alert state make the unique alerts exactly those of an unbroken run.
    expected = offline_transitions(demo_data.model.path, demo_data.anomalous.readings)
    assert streamed_transitions(alerts) == expected
    duplicates = len(alerts) - len({a["alert_id"] for a in alerts})
    FIGURES.info(
        f"kill -9: K={len(demo_data.anomalous.episodes)} anomalies, {kills} kills, "
        f"{len(alerts)} alerts, {duplicates} duplicates (same alert_id)"
    )


def test_broker_unreachable_for_30s_then_back(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    messages = encode_messages(interleave(demo_data.anomalous.readings))
    half = len(messages) // 2
    proxy = EmbeddedProxy(origin=topics.bootstrap).start()
    try:
        daemon = start_daemon(
            DETECTOR_KAFKA__BOOTSTRAP_SERVERS=json.dumps([proxy.bootstrap_servers]),
            DETECTOR_KAFKA__REQUEST_TIMEOUT_MS="5000",
        )
        produce(topics.bootstrap, topics.readings, messages[:half])
        wait_until(
            lambda: daemon.metric("detector_records_consumed_total") == half, 60, "first half"
        )
        wait_until(lambda: daemon.http_status("/readyz")[0] == 200, 10, "ready before the outage")

        proxy.stop()
        outage_started = time.monotonic()

        # The partitions can go before the last heartbeat answer is a session timeout old, so the
        # body may lag the 503 by a few seconds; within the deadline it must name the broker.
        def unready_without_broker() -> bool:
            code, body = daemon.http_status("/readyz")
            return code == 503 and body["broker_reachable"] is False

        wait_until(unready_without_broker, 30, "not ready, and saying the broker is unreachable")
        produce(topics.bootstrap, topics.readings, messages[half:])  # data keeps arriving
        while time.monotonic() - outage_started < 30:
            assert daemon.process.poll() is None, "daemon died during the outage"
            assert daemon.http_status("/healthz")[0] == 200
            time.sleep(1)
        outage_s = time.monotonic() - outage_started

        proxy = EmbeddedProxy(origin=topics.bootstrap, port=proxy.port).start()
        reconnected = time.monotonic()
        wait_until(
            lambda: (
                committed_total(topics.bootstrap, topics.group, topics.readings) == len(messages)
            ),
            90,
            "every record processed and committed after the broker returned",
        )
        caught_up_s = time.monotonic() - reconnected
        wait_until(lambda: daemon.http_status("/readyz")[0] == 200, 30, "ready again")
        alerts = read_topic(topics.bootstrap, topics.alerts)
        expected = offline_transitions(demo_data.model.path, demo_data.anomalous.readings)
        assert streamed_transitions(alerts) == expected
        FIGURES.info(f"outage {outage_s:.0f} s; caught up {caught_up_s:.1f} s after reconnecting")
    finally:
        proxy.stop()


def test_scale_out_handover_rebuilds_windows(
    kafka_bootstrap: str, demo_data: DemoData, start_daemon, topics: Topics
) -> None:
    readings = demo_data.normal.readings.copy()
    artifact = load_artifact(demo_data.model.path)
    names = artifact.metadata.feature_names
    steps = np.sort(readings["ts"].unique())
    handover = 400
    # A spike on every device three readings after the handover: fewer than a window length,
    # so only rebuilt windows score it at the same window ends as an uninterrupted run.
    spike = readings["ts"].isin(steps[handover + 3 : handover + 9])
    for sensor in ("pressure", "flow_rate"):
        readings.loc[spike, sensor] += 8 * artifact.scaler.scale[names.index(sensor)]
    ordered = interleave(readings)
    devices = sorted(ordered["device_id"].unique())
    partition_of = {device: i % 3 for i, device in enumerate(devices)}
    first = ordered[ordered["ts"] < steps[handover]]
    rest = ordered[ordered["ts"] >= steps[handover]]

    a = hand_over(start_daemon, topics, first, rest, partition_of)
    assert a.metric("detector_rebuild_records_total") > 0
    alerts = read_topic(topics.bootstrap, topics.alerts)
    for alert in alerts:
        assert alert["window_end"] - alert["window_start"] == pytest.approx(WINDOW - 1)
    spiked = {
        a["device_id"]
        for a in alerts
        if a["state"] == "firing"
        and a["window_start"] <= steps[handover + 8]
        and a["window_end"] >= steps[handover + 3]
    }
    assert spiked == set(devices)
    assert streamed_transitions(alerts) == offline_transitions(demo_data.model.path, readings)


def _reading(ts: float, **changes: object) -> dict:
    return {"device_id": "rules-dev", "ts": ts, "sensors": dict.fromkeys(SENSORS, 1.0), **changes}


def test_bad_input_is_rejected_by_rule_and_dead_lettered(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    dlq = f"{topics.readings}-dlq"
    create_topics(topics.bootstrap, {dlq: 1})
    t0 = time.time() - 10_000
    sensors = _reading(0)["sensors"]
    without_pressure = {k: v for k, v in sensors.items() if k != "pressure"}
    plan: list[tuple[bytes, str | None]] = [
        (json.dumps(_reading(t0 + i)).encode(), None) for i in range(20)
    ]
    plan += [
        (b"\xff\xfe{ not json", "unparsable"),
        (
            json.dumps(_reading(t0 + 20, sensors={**sensors, "pressure": "high"})).encode(),
            "invalid_type",
        ),
        (json.dumps({"ts": t0 + 20, "sensors": sensors}).encode(), "missing_field"),
        (json.dumps({"device_id": "rules-dev", "sensors": sensors}).encode(), "missing_field"),
        (
            json.dumps(_reading(t0 + 20, sensors={**sensors, "pressure": float("nan")})).encode(),
            "non_finite",
        ),
        (
            json.dumps(_reading(t0 + 20, sensors={**sensors, "pressure": float("inf")})).encode(),
            "non_finite",
        ),
        (json.dumps(_reading(t0 + 20, sensors=without_pressure)).encode(), None),  # imputed
        (json.dumps(_reading(t0 + 21, sensors=without_pressure)).encode(), "missing_sensors"),
        (json.dumps(_reading(t0 + 22, sensors={**sensors, "colour": 3.0})).encode(), None),
        (json.dumps(_reading(t0 + 22)).encode(), "duplicate"),
        (json.dumps(_reading(time.time() + 3600)).encode(), "future_timestamp"),
        (json.dumps(_reading(t0 + 21.5)).encode(), None),  # out of order, inside the grace
        (json.dumps(_reading(t0 + 10)).encode(), "late"),
        (json.dumps(_reading(t0 + 122)).encode(), None),  # after a gap: window restarts
        (json.dumps(_reading(t0 + 123, note="x" * 5000)).encode(), "oversized"),
        (
            json.dumps([_reading(t0 + 124), _reading(t0 + 125, sensors=[1, 2])]).encode(),
            "invalid_type",
        ),
    ]
    daemon = start_daemon(
        DETECTOR_KAFKA__DEAD_LETTER_TOPIC=dlq,
        DETECTOR_KAFKA__MAX_MESSAGE_BYTES="4096",
        DETECTOR_WINDOWS__MAX_IMPUTED_READINGS="1",
        DETECTOR_WINDOWS__OUT_OF_ORDER_GRACE_S="5",
        DETECTOR_WINDOWS__MAX_GAP_S="30",
    )
    # One partition keeps the plan's order.
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    for value, _ in plan:
        producer.send(topics.readings, key=b"rules-dev", value=value, partition=0)
    producer.flush()
    producer.close()
    wait_until(
        lambda: daemon.metric("detector_records_consumed_total") == len(plan), 60, "plan consumed"
    )
    expected: dict[str, int] = {}
    for _, reason in plan:
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    wait_until(
        lambda: daemon.metric("detector_dead_letters_total") == sum(expected.values()),
        30,
        "dead letters published",
    )
    metrics = daemon.metrics()
    for reason, count in expected.items():
        assert metrics[f'detector_records_rejected_total{{reason="{reason}"}}'] == count, reason
    assert metrics["detector_imputed_readings_total"] == 1
    assert metrics["detector_unknown_sensors_total"] == 1
    assert metrics['detector_window_resets_total{reason="gap"}'] == 1
    # 20 valid + imputed + unknown-sensor + inserted + after-gap + good half of the batch
    assert metrics["detector_readings_accepted_total"] == 25

    letters = read_records(topics.bootstrap, dlq)
    assert len(letters) == sum(expected.values())
    values_by_offset = {offset: value for offset, (value, _) in enumerate(plan)}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        offset = int(headers[DLQ_HEADER_PREFIX + "offset"])
        assert headers[DLQ_HEADER_PREFIX + "topic"] == topics.readings
        assert headers[DLQ_HEADER_PREFIX + "partition"] == "0"
        assert headers[DLQ_HEADER_PREFIX + "reason"] == plan[offset][1]
        assert letter.value == values_by_offset[offset]
        assert letter.key == b"rules-dev"
    batch_indices = [
        dict(letter.headers)[DLQ_HEADER_PREFIX + "batch.index"]
        for letter in letters
        if DLQ_HEADER_PREFIX + "batch.index" in dict(letter.headers)
    ]
    assert batch_indices == [b"1"]


def _fuzz_messages(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    valid = json.dumps(_reading(1_700_000_000.0, device_id="fuzz-0"))
    makers = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))),
        lambda: valid[: rng.randint(0, len(valid) - 1)].encode(),
        lambda: json.dumps(
            _reading(
                rng.uniform(0, 2e9),
                device_id=f"fuzz-{rng.randint(0, 20)}",
                sensors={"pressure": rng.choice([1e308, -1e308, 5e-324, 1e38])},
            )
        ).encode(),
        lambda: b'{"device_id": "fuzz-1", "ts": 1e400, "sensors": {}}',
        lambda: json.dumps(
            {"device_id": "x" * rng.randint(257, 100_000), "ts": 1.0, "sensors": {}}
        ).encode(),
        lambda: json.dumps(
            {"device_id": "fuzz-2", "ts": 10 ** rng.randint(20, 400), "sensors": {}}
        ).encode(),
        lambda: json.dumps([[[]]] * rng.randint(1, 50)).encode(),
        lambda: json.dumps({"device_id": None, "ts": "yesterday", "sensors": "all"}).encode(),
        lambda: b"[" * rng.randint(1, 5000),
        lambda: json.dumps(rng.choice([1, "text", None, True, 3.5])).encode(),
    ]
    return [(f"fuzz-{i % 7}".encode(), rng.choice(makers)()) for i in range(count)]


def test_fuzz_leaves_the_valid_stream_untouched(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    dlq = f"{topics.readings}-dlq"
    create_topics(topics.bootstrap, {dlq: 1})
    valid = encode_messages(interleave(demo_data.anomalous.readings))
    fuzz = _fuzz_messages(10_000, seed=11)
    rng = random.Random(3)
    mixed = valid + fuzz
    rng.shuffle(fuzz)
    # Interleave fuzz between valid messages while keeping the valid stream's own order.
    positions = sorted(rng.sample(range(len(mixed)), len(fuzz)))
    mixed, valid_iter, fuzz_iter = [], iter(valid), iter(fuzz)
    fuzz_at = set(positions)
    for i in range(len(valid) + len(fuzz)):
        mixed.append(next(fuzz_iter) if i in fuzz_at else next(valid_iter))
    daemon = start_daemon(DETECTOR_KAFKA__DEAD_LETTER_TOPIC=dlq)
    produce(topics.bootstrap, topics.readings, mixed)
    wait_until(
        lambda: daemon.metric("detector_records_consumed_total") == len(mixed), 300, "all consumed"
    )
    assert daemon.process.poll() is None
    metrics = daemon.metrics()
    rejected = sum(v for k, v in metrics.items() if k.startswith("detector_records_rejected_total"))
    # One dead letter per record, however many of its readings were rejected; they list them.
    wait_until(
        lambda: daemon.metric("detector_dead_letters_total") == len(fuzz), 120, "DLQ caught up"
    )
    assert rejected > 5000
    letters = read_records(topics.bootstrap, dlq, timeout_s=120)
    assert len(letters) == len(fuzz)
    assert sum(int(dict(x.headers)[DLQ_HEADER_PREFIX + "rejected.count"]) for x in letters) == (
        rejected
    )
    alerts = [
        a
        for a in read_topic(topics.bootstrap, topics.alerts)
        if not a["device_id"].startswith("fuzz-")
    ]
    expected = offline_transitions(demo_data.model.path, demo_data.anomalous.readings)
    assert streamed_transitions(alerts) == expected
    FIGURES.info(f"fuzz: {len(fuzz)} messages, {int(rejected)} rejected = dead letters")


def test_backpressure_keeps_memory_bounded_and_drains(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    messages = encode_messages(interleave(demo_data.anomalous.readings))
    daemon = start_daemon(
        DETECTOR_SCORING__ARTIFICIAL_DELAY_MS="400",
        DETECTOR_SCORING__ARTIFICIAL_DELAY_BATCHES="12",
        DETECTOR_SCORING__MAX_BATCH_SIZE="16",
        DETECTOR_KAFKA__MAX_POLL_RECORDS="50",
    )
    baseline = daemon.rss_kib()
    produce(topics.bootstrap, topics.readings, messages)
    lag_seen = 0.0
    peak = baseline

    def lag_visible() -> bool:
        nonlocal lag_seen, peak
        peak = max(peak, daemon.rss_kib())
        lag_seen = max(
            lag_seen,
            sum(v for k, v in daemon.metrics().items() if k.startswith("detector_consumer_lag")),
        )
        return lag_seen > len(messages) / 4

    wait_until(lag_visible, 30, "lag grows while scoring is slow")
    rows = len(demo_data.anomalous.readings)
    wait_until(
        lambda: daemon.metric("detector_windows_scored_total") == rows - 3 * (WINDOW - 1),
        120,
        "lag drained once scoring recovered",
    )
    peak = max(peak, daemon.rss_kib())
    wait_until(
        lambda: (
            sum(v for k, v in daemon.metrics().items() if k.startswith("detector_consumer_lag"))
            == 0
        ),
        10,
        "lag metric back to zero",
    )
    assert daemon.metric("detector_readings_accepted_total") == rows
    # The slow phase held a few thousand records of lag without buffering them in the process.
    assert peak - baseline < 64 * 1024, f"RSS grew {peak - baseline} KiB"
    FIGURES.info(f"backpressure: max lag {lag_seen:.0f}, RSS {baseline} -> peak {peak} KiB")


def test_secrets_never_reach_logs_or_metrics(topics: Topics, start_daemon) -> None:
    secret = "s3cr3t-Pa55word-91f2"
    daemon = start_daemon(
        DETECTOR_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        DETECTOR_KAFKA__SASL_MECHANISM="PLAIN",
        DETECTOR_KAFKA__SASL_USERNAME="detector",
        DETECTOR_KAFKA__SASL_PASSWORD=secret,
        DETECTOR_KAFKA__BOOTSTRAP_TIMEOUT_MS="5000",
        DETECTOR_LOG_LEVEL="DEBUG",
    )
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics").read().decode()
    # Tansu offers no SASL: the handshake fails, so start-up gives up with one line naming it.
    wait_until(lambda: daemon.process.poll() is not None, 60, "start-up gave up on the broker")
    # A failed handshake retries like a missing broker: the start-up exit a supervisor restarts.
    assert daemon.process.returncode == EXIT_UNAVAILABLE
    log = daemon.log()
    assert "cannot reach Kafka" in log and "sasl" in log.lower(), log[-2000:]
    assert secret not in text
    assert secret not in log
