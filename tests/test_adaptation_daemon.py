"""Adaptation in the daemon on the real broker: a normal that shifts and stays stops paging, and
the daemon's alerts equal ``detector evaluate``'s through kill -9 restarts (the replay rebuilds
each device's recent scores)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd

from detector.config import AdaptationConfig, AlertConfig, load_config
from detector.core.artifact import load_artifact
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    ROOT,
    DemoData,
    Topics,
    offline_transitions,
    produce,
    read_topic,
    run_through_kills,
    streamed_transitions,
)

FIGURES = logging.getLogger("fault-figures")
ADAPTATION_WINDOWS = 100
SHIFT_AT = 300  # readings into the stream
SHIFT_SCALES = 2.0  # pressure and flow rate move this many training standard deviations: the
# scores rise within adaptation.max_ratio (a larger shift is a device broken for good, and pages)


def _shifted_readings(demo_data: DemoData) -> tuple[pd.DataFrame, str]:
    """The normal stream with one device's pressure and flow rate shifted for good."""
    readings = demo_data.normal.readings.copy()
    artifact = load_artifact(demo_data.model.path)
    names = artifact.metadata.feature_names
    device = sorted(readings["device_id"].unique())[0]
    steps = np.sort(readings["ts"].unique())
    shifted = (readings["device_id"] == device) & (readings["ts"] >= steps[SHIFT_AT])
    for sensor in ("pressure", "flow_rate"):
        readings.loc[shifted, sensor] += SHIFT_SCALES * artifact.scaler.scale[names.index(sensor)]
    return readings, device


def _alerts(windows: int) -> AlertConfig:
    alerts = load_config(ROOT / "configs" / "detector.yaml").alerts
    return alerts.model_copy(update={"adaptation": AdaptationConfig(windows=windows)})


def test_a_shift_that_stays_pages_once_then_stops(demo_data: DemoData) -> None:
    readings, device = _shifted_readings(demo_data)
    fixed = offline_transitions(demo_data.model.path, readings, _alerts(0))
    adapted = offline_transitions(demo_data.model.path, readings, _alerts(ADAPTATION_WINDOWS))
    shift_ts = np.sort(readings["ts"].unique())[SHIFT_AT]
    # Without adaptation the shifted device starts firing at the shift and never stops.
    assert fixed[device][-1][1] == "firing"
    assert fixed[device][-1][0] >= shift_ts
    # With it, the shift pages (a sudden change), then the new level is normal: resolved for good.
    states = [state for ts, state in adapted[device] if ts >= shift_ts]
    assert states[0] == "firing"
    assert adapted[device][-1][1] == "resolved"
    # The devices that did not shift are judged as before.
    assert {d: t for d, t in adapted.items() if d != device} == {
        d: t for d, t in fixed.items() if d != device
    }


def test_adapted_alerts_survive_kill_9_like_an_unbroken_run(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    readings, device = _shifted_readings(demo_data)
    messages = encode_messages(interleave(readings))
    produce(topics.bootstrap, topics.readings, messages)
    adaptation = {"DETECTOR_ALERTS__ADAPTATION__WINDOWS": str(ADAPTATION_WINDOWS)}
    rng = random.Random(20261202)
    # After the shift, while the device adapts or has adapted.
    targets = [rng.randint(600, 1500) for _ in range(2)]
    final = run_through_kills(start_daemon, topics, len(messages), targets, **adaptation)
    assert final.metric("detector_rebuild_records_total") > 0
    alerts = read_topic(topics.bootstrap, topics.alerts)
    expected = offline_transitions(demo_data.model.path, readings, _alerts(ADAPTATION_WINDOWS))
    assert streamed_transitions(alerts) == expected
    assert expected[device][-1][1] == "resolved"
    FIGURES.info(
        f"adaptation through kill -9: {len(alerts)} alerts, transitions of the shifted device "
        f"{[state for _, state in expected[device]]}"
    )
