"""A broker that restarts with its state gone must not wedge the alert producer (issue 10 item 6).

The idempotent producer's id is unknown to a restarted broker; kafka-python then fails batches
attempt after attempt inside ``flush()``, which has no timeout. The daemon bounds each publish
attempt, replaces the producer after a failed one, and goes on publishing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from detector_devtools.embedded_broker import EmbeddedBroker, create_topics, free_port
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import DemoData, Topics, produce, read_topic, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

FIGURES = logging.getLogger("fault-figures")


def test_alerts_flow_again_within_a_minute_after_the_broker_restarts_empty(
    tmp_path: Path, topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "restarting-broker.log").start()
    try:
        # The restarted broker is empty, and the daemon's fetch positions on the first topic lie
        # past its new end: the second half goes to a second topic, read from its start.
        later = f"{topics.readings}-after-restart"
        layout = {topics.readings: 3, later: 3, topics.alerts: 1}
        create_topics(broker.bootstrap_servers, layout)
        readings = demo_data.anomalous.readings
        stamps = sorted(readings["ts"].unique())
        middle = stamps[len(stamps) // 2]
        first = encode_messages(interleave(readings[readings["ts"] < middle]))
        second = encode_messages(interleave(readings[readings["ts"] >= middle]))
        daemon = start_daemon(
            DETECTOR_KAFKA__BOOTSTRAP_SERVERS=json.dumps([broker.bootstrap_servers]),
            DETECTOR_KAFKA__READINGS_TOPICS=json.dumps([topics.readings, later]),
            DETECTOR_KAFKA__REQUEST_TIMEOUT_MS="5000",
        )
        produce(broker.bootstrap_servers, topics.readings, first)
        wait_until(
            lambda: daemon.metric("detector_records_consumed_total") == len(first), 90, "first half"
        )
        wait_until(
            lambda: daemon.metric('detector_alerts_total{state="firing"}') > 0,
            30,
            "alerts of the first half published",
        )

        broker.stop()
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "restarting-broker.log").start()
        create_topics(broker.bootstrap_servers, layout)
        produce(broker.bootstrap_servers, later, second)
        restarted = time.monotonic()
        episodes = [e for e in demo_data.anomalous.episodes if e.start_ts >= middle]
        assert episodes, "the second half must hold anomalies"

        def every_later_episode_alerted() -> bool:
            firing = [
                a
                for a in read_topic(broker.bootstrap_servers, topics.alerts, timeout_s=10)
                if a["state"] == "firing"
            ]
            return all(
                any(
                    a["device_id"] == e.device_id
                    and a["window_end"] >= e.start_ts
                    and a["window_start"] <= e.end_ts
                    for a in firing
                )
                for e in episodes
            )

        wait_until(every_later_episode_alerted, 60, "alerts on the restarted broker", 2.0)
        recovered_s = time.monotonic() - restarted
        assert daemon.process.poll() is None
        metrics = daemon.metrics()
        FIGURES.info(
            f"broker restart: {len(episodes)} later anomalies alerted {recovered_s:.1f} s after "
            f"the restart; publish failures {metrics['detector_alert_publish_failures_total']:.0f}, "
            f"producers replaced {metrics['detector_producer_replacements_total']:.0f}"
        )
    finally:
        broker.stop()
