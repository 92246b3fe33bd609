"""The per-device likelihood in the daemon on the real broker: its alerts equal ``detector
evaluate``'s through kill -9 restarts and a partition handover (the replay re-scores each
device's last windows, which is all the likelihood's state)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from detector.config import AdaptationConfig, AlertConfig, LikelihoodConfig, load_config
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    ROOT,
    DemoData,
    Topics,
    hand_over,
    offline_transitions,
    produce,
    read_topic,
    run_through_kills,
    streamed_transitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

FIGURES = logging.getLogger("fault-figures")
LIKELIHOOD_WINDOWS = 100
# The likelihood alone judges every model (adaptation off), each window joining the history.
LIKELIHOOD = {"windows": LIKELIHOOD_WINDOWS, "combine": "replace", "min_error_share": 0.0}
LIKELIHOOD_ENV = {
    **{f"DETECTOR_ALERTS__LIKELIHOOD__{key.upper()}": str(v) for key, v in LIKELIHOOD.items()},
    "DETECTOR_ALERTS__ADAPTATION__WINDOWS": "0",
}


def _alerts() -> AlertConfig:
    alerts = load_config(ROOT / "configs" / "detector.yaml").alerts
    return alerts.model_copy(
        update={
            "likelihood": LikelihoodConfig.model_validate(LIKELIHOOD),
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
    targets = [rng.randint(400, 1500) for _ in range(2)]
    final = run_through_kills(start_daemon, topics, len(messages), targets, **LIKELIHOOD_ENV)
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

    a = hand_over(start_daemon, topics, first, rest, partition_of, **LIKELIHOOD_ENV)
    assert a.metric("detector_rebuild_records_total") > 0
    alerts = read_topic(topics.bootstrap, topics.alerts)
    expected = offline_transitions(demo_data.model.path, readings, _alerts())
    assert any(state == "firing" for t in expected.values() for _, state in t)
    assert streamed_transitions(alerts) == expected
