"""Device profiles in the daemon's pipeline, in-process: routing, per-profile models, swap, shadow, drift.

A mixed fleet (pumps and fans, :func:`tests.conftest.mixed_data`) goes through one
:class:`~detector.pipeline.Pipeline`; each profile's alerts are compared with the offline backtest
(:func:`~detector.evaluate.evaluate_table`) of that profile's rows with its own model and alert
settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.clients.base import Partition, Record
from detector.config import DetectorConfig, load_config
from detector.core.readings import RejectReason
from detector.evaluate import evaluate_table
from detector.lane import Model
from detector.metrics import DetectorMetrics
from detector.pipeline import Output, Pipeline
from detector.reload import load_model
from detector.sensor import MetricsSensor, Sensor
from detector_devtools.replay import encode_messages, interleave
from detector_devtools.synthetic import (
    PROFILE_COLUMN,
    PROFILES,
    generate_mixed_fleet,
    split_at,
)
from tests.conftest import (
    MIXED_PROFILES,
    NORMAL_STEPS,
    PARTITIONS,
    ROOT,
    STREAM_STEPS,
    MixedData,
    consumer_records,
    copy_version,
    profiles_config,
    streamed_transitions,
)

DLQ = "__detector.errors."
Transitions = dict[str, list[tuple[float, str]]]
Records = dict[Partition, list[Record]]
Poll = dict[Partition, list[Record]]

# Fans get their own alert rule (two of three windows over the threshold to fire, two clear
# windows to resolve), so the comparison shows each lane judges with config.alerts_for(profile).
FAN_ALERTS = {"fire_k": 2, "fire_n": 3, "resolve_after": 2}


class ProfileSensor(Sensor):
    """What one profile's lane reported (the pipeline's root sensor hands these out)."""

    def __init__(self) -> None:
        self.windows = 0
        self.alerts: list[str] = []
        self.shadows: list[tuple[str, str | None]] = []
        self.shadow_windows = 0
        self.shadow_alerts: list[tuple[str, str]] = []

    def scored(self, scores: np.ndarray) -> None:
        self.windows += len(scores)

    def alert(self, state: str) -> None:
        self.alerts.append(state)

    def shadow(self, current: str, candidate: str | None) -> None:
        self.shadows.append((current, candidate))

    def shadow_batch(self, seconds: float, scores: np.ndarray) -> None:
        self.shadow_windows += len(scores)

    def shadow_alert(self, model: str, state: str) -> None:
        self.shadow_alerts.append((model, state))

    def shadow_count(self, model: str, state: str) -> int:
        """Shadowed transitions of ``model`` (``current``, ``candidate``) into ``state``."""
        return self.shadow_alerts.count((model, state))


class RecordingSensor(Sensor):
    """The root sensor: rejections, and one :class:`ProfileSensor` per profile."""

    def __init__(self) -> None:
        self.rejections: list[RejectReason] = []
        self.profiles: dict[str, ProfileSensor] = {}

    def for_profile(self, profile: str) -> ProfileSensor:
        return self.profiles.setdefault(profile, ProfileSensor())

    def rejected(self, reason: RejectReason, detail: str) -> None:
        self.rejections.append(reason)


def _config(
    data: MixedData,
    routes: list[dict] | None = None,
    *,
    fan_alerts: dict | None = FAN_ALERTS,
    drift: dict | None = None,
    scoring: dict | None = None,
    **model: object,
) -> DetectorConfig:
    """configs/detector.yaml with a pump and fan ``model.profiles`` section, CPU, dead letters."""
    values = load_config(ROOT / "configs" / "detector.yaml").model_dump()
    values["model"] = profiles_config(data.registries, routes, **model)["model"]
    if fan_alerts:
        values["model"]["profiles"]["fan"]["alerts"] = fan_alerts
    values["scoring"].update(device="cpu", **(scoring or {}))
    values["kafka"]["dead_letter_topic"] = "dead"
    values["drift"].update(drift or {})
    return DetectorConfig.model_validate(values)


def _models(data: MixedData, config: DetectorConfig) -> dict[str, Model]:
    return {p: load_model(path, config.scoring) for p, path in data.registries.items()}


def _polls(records: Records, size: int = 200) -> list[Poll]:
    longest = max(len(batch) for batch in records.values())
    return [
        {tp: batch[start : start + size] for tp, batch in records.items() if batch[start:]}
        for start in range(0, longest, size)
    ]


def _stream(table: pd.DataFrame) -> list[Poll]:
    """The table's readings in time order, as polls of the readings topic."""
    return _polls(consumer_records(encode_messages(interleave(table))))


