"""Devices come, go and change clocks: the daemon must go on scoring them and forget the gone.

Each test runs the daemon as a process against the real broker (issue 10, items 16-18): a clock
that steps back or one reading stamped ahead blinds a device only for ``windows.max_late_readings``
readings; idle and replaced devices are forgotten, so memory follows the fleet and new devices
are admitted at ``windows.max_devices``; a revoked partition's devices leave the gauges, and
``detector_broker_reachable`` agrees with ``/readyz``. Figures are logged under ``fault-figures``
(``--log-cli-level=INFO`` shows them).
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from kafka import KafkaProducer

from detector_devtools.embedded_broker import EmbeddedProxy
from detector_devtools.replay import encode_messages, interleave
from detector_devtools.synthetic import SENSORS
from tests.conftest import WINDOW, Daemon, DemoData, Topics, committed_total, produce, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

FIGURES = logging.getLogger("fault-figures")


def _settle(daemon: Daemon, name: str, expected: float, timeout_s: float) -> float:
    """Wait up to ``timeout_s`` for a metric to reach ``expected``; returns the value it has.

    Unlike ``wait_until`` it does not fail, so a test can log its figures before it asserts.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and daemon.metric(name) != expected:
        time.sleep(0.2)
    return daemon.metric(name)


def _sensor_rows(demo_data: DemoData, n: int) -> list[dict[str, float]]:
    """``n`` normal readings' sensor values of one device, so the windows score as normal."""
    readings = demo_data.normal.readings
    device = readings["device_id"].iloc[0]
    return readings[readings["device_id"] == device][list(SENSORS)].head(n).to_dict("records")


def _reading(device: str, ts: float, sensors: dict[str, float]) -> tuple[bytes, bytes]:
    return device.encode(), json.dumps({"device_id": device, "ts": ts, "sensors": sensors}).encode()


