"""The per-device likelihood in the daemon on the real broker: its alerts equal ``detector
evaluate``'s through kill -9 restarts and a partition handover (the replay re-scores each
device's last windows, which is all the likelihood's state)."""

from __future__ import annotations

import logging
import random
import signal

import numpy as np
import pytest

from detector.config import AdaptationConfig, AlertConfig, LikelihoodConfig, load_config
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    ROOT,
    DemoData,
    Topics,
    committed_total,
    kill_mid_stream,
    offline_transitions,
    produce,
    produce_to_partitions,
    read_topic,
    streamed_transitions,
    wait_for_split,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

FIGURES = logging.getLogger("fault-figures")
LIKELIHOOD_WINDOWS = 100
# The likelihood alone judges (adaptation off), each window joining the device's history.
LIKELIHOOD_ENV = {
    "DETECTOR_ALERTS__LIKELIHOOD__WINDOWS": str(LIKELIHOOD_WINDOWS),
    "DETECTOR_ALERTS__ADAPTATION__WINDOWS": "0",
}


def _alerts() -> AlertConfig:
    alerts = load_config(ROOT / "configs" / "detector.yaml").alerts
    return alerts.model_copy(
        update={
            "likelihood": LikelihoodConfig(windows=LIKELIHOOD_WINDOWS),
            "adaptation": AdaptationConfig(windows=0),
        }
    )


def test_likelihood_alerts_survive_kill_9_like_an_unbroken_run(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    readings = demo_data.anomalous.readings
    expected = offline_transitions(demo_data.model.path, readings, _alerts())
    # The test means something only if the likelihood pages, and differently from the default.
    assert any(state == "firing" for t in expected.values() for _, state in t)
    assert expected != offline_transitions(demo_data.model.path, readings)
    messages = encode_messages(interleave(readings))
    produce(topics.bootstrap, topics.readings, messages)
    rng = random.Random(20261204)
    kill_mid_stream(start_daemon, [rng.randint(400, 1500) for _ in range(2)], **LIKELIHOOD_ENV)
    final = start_daemon(**LIKELIHOOD_ENV)
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == len(messages),
        120,
        "the last daemon committed the whole stream",
    )
    assert final.metric("detector_rebuild_records_total") > 0
    alerts = read_topic(topics.bootstrap, topics.alerts)
    assert streamed_transitions(alerts) == expected
    FIGURES.info(f"likelihood through kill -9: {len(alerts)} alerts, offline {expected}")


def test_likelihood_alerts_survive_a_partition_handover(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    readings = demo_data.anomalous.readings
    ordered = interleave(readings)
    steps = np.sort(ordered["ts"].unique())
    devices = sorted(ordered["device_id"].unique())
    partition_of = {device: i % 3 for i, device in enumerate(devices)}
    # Past the likelihood's history and the window, so the survivor must rebuild both.
    handover = steps[LIKELIHOOD_WINDOWS + 200]
    first, rest = ordered[ordered["ts"] < handover], ordered[ordered["ts"] >= handover]

    a = start_daemon(**LIKELIHOOD_ENV)
    b = start_daemon(**LIKELIHOOD_ENV)
    wait_for_split(a, b)
    produce_to_partitions(topics.bootstrap, topics.readings, first, partition_of)
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == len(first),
        60,
        "first part processed by both",
    )
    assert b.stop(signal.SIGTERM) == 0
    wait_until(lambda: a.metric("detector_partitions_assigned") == 3, 60, "survivor owns all")
    produce_to_partitions(topics.bootstrap, topics.readings, rest, partition_of)
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == len(ordered),
        60,
        "everything processed by the survivor",
    )
    assert a.metric("detector_rebuild_records_total") > 0
    alerts = read_topic(topics.bootstrap, topics.alerts)
    expected = offline_transitions(demo_data.model.path, readings, _alerts())
    assert any(state == "firing" for t in expected.values() for _, state in t)
    assert streamed_transitions(alerts) == expected