def _run(pipeline: Pipeline, polls: list[Poll]) -> list[Output]:
    return [*(pipeline.process(poll) for poll in polls), pipeline.flush()]


def _alerts(outputs: Iterable[Output]) -> list[dict]:
    return [json.loads(m.value) for out in outputs for m in out.alerts]


def _of(alerts: list[dict], profile: str) -> list[dict]:
    return [a for a in alerts if a["profile"] == profile]


def _comparable(alert: dict) -> dict:
    """An alert without its wall-clock time."""
    return {k: v for k, v in alert.items() if k != "detected_at"}


def _same(alerts: list[dict]) -> list[dict]:
    """Alerts without wall-clock times, in an order that does not depend on batch timing.

    Each lane scores when its batch is due, so profiles interleave by timing; a device's
    alerts keep their order.
    """
    return sorted(map(_comparable, alerts), key=lambda a: (a["profile"], a["device_id"]))


def _latest_ts(polls: list[Poll], profile: str) -> float:
    """The newest timestamp among ``profile``'s readings in ``polls``."""
    return max(
        json.loads(r.value)["ts"]
        for poll in polls
        for batch in poll.values()
        for r in batch
        if json.loads(r.value).get("profile") == profile
    )


def _offline(
    data: MixedData, config: DetectorConfig, profile: str, model: Model | None = None
) -> tuple[Transitions, int]:
    """The backtest of ``profile``'s rows: its transitions and how many windows it scored.

    ``evaluate_table`` judges with ``config.alerts``, so the profile's own alert settings
    (``config.alerts_for``) are put there, as the daemon's lane of that profile uses them.
    """
    model = model or load_model(data.registries[profile], config.scoring)
    own = config.model_copy(update={"alerts": config.alerts_for(profile)})
    results = evaluate_table(data.rows(profile), model.artifact, own, model.scorer, profile=profile)
    transitions = {
        r.device_id: [(a.window_end, a.state) for a in r.alerts] for r in results if r.alerts
    }
    return transitions, sum(int(np.count_nonzero(~np.isnan(r.scores))) for r in results)


def _states(transitions: Transitions, keep: Callable[[float], bool] = lambda _: True) -> list[str]:
    return [state for pairs in transitions.values() for end, state in pairs if keep(end)]


def _profile_of(device_id: str) -> str:
    return device_id.rsplit("-", 1)[0]


def test_each_profile_alerts_exactly_as_its_own_backtest(mixed_data: MixedData) -> None:
    config = _config(mixed_data)
    sensor = RecordingSensor()
    pipeline = Pipeline(config, _models(mixed_data, config), sensor)

    alerts = _alerts(_run(pipeline, _stream(mixed_data.stream.readings)))

    assert sensor.rejections == []
    for profile in MIXED_PROFILES:
        expected, windows = _offline(mixed_data, config, profile)
        assert expected, f"the {profile} stream has anomalies the backtest alerts on"
        streamed = _of(alerts, profile)
        assert streamed_transitions(streamed) == expected
        assert sensor.profiles[profile].windows == windows
        assert sensor.profiles[profile].alerts == [a["state"] for a in streamed]
        version = pipeline.lane(profile).model.version
        assert {a["model_version"] for a in streamed} == {version}
    assert alerts and all(a["profile"] == _profile_of(a["device_id"]) for a in alerts)
    # The fans' own rule matters: with the top-level alerts their backtest differs.
    plain = _config(mixed_data, fan_alerts=None)
    assert _offline(mixed_data, plain, "fan")[0] != _offline(mixed_data, config, "fan")[0]