def test_clock_steps_blind_a_device_only_for_max_late_readings(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    """Item 16: a clock stepped back 1 h, and one reading 290 s ahead, cost 10 readings each."""
    limit = 10  # windows.max_late_readings, as configs/detector.yaml sets it
    sensors = _sensor_rows(demo_data, 200)
    now = time.time()
    t0 = now - 100
    # Stepped back by an hour after 40 readings; 60 more readings follow on the new clock.
    back = [_reading("step-back", t0 + i, sensors[i]) for i in range(40)]
    back += [_reading("step-back", t0 + 40 - 3600 + i, sensors[40 + i]) for i in range(60)]
    # One reading 290 s ahead of the rest (within max_future_skew_s), then 60 on time.
    ahead = [_reading("ahead", t0 + i, sensors[i]) for i in range(30)]
    ahead.append(_reading("ahead", t0 + 29 + 290, sensors[30]))
    ahead += [_reading("ahead", t0 + 30 + i, sensors[31 + i]) for i in range(60)]
    daemon = start_daemon()
    produce(topics.bootstrap, topics.readings, back + ahead)
    consumed = len(back) + len(ahead)
    assert _settle(daemon, "detector_records_consumed_total", consumed, 60) == consumed
    # step-back: 40 + (60 - limit) accepted in two windows; ahead: 31 + (60 - limit) likewise.
    windows = (40 - WINDOW + 1) + (60 - limit - WINDOW + 1)
    windows += (31 - WINDOW + 1) + (60 - limit - WINDOW + 1)
    scored = _settle(daemon, "detector_windows_scored_total", windows, 20)
    metrics = daemon.metrics()
    late = metrics['detector_records_rejected_total{reason="late"}']
    resets = metrics.get('detector_window_resets_total{reason="clock"}', 0)
    FIGURES.info(
        f"clock steps: {late:.0f} late rejections, {scored:.0f} windows scored "
        f"(of {windows}), {resets:.0f} clock resets"
    )
    assert scored == windows
    assert late == 2 * limit
    assert resets == 2
    assert metrics["detector_readings_accepted_total"] == 40 + 31 + 2 * (60 - limit)
    assert daemon.process.poll() is None


def _one_reading_each(
    prefix: str, count: int, ts: float, per_record: int = 500
) -> list[tuple[bytes, bytes]]:
    """``count`` distinct devices, one reading each, sent as gateway batches of ``per_record``."""
    sensors = dict.fromkeys(SENSORS, 1.0)
    readings = [{"device_id": f"{prefix}-{i}", "ts": ts, "sensors": sensors} for i in range(count)]
    return [
        (prefix.encode(), json.dumps(readings[i : i + per_record]).encode())
        for i in range(0, count, per_record)
    ]


def test_idle_and_replaced_devices_are_forgotten_and_new_ones_admitted(
    topics: Topics, start_daemon
) -> None:
    """Item 17: at max_devices new devices replace the longest-idle; idle ones are forgotten.

    20 000 devices fill most of a 25 000 limit, 20 000 new ones follow (the fleet replaced):
    none may be rejected. Then the stream goes quiet and every device must be forgotten after
    windows.device_idle_timeout_s, the buffers shrunk back.
    """
    fleet, limit, idle_s = 20_000, 25_000, 15
    t0 = time.time() - 1000
    daemon = start_daemon(
        DETECTOR_WINDOWS__MAX_DEVICES=str(limit),
        DETECTOR_WINDOWS__DEVICE_IDLE_TIMEOUT_S=str(idle_s),
        DETECTOR_WINDOWS__CAPACITY_MIN_IDLE_S="0",
    )
    wait_until(lambda: daemon.metric("detector_partitions_assigned") == 3, 60, "assigned")
    rss_start = daemon.rss_kib() / 1024
    produce(topics.bootstrap, topics.readings, _one_reading_each("first", fleet, t0))
    assert _settle(daemon, "detector_devices_tracked", fleet, 30) == fleet
    rss_first = daemon.rss_kib() / 1024
    produce(topics.bootstrap, topics.readings, _one_reading_each("second", fleet, t0 + 60))
    wait_until(
        lambda: daemon.metric("detector_records_consumed_total") == 2 * fleet // 500,
        60,
        "the second fleet consumed",
    )
    second = daemon.metrics()
    rss_second = daemon.rss_kib() / 1024
    tracked_second = second["detector_devices_tracked"]
    rejected = second['detector_records_rejected_total{reason="too_many_devices"}']
    evicted_capacity = second.get('detector_devices_evicted_total{reason="capacity"}', 0)
    # No new readings: within the idle timeout (plus a housekeeping round) all are forgotten.
    tracked_end = _settle(daemon, "detector_devices_tracked", 0, idle_s + 15)
    end = daemon.metrics()
    rss_end = daemon.rss_kib() / 1024
    evicted_idle = end.get('detector_devices_evicted_total{reason="idle"}', 0)
    FIGURES.info(
        f"device churn: RSS {rss_start:.0f} -> {rss_first:.0f} MiB ({fleet} devices) -> "
        f"{rss_second:.0f} ({tracked_second:.0f} tracked after {fleet} more, {rejected:.0f} "
        f"rejected, {evicted_capacity:.0f} replaced at the limit) -> {rss_end:.0f} "
        f"({tracked_end:.0f} tracked {idle_s} s later, {evicted_idle:.0f} forgotten idle)"
    )
    assert rejected == 0
    assert second["detector_readings_accepted_total"] == 2 * fleet
    assert evicted_capacity >= 1
    assert tracked_end == 0
    assert rss_end - rss_start < (rss_second - rss_start) / 2  # most of the growth given back
    assert evicted_idle + end['detector_devices_evicted_total{reason="capacity"}'] == 2 * fleet
    assert daemon.process.poll() is None


def test_revoked_partitions_devices_leave_the_daemon(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    """Item 18: after a scale-out, devices_tracked counts only the partitions a daemon kept."""
    per_partition, steps = 10, 40
    sensors = _sensor_rows(demo_data, steps)
    t0 = time.time() - 1000
    a = start_daemon()
    wait_until(lambda: a.metric("detector_partitions_assigned") == 3, 60, "a owns all")
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    for step in range(steps):
        for device in range(3 * per_partition):
            key, value = _reading(f"dev-{device}", t0 + step, sensors[step])
            producer.send(topics.readings, key=key, value=value, partition=device % 3)
    producer.flush()
    producer.close()
    total = steps * 3 * per_partition
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == total,
        60,
        "a processed everything",
    )
    assert _settle(a, "detector_devices_tracked", 3 * per_partition, 5) == 3 * per_partition
    b = start_daemon()
    wait_until(
        lambda: (
            b.metric("detector_partitions_assigned") >= 1
            and a.metric("detector_partitions_assigned") + b.metric("detector_partitions_assigned")
            == 3
        ),
        60,
        "the partitions are split",
    )
    kept = a.metric("detector_partitions_assigned")
    # Both rebuild the windows of the partitions they own from the records before the commit.
    tracked_a = _settle(a, "detector_devices_tracked", per_partition * kept, 30)
    tracked_b = _settle(b, "detector_devices_tracked", per_partition * (3 - kept), 30)
    FIGURES.info(
        f"scale-out: a keeps {kept:.0f} of 3 partitions and tracks {tracked_a:.0f} of "
        f"{3 * per_partition} devices; b tracks {tracked_b:.0f}"
    )
    assert tracked_a == per_partition * kept
    assert tracked_b == per_partition * (3 - kept)


def test_broker_reachable_gauge_agrees_with_readyz_in_an_outage(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    """Item 18: while /readyz says the broker is unreachable the gauge says 0, and 1 after.

    The outage starts while the daemon works through fetched records, so it is soon stuck
    retrying the publish of an alert: the main loop does no housekeeping meanwhile.
    """
    messages = encode_messages(interleave(demo_data.anomalous.readings))
    produce(topics.bootstrap, topics.readings, messages)
    proxy = EmbeddedProxy(origin=topics.bootstrap).start()
    try:
        daemon = start_daemon(
            DETECTOR_KAFKA__BOOTSTRAP_SERVERS=json.dumps([proxy.bootstrap_servers]),
            DETECTOR_KAFKA__REQUEST_TIMEOUT_MS="5000",
            DETECTOR_SCORING__MAX_BATCH_SIZE="32",
            DETECTOR_SCORING__ARTIFICIAL_DELAY_MS="100",
        )
        wait_until(lambda: daemon.metric("detector_records_consumed_total") > 0, 60, "consuming")
        # The /metrics page may be up to metrics.exposition_cache_s (1 s) old.
        assert _settle(daemon, "detector_broker_reachable", 1, 3) == 1
        proxy.stop()
        wait_until(
            lambda: daemon.http_status("/readyz")[1]["broker_reachable"] is False,
            30,
            "/readyz says the broker is unreachable",
        )
        time.sleep(1.5)  # let a cached /metrics page from before the verdict expire
        disagreements = []
        for _ in range(10):
            ready = daemon.http_status("/readyz")[1]["broker_reachable"]
            gauge = daemon.metric("detector_broker_reachable")
            if gauge != int(ready):
                disagreements.append((ready, gauge))
            time.sleep(1)
        FIGURES.info(
            f"outage: gauge disagreed with /readyz {len(disagreements)} of 10 times "
            f"(/readyz, gauge): {disagreements[:3]}"
        )
        assert disagreements == []
        proxy = EmbeddedProxy(origin=topics.bootstrap, port=proxy.port).start()
        wait_until(
            lambda: (
                committed_total(topics.bootstrap, topics.group, topics.readings) == len(messages)
            ),
            120,
            "everything processed and committed after the outage",
        )
        assert _settle(daemon, "detector_broker_reachable", 1, 30) == 1
    finally:
        proxy.stop()
