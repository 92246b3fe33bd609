"""Device profiles, shadow scoring and drift watch through the daemon, on the real broker.

``pytest -m profiles``: a mixed fleet of pumps and fans through one daemon, each device scored by
its own profile's model; unknown and conflicting profiles dead-lettered; a hot reload of one
profile; a rebalance that rebuilds both profiles' windows; a candidate scored in shadow.
``pytest -m drift``: the drift metric on a normal and on a drifted stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from detector.core.artifact import load_artifact, set_candidate, set_current
from detector.kafka_io import DLQ_HEADER_PREFIX
from detector_devtools.embedded_broker import create_topics
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    MIXED_PROFILES,
    WINDOW,
    DemoData,
    MixedData,
    Topics,
    copy_version,
    offline_transitions,
    produce,
    produce_and_wait,
    profiles_config,
    read_records,
    read_topic,
    streamed_transitions,
    wait_for_split,
    wait_until,
)

pytestmark = pytest.mark.integration

Transitions = dict[str, list[tuple[float, str]]]


def _by_profile(alerts: list[dict]) -> dict[str, Transitions]:
    return {
        profile: streamed_transitions([a for a in alerts if a["profile"] == profile])
        for profile in MIXED_PROFILES
    }


def _offline(
    mixed_data: MixedData, models: dict[str, Path] | None = None
) -> dict[str, Transitions]:
    """Each profile's ``detector evaluate`` transitions on its own rows of the stream."""
    return {
        profile: offline_transitions(
            (models or {}).get(profile, mixed_data.models[profile].path), mixed_data.rows(profile)
        )
        for profile in MIXED_PROFILES
    }


def _windows(mixed_data: MixedData, profile: str) -> int:
    rows = mixed_data.rows(profile)
    return len(rows) - rows["device_id"].nunique() * (WINDOW - 1)


def _registries(mixed_data: MixedData, root: Path) -> dict[str, Path]:
    """A private copy of each profile's registry, with its model as version ``v1``."""
    registries = {}
    for profile in MIXED_PROFILES:
        registries[profile] = root / profile
        copy_version(registries[profile], mixed_data.models[profile].path, "v1", 1.0)
        set_current(registries[profile], "v1")
    return registries


def _firing(transitions: Transitions) -> int:
    return sum(state == "firing" for events in transitions.values() for _, state in events)


@pytest.mark.profiles
def test_mixed_fleet_through_one_daemon_scores_each_device_with_its_profiles_model(
    topics: Topics, mixed_data: MixedData, start_daemon
) -> None:
    dlq = f"{topics.readings}-dlq"
    create_topics(topics.bootstrap, {dlq: 1})
    readings = interleave(mixed_data.stream.readings)
    messages = encode_messages(readings)
    first_ts = float(readings["ts"].iloc[0])
    blower = {"device_id": "blower-0", "profile": "blower", "sensors": {"vibration": 1.0}}
    unknown = [(b"blower-0", json.dumps({**blower, "ts": first_ts + i}).encode()) for i in range(5)]
    # pump-0 once claims to be a fan, half a second after one of its readings.
    pump_row = readings[readings["device_id"] == "pump-0"].iloc[100]
    sensors = {
        k: float(v) for k, v in pump_row.drop(["ts", "device_id", "profile"]).dropna().items()
    }
    conflict = {"device_id": "pump-0", "profile": "fan", "ts": pump_row["ts"] + 0.5}
    conflicting = [(b"pump-0", json.dumps({**conflict, "sensors": sensors}).encode())]
    cut = len(messages) // 2
    stream = messages[:cut] + unknown + conflicting + messages[cut:]

    daemon = start_daemon(
        profiles_config(mixed_data.registries), DETECTOR_KAFKA__DEAD_LETTER_TOPIC=dlq
    )
    produce(topics.bootstrap, topics.readings, stream)
    expected_windows = {p: _windows(mixed_data, p) for p in MIXED_PROFILES}
    wait_until(
        lambda: all(
            daemon.metric(f'detector_windows_scored_total{{profile="{p}"}}') == expected_windows[p]
            for p in MIXED_PROFILES
        ),
        90,
        "every window of both profiles scored",
    )
    wait_until(lambda: daemon.metric("detector_dead_letters_total") == 6, 30, "dead letters")

    alerts = read_topic(topics.bootstrap, topics.alerts)
    assert alerts, "the injected anomalies raise alerts"
    for alert in alerts:
        assert alert["device_id"].startswith(alert["profile"] + "-")
        assert alert["model_version"] == mixed_data.models[alert["profile"]].version
    assert _by_profile(alerts) == _offline(mixed_data)

    metrics = daemon.metrics()
    assert metrics['detector_records_rejected_total{reason="unknown_profile"}'] == 5
    assert metrics['detector_records_rejected_total{reason="profile_conflict"}'] == 1
    for profile in MIXED_PROFILES:
        version = mixed_data.models[profile].version
        assert any(
            k.startswith("detector_model_info") and f'profile="{profile}"' in k and version in k
            for k in metrics
        )
        assert metrics[f'detector_devices_tracked{{profile="{profile}"}}'] == 2
    reasons = sorted(
        dict(letter.headers)[DLQ_HEADER_PREFIX + "reason"].decode()
        for letter in read_records(topics.bootstrap, dlq)
    )
    assert reasons == ["profile_conflict"] + ["unknown_profile"] * 5