def _reading(device_id: str, ts: float, profile: str) -> dict:
    sensors = PROFILES[profile].sensors
    baseline = PROFILES[profile].baseline
    return {"device_id": device_id, "ts": ts, "sensors": dict(zip(sensors, baseline, strict=True))}


@pytest.mark.parametrize("columnar", [True, False])
def test_a_reading_of_an_unconfigured_profile_is_dead_lettered_as_unknown_profile(
    mixed_data: MixedData, columnar: bool
) -> None:
    config = _config(mixed_data)
    sensor = RecordingSensor()
    pipeline = Pipeline(config, _models(mixed_data, config), sensor, columnar=columnar)
    ts = float(mixed_data.stream.readings["ts"].iloc[0])
    stranger = json.dumps({**_reading("compressor-0", ts, "compressor"), "profile": "compressor"})
    pump = json.dumps({**_reading("pump-0", ts, "pump"), "profile": "pump"})
    batch = json.dumps([json.loads(pump), json.loads(stranger)])
    records = {
        PARTITIONS[0]: [
            Record("readings", 0, offset, b"k", value.encode(), ())
            for offset, value in enumerate([stranger, batch])
        ]
    }

    dead = [*pipeline.process(records).dead_letters, *pipeline.flush().dead_letters]

    assert sensor.rejections == [RejectReason.UNKNOWN_PROFILE] * 2
    assert [m.topic for m in dead] == ["dead", "dead"]
    assert [m.value for m in dead] == [stranger.encode(), batch.encode()]
    first, second = (dict(m.headers) for m in dead)
    assert first[DLQ + "reason"] == b"unknown_profile"
    assert first[DLQ + "exception.message"] == (
        b"compressor-0: no profile for it (topic readings, profile field 'compressor')"
    )
    assert (first[DLQ + "topic"], first[DLQ + "partition"], first[DLQ + "offset"]) == (
        b"readings",
        b"0",
        b"0",
    )
    assert DLQ + "batch.index" not in first
    # In a batch only the stranger is rejected: the pump's reading is admitted.
    assert second[DLQ + "batch.index"] == b"1" and second[DLQ + "rejected.count"] == b"1"
    assert [r["reason"] for r in json.loads(second[DLQ + "rejections"])] == ["unknown_profile"]
    assert "pump-0" in pipeline.lane("pump").registry
    assert all("compressor-0" not in lane.registry for lane in pipeline.lanes)