@pytest.mark.profiles
def test_hot_reload_of_one_profile_leaves_the_other_untouched(
    tmp_path: Path, topics: Topics, mixed_data: MixedData, start_daemon
) -> None:
    registries = _registries(mixed_data, tmp_path / "models")
    messages = encode_messages(interleave(mixed_data.stream.readings))
    half = len(messages) // 2
    daemon = start_daemon(profiles_config(registries), DETECTOR_MODEL__RELOAD_INTERVAL_S="0.2")
    produce(topics.bootstrap, topics.readings, messages[:half])
    wait_until(lambda: daemon.metric("detector_records_consumed_total") == half, 60, "first half")

    copy_version(registries["pump"], mixed_data.models["pump"].path, "v2", 0.5)
    set_current(registries["pump"], "v2")
    wait_until(
        lambda: daemon.metric('detector_model_reloads_total{profile="pump",result="success"}') == 1,
        30,
        "pump's new version swapped in",
    )
    produce(topics.bootstrap, topics.readings, messages[half:])
    total = sum(_windows(mixed_data, p) for p in MIXED_PROFILES)
    wait_until(lambda: daemon.metric("detector_windows_scored_total") == total, 90, "all scored")

    alerts = read_topic(topics.bootstrap, topics.alerts)
    fans = [a for a in alerts if a["profile"] == "fan"]
    assert {a["model_version"] for a in fans} == {"v1"}
    assert _by_profile(alerts)["fan"] == _offline(mixed_data)["fan"]
    assert "v2" in {a["model_version"] for a in alerts if a["profile"] == "pump"}
    metrics = daemon.metrics()
    assert metrics.get('detector_model_reloads_total{profile="fan",result="success"}', 0) == 0
    info = {k for k, v in metrics.items() if k.startswith("detector_model_info") and v}
    assert any('profile="pump"' in k and 'version="v2"' in k for k in info)
    assert any('profile="fan"' in k and 'version="v1"' in k for k in info)