@pytest.mark.parametrize("columnar", [True, False])
def test_a_device_claiming_another_profile_is_rejected_and_keeps_its_windows(
    mixed_data: MixedData, columnar: bool
) -> None:
    config = _config(mixed_data)
    sensor = RecordingSensor()
    pipeline = Pipeline(config, _models(mixed_data, config), sensor, columnar=columnar)
    table = interleave(mixed_data.stream.readings)
    messages = encode_messages(table)
    # pump-0, tracked as a pump since the stream's start, sends fan readings now and then.
    ts = table["ts"].to_numpy()
    claims = [len(messages) // 5, len(messages) // 2, 4 * len(messages) // 5]
    for at in reversed(claims):
        value = {**_reading("pump-0", float(ts[at]) + 0.5, "fan"), "profile": "fan"}
        messages.insert(at, (b"pump-0", json.dumps(value).encode()))

    outputs = _run(pipeline, _polls(consumer_records(messages)))

    dead = [m for out in outputs for m in out.dead_letters]
    assert sensor.rejections == [RejectReason.PROFILE_CONFLICT] * len(claims)
    assert [dict(m.headers)[DLQ + "reason"] for m in dead] == [b"profile_conflict"] * len(claims)
    assert dict(dead[0].headers)[DLQ + "exception.message"] == (
        b"pump-0: tracked as profile pump, reading is for fan"
    )
    assert "pump-0" not in pipeline.lane("fan").registry
    alerts = _alerts(outputs)
    for profile in MIXED_PROFILES:
        expected, windows = _offline(mixed_data, config, profile)
        assert streamed_transitions(_of(alerts, profile)) == expected
        assert sensor.profiles[profile].windows == windows


@pytest.mark.parametrize("columnar", [True, False])
def test_a_new_device_belongs_to_the_profile_of_its_first_reading(
    mixed_data: MixedData, columnar: bool
) -> None:
    """Within one poll too: the claim follows reading order, not the order lanes are served."""
    config = _config(mixed_data)
    sensor = RecordingSensor()
    pipeline = Pipeline(config, _models(mixed_data, config), sensor, columnar=columnar)
    ts = 1_700_000_000.0
    readings = [
        ("pump-9", _reading("pump-9", ts, "pump") | {"profile": "pump"}),
        ("new-1", _reading("new-1", ts, "fan") | {"profile": "fan"}),
        ("new-1", _reading("new-1", ts + 1, "pump") | {"profile": "pump"}),
        ("new-1", _reading("new-1", ts + 2, "fan") | {"profile": "fan"}),
    ]
    tp = Partition("readings", 0)
    records = [
        Record(tp.topic, 0, i, k.encode(), json.dumps(v).encode(), ())
        for i, (k, v) in enumerate(readings)
    ]
    pipeline.process({tp: records})
    assert sensor.rejections == [RejectReason.PROFILE_CONFLICT]
    assert "new-1" in pipeline.lane("fan").registry
    assert "new-1" not in pipeline.lane("pump").registry
    assert "pump-9" in pipeline.lane("pump").registry


def test_metrics_of_a_profiles_config_carry_only_configured_profiles(
    mixed_data: MixedData,
) -> None:
    config = _config(mixed_data)
    metrics = DetectorMetrics(profiles=list(MIXED_PROFILES))
    pipeline = Pipeline(config, _models(mixed_data, config), MetricsSensor(metrics))
    table = interleave(mixed_data.stream.readings).head(2000)
    _run(pipeline, _polls(consumer_records(encode_messages(table))))
    labelled = {
        sample.labels["profile"]
        for family in metrics.registry.collect()
        for sample in family.samples
        if "profile" in sample.labels
    }
    assert labelled == set(MIXED_PROFILES)


def test_routing_by_device_glob_with_a_default_alerts_as_routing_by_the_reading_field(
    mixed_data: MixedData,
) -> None:
    by_field = _config(mixed_data)
    by_device = _config(
        mixed_data, [{"devices": ["pump-*"], "profile": "pump"}], default_profile="fan"
    )
    polls = _stream(mixed_data.stream.readings)
    # Without the profile field: the device id alone decides.
    anonymous = _stream(mixed_data.stream.readings.drop(columns=PROFILE_COLUMN))
    assert b'"profile"' not in next(iter(anonymous[0].values()))[0].value

    expected = _alerts(_run(Pipeline(by_field, _models(mixed_data, by_field)), polls))
    sensor = RecordingSensor()
    routed = Pipeline(by_device, _models(mixed_data, by_device), sensor)
    alerts = _alerts(_run(routed, anonymous))

    assert sensor.rejections == []
    assert expected and _same(alerts) == _same(expected)
    assert {a["profile"] for a in alerts} == set(MIXED_PROFILES)


def _halved(data: MixedData, tmp_path: Path, profile: str, config: DetectorConfig) -> Model:
    """A copy of the profile's model with half its threshold: it alerts more."""
    source = data.models[profile].path
    return load_model(copy_version(tmp_path / profile, source, "halved", 0.5), config.scoring)


def test_installing_a_pump_model_mid_stream_changes_only_later_pump_alerts(
    mixed_data: MixedData, tmp_path: Path
) -> None:
    config = _config(mixed_data)
    polls = _stream(mixed_data.stream.readings)
    before, after = polls[: len(polls) // 2], polls[len(polls) // 2 :]
    baseline = _alerts(_run(Pipeline(config, _models(mixed_data, config)), polls))
    pipeline = Pipeline(config, _models(mixed_data, config))
    old = pipeline.lane("pump").model.version
    halved = _halved(mixed_data, tmp_path, "pump", config)

    outputs = [pipeline.process(poll) for poll in before]
    pipeline.install("pump", halved)
    outputs += _run(pipeline, after)

    alerts = _alerts(outputs)
    cut = _latest_ts(before, "pump")  # every pump window up to here was scored by the old model
    pump = _of(alerts, "pump")
    old_alerts = [_comparable(a) for a in pump if a["model_version"] == old]
    assert old_alerts == [_comparable(a) for a in _of(baseline, "pump") if a["window_end"] <= cut]
    new_alerts = [a for a in pump if a["model_version"] == halved.version]
    assert len(old_alerts) + len(new_alerts) == len(pump)
    assert all(a["window_end"] > cut for a in new_alerts)
    later_baseline = [a for a in _of(baseline, "pump") if a["window_end"] > cut]
    assert sum(a["state"] == "firing" for a in new_alerts) > sum(
        a["state"] == "firing" for a in later_baseline
    )
    assert pipeline.lane("pump").model is halved
    fan_expected, _ = _offline(mixed_data, config, "fan")
    assert streamed_transitions(_of(alerts, "fan")) == fan_expected
    assert [_comparable(a) for a in _of(alerts, "fan")] == [
        _comparable(a) for a in _of(baseline, "fan")
    ]


def test_a_shadow_candidate_is_counted_as_its_backtest_and_never_published(
    mixed_data: MixedData, tmp_path: Path
) -> None:
    config = _config(mixed_data)
    polls = _stream(mixed_data.stream.readings)
    published = _alerts(_run(Pipeline(config, _models(mixed_data, config)), polls))
    candidate = _halved(mixed_data, tmp_path, "pump", config)
    sensor = RecordingSensor()
    pipeline = Pipeline(config, _models(mixed_data, config), sensor)
    pipeline.shadow("pump", candidate)

    alerts = _alerts(_run(pipeline, polls))

    assert published and _same(alerts) == _same(published)
    pump, fan = sensor.profiles["pump"], sensor.profiles["fan"]
    offline, windows = _offline(mixed_data, config, "pump", candidate)
    assert pump.shadow_count("candidate", "firing") == _states(offline).count("firing")
    assert pump.shadow_count("candidate", "resolved") == _states(offline).count("resolved")
    states = [a["state"] for a in _of(alerts, "pump")]
    assert pump.shadow_count("candidate", "firing") > states.count("firing")  # it alerts more
    assert pump.shadow_count("current", "firing") == states.count("firing")
    assert pump.shadow_count("current", "resolved") == states.count("resolved")
    assert pump.shadow_windows == pump.windows == windows
    assert pump.shadows == [(pipeline.lane("pump").model.version, candidate.version)]
    assert (fan.shadows, fan.shadow_alerts, fan.shadow_windows) == ([], [], 0)


def test_stopping_the_shadow_stops_counting_the_candidate(
    mixed_data: MixedData, tmp_path: Path
) -> None:
    config = _config(mixed_data)
    polls = _stream(mixed_data.stream.readings)
    before, after = polls[: len(polls) // 2], polls[len(polls) // 2 :]
    candidate = _halved(mixed_data, tmp_path, "pump", config)
    sensor = RecordingSensor()
    pipeline = Pipeline(config, _models(mixed_data, config), sensor)
    pipeline.shadow("pump", candidate)
    for poll in before:
        pipeline.process(poll)

    pipeline.shadow("pump", None)  # the windows ingested so far are scored by both first
    pump = sensor.profiles["pump"]
    counted, shadowed = list(pump.shadow_alerts), pump.shadow_windows
    _run(pipeline, after)

    cut = _latest_ts(before, "pump")
    offline, _ = _offline(mixed_data, config, "pump", candidate)
    counted_candidate = [state for model, state in counted if model == "candidate"]
    assert sorted(counted_candidate) == sorted(_states(offline, lambda end: end <= cut))
    assert _states(offline, lambda end: end > cut), "the candidate would have alerted later"
    assert pump.shadow_alerts == counted and pump.shadow_windows == shadowed
    assert pump.windows > shadowed
    assert pipeline.lane("pump").candidate is None
    assert pump.shadows[-1] == (pipeline.lane("pump").model.version, None)


@pytest.fixture(scope="module")
def normal_fleet() -> tuple[pd.DataFrame, pd.DataFrame]:
    """mixed_data's devices without anomalies: (their training period, their continuation)."""
    fleet = generate_mixed_fleet(2, NORMAL_STEPS + STREAM_STEPS, profiles=MIXED_PROFILES, seed=11)
    train, continuation = split_at(fleet, NORMAL_STEPS)
    return train.readings, continuation.readings


def _validation_period(
    data: MixedData, config: DetectorConfig, training: pd.DataFrame
) -> pd.DataFrame:
    """The training period's last rows, those whose windows gave the models' reference scores."""
    steps = set()
    for profile in MIXED_PROFILES:
        meta = load_model(data.registries[profile], config.scoring).artifact.metadata
        reference = meta.score_distribution
        assert reference is not None
        devices = training.loc[training[PROFILE_COLUMN] == profile, "device_id"].nunique()
        steps.add(reference.windows // devices + meta.window_length - 1)
    (count,) = steps
    start = float(training["ts"].max()) - count + 1
    return training[training["ts"] >= start].reset_index(drop=True)


def _crept(table: pd.DataFrame, profile: str, sensor: str, sigmas: float) -> pd.DataFrame:
    """``table`` with ``sensor`` of ``profile``'s devices creeping up to ``sigmas`` normal stds."""
    crept = table.copy()
    rows = (crept[PROFILE_COLUMN] == profile).to_numpy()
    ts = crept["ts"]
    progress = ((ts - ts.min()) / (ts.max() - ts.min())).to_numpy()
    kind = PROFILES[profile]
    scale = kind.scale[kind.sensors.index(sensor)]
    crept.loc[rows, sensor] += sigmas * scale * progress[rows]
    return crept


def _drift_run(
    config: DetectorConfig, data: MixedData, table: pd.DataFrame
) -> tuple[Pipeline, list[dict], list[tuple[int, float]]]:
    """Stream ``table``; also returns, after each poll, the pump's drift count and score."""
    pipeline = Pipeline(config, _models(data, config))
    alerts, seen = [], []
    for poll in _stream(table):
        alerts += _alerts([pipeline.process(poll)])
        lane = pipeline.lane("pump")
        assert lane.drift is not None
        seen.append((len(lane.drift), lane.drift_score()))
    alerts += _alerts([pipeline.flush()])
    return pipeline, alerts, seen


def test_drift_is_unknown_until_min_windows_then_small_on_normal_data_and_high_on_a_creep(
    mixed_data: MixedData, normal_fleet: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    pump_model = load_model(mixed_data.registries["pump"], _config(mixed_data).scoring)
    reference = pump_model.artifact.metadata.score_distribution
    assert reference is not None
    # The monitor holds as many scores as the reference has; max_wait_ms 0 scores every poll.
    config = _config(
        mixed_data,
        drift={"windows": reference.windows, "min_windows": 300},
        scoring={"max_wait_ms": 0},
    )
    normal = _validation_period(mixed_data, config, normal_fleet[0])

    pipeline, alerts, seen = _drift_run(config, mixed_data, normal)

    assert any(count < 300 for count, _ in seen) and any(count >= 300 for count, _ in seen)
    for count, score in seen:
        assert math.isnan(score) == (count < 300)
    assert alerts == []
    calm = {p: pipeline.lane(p).drift_score() for p in MIXED_PROFILES}
    assert all(score < 0.1 for score in calm.values()), calm

    # The pumps' flow rate creeps up by a quarter of its normal spread: no alert, but drift.
    crept = _crept(normal, "pump", "flow_rate", 0.25)
    pipeline, alerts, _ = _drift_run(config, mixed_data, crept)

    assert alerts == []
    assert len(pipeline.lane("pump").drift) == reference.windows  # no window left out as firing
    assert pipeline.lane("pump").drift_score() > 0.25
    assert pipeline.lane("fan").drift_score() == calm["fan"]