@pytest.mark.profiles
def test_rebalance_rebuilds_both_profiles_windows(
    topics: Topics, mixed_data: MixedData, start_daemon
) -> None:
    """A second daemon joins mid-stream: both rebuild what they are given, alerts stay exact."""
    readings = interleave(mixed_data.stream.readings)
    steps = readings["ts"].unique()
    handover = steps[len(steps) // 2]
    first, rest = readings[readings["ts"] < handover], readings[readings["ts"] >= handover]
    devices = sorted(readings["device_id"].unique())
    # pump-1 and fan-0 share partition 0: every partition move rebuilds a profile's devices,
    # and the one holding partition 0 rebuilds both.
    partition_of = dict(zip(devices, [0, 1, 2, 0], strict=True))

    settings = profiles_config(mixed_data.registries)
    a = start_daemon(settings)
    wait_until(lambda: a.metric("detector_partitions_assigned") == 3, 60, "first daemon owns all")
    produce_and_wait(topics, first, partition_of, len(first), "first part processed")
    b = start_daemon(settings)
    wait_for_split(a, b)
    produce_and_wait(topics, rest, partition_of, len(readings), "everything processed")
    assert b.metric("detector_rebuild_records_total") > 0
    # Each device is tracked by exactly one daemon: what moved was forgotten where it was.
    for profile in MIXED_PROFILES:
        key = f'detector_devices_tracked{{profile="{profile}"}}'
        assert a.metric(key) + b.metric(key) == 2
    alerts = read_topic(topics.bootstrap, topics.alerts)
    assert _by_profile(alerts) == _offline(mixed_data)


@pytest.mark.profiles
def test_shadow_candidate_changes_no_alert_and_counts_its_own_like_offline(
    tmp_path: Path, topics: Topics, mixed_data: MixedData, start_daemon
) -> None:
    registries = _registries(mixed_data, tmp_path / "models")
    # Half the threshold: the candidate would raise more alerts than the current model.
    candidate = copy_version(registries["pump"], mixed_data.models["pump"].path, "v2", 0.5)
    set_candidate(registries["pump"], "v2")
    daemon = start_daemon(profiles_config(registries))
    produce(
        topics.bootstrap, topics.readings, encode_messages(interleave(mixed_data.stream.readings))
    )
    total = sum(_windows(mixed_data, p) for p in MIXED_PROFILES)
    wait_until(lambda: daemon.metric("detector_windows_scored_total") == total, 90, "all scored")

    alerts = read_topic(topics.bootstrap, topics.alerts)
    offline = _offline(mixed_data)
    assert _by_profile(alerts) == offline
    assert {a["model_version"] for a in alerts} == {"v1"}
    shadowed = offline_transitions(candidate, mixed_data.rows("pump"))
    assert _firing(shadowed) > _firing(offline["pump"])

    metrics = daemon.metrics()

    def shadow_alerts(model: str) -> float:
        key = f'detector_shadow_alerts_total{{model="{model}",profile="pump",state="firing"}}'
        return metrics.get(key, 0.0)

    assert shadow_alerts("candidate") == _firing(shadowed)
    assert shadow_alerts("current") == _firing(offline["pump"])
    assert metrics['detector_shadow_windows_scored_total{profile="pump"}'] == _windows(
        mixed_data, "pump"
    )
    assert metrics.get('detector_shadow_windows_scored_total{profile="fan"}', 0) == 0
    assert metrics['detector_shadow_info{candidate="v2",current="v1",profile="pump"}'] == 1
    candidate_batches = metrics[
        'detector_scoring_duration_seconds_count{model="candidate",profile="pump"}'
    ]
    assert candidate_batches > 0
    assert (
        metrics.get('detector_scoring_duration_seconds_count{model="candidate",profile="fan"}', 0)
        == 0
    )


@pytest.mark.profiles
def test_shadow_scoring_can_be_turned_off(
    tmp_path: Path, topics: Topics, mixed_data: MixedData, start_daemon
) -> None:
    registries = _registries(mixed_data, tmp_path / "models")
    copy_version(registries["pump"], mixed_data.models["pump"].path, "v2", 0.5)
    set_candidate(registries["pump"], "v2")
    daemon = start_daemon(profiles_config(registries, shadow=False))
    produce(
        topics.bootstrap, topics.readings, encode_messages(interleave(mixed_data.stream.readings))
    )
    total = sum(_windows(mixed_data, p) for p in MIXED_PROFILES)
    wait_until(lambda: daemon.metric("detector_windows_scored_total") == total, 90, "all scored")
    metrics = daemon.metrics()
    assert metrics.get("detector_shadow_windows_scored_total", 0) == 0
    assert metrics.get('detector_scoring_duration_seconds_count{model="candidate"}', 0) == 0
    assert _by_profile(read_topic(topics.bootstrap, topics.alerts)) == _offline(mixed_data)


def _drifted(readings: pd.DataFrame, demo_data: DemoData) -> pd.DataFrame:
    """The normal stream with a slow rise in two sensors, as a wearing pump shows."""
    artifact = load_artifact(demo_data.model.path)
    names = artifact.metadata.feature_names
    drifted = readings.copy()
    progress = (drifted["ts"] - drifted["ts"].min()) / (drifted["ts"].max() - drifted["ts"].min())
    for sensor in DRIFTED_SENSORS:
        drifted[sensor] += DRIFT_STDS * progress * artifact.scaler.scale[names.index(sensor)]
    return drifted


DRIFTED_SENSORS = ("vibration", "temperature")
DRIFT_STDS = 1.5


@pytest.mark.drift
@pytest.mark.parametrize("stream", ["normal", "drifted"])
def test_drift_rises_on_a_drifted_stream_and_stays_flat_on_a_normal_one(
    stream: str, topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    readings = demo_data.normal.readings
    if stream == "drifted":
        readings = _drifted(readings, demo_data)
    daemon = start_daemon()  # the default drift settings: every window of the stream counts
    produce(topics.bootstrap, topics.readings, encode_messages(interleave(readings)))
    expected = len(readings) - readings["device_id"].nunique() * (WINDOW - 1)
    wait_until(lambda: daemon.metric("detector_windows_scored_total") == expected, 60, "scored")
    drift = daemon.metric('detector_score_drift{profile="default"}')
    # ModelDrift's level (deploy/prometheus/rules-drift.yml): a significant shift.
    if stream == "normal":
        assert drift < 0.25
    else:
        assert drift > 0.25
