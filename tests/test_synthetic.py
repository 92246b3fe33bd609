"""Tests for the synthetic fleet generator used by demos and other tests."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.cli import main
from detector_devtools.synthetic import (
    ANOMALY_KINDS,
    PROFILE_COLUMN,
    PROFILES,
    SENSORS,
    AnomalyEpisode,
    Fleet,
    generate_fleet,
    generate_mixed_fleet,
    split_at,
    write_fleet,
)

N_DEVICES = 4
N_STEPS = 2000
PERIOD_S = 2.0
START_TS = 1_700_000_000.0
MIN_GAP_STEPS = 150


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    # 4 devices x 2 episodes: kinds (i + j) % 4 cover all four kinds.
    return generate_fleet(
        N_DEVICES, N_STEPS, seed=7, anomalies_per_device=2, period_s=PERIOD_S, start_ts=START_TS
    )


def _episode_mask(fleet: Fleet, ep: AnomalyEpisode) -> pd.Series:
    r = fleet.readings
    return (r["device_id"] == ep.device_id) & (r["ts"] >= ep.start_ts) & (r["ts"] <= ep.end_ts)


def _normal_mask(fleet: Fleet, device_id: str) -> pd.Series:
    return (fleet.readings["device_id"] == device_id) & (fleet.labels["anomaly"] == 0)


def _steps(ep: AnomalyEpisode, period_s: float = PERIOD_S) -> int:
    return round((ep.end_ts - ep.start_ts) / period_s) + 1


def _check_episode_layout(fleet: Fleet, n_steps: int, period_s: float, start_ts: float) -> None:
    by_device: dict[str, list[AnomalyEpisode]] = {}
    for ep in fleet.episodes:
        by_device.setdefault(ep.device_id, []).append(ep)
    warmup_end = start_ts + 0.25 * n_steps * period_s
    for eps in by_device.values():
        eps.sort(key=lambda e: e.start_ts)
        for ep in eps:
            assert ep.start_ts >= warmup_end
            assert ep.end_ts <= start_ts + (n_steps - 1) * period_s
            lo, hi = (5, 10) if ep.kind == "spike" else (30, 60)
            assert lo <= _steps(ep, period_s) <= hi
        for prev, nxt in itertools.pairwise(eps):
            normal_between = round((nxt.start_ts - prev.end_ts) / period_s) - 1
            assert normal_between >= MIN_GAP_STEPS


def _check_labels_match(fleet: Fleet, period_s: float) -> None:
    labels = fleet.labels
    expected = pd.Series(0, index=labels.index)
    expected_kind = pd.Series("", index=labels.index, dtype=object)
    for ep in fleet.episodes:
        mask = _episode_mask(fleet, ep)
        assert mask.sum() == _steps(ep, period_s)
        expected[mask] = 1
        expected_kind[mask] = ep.kind
    assert labels["anomaly"].tolist() == expected.tolist()
    assert labels["kind"].tolist() == expected_kind.tolist()
    assert labels["anomaly"].sum() == sum(_steps(ep, period_s) for ep in fleet.episodes)


def test_same_seed_gives_identical_fleet() -> None:
    a = generate_fleet(3, 800, seed=11, anomalies_per_device=1)
    b = generate_fleet(3, 800, seed=11, anomalies_per_device=1)
    pd.testing.assert_frame_equal(a.readings, b.readings, check_exact=True)
    pd.testing.assert_frame_equal(a.labels, b.labels, check_exact=True)
    assert a.episodes == b.episodes


def test_different_seed_gives_different_fleet() -> None:
    a = generate_fleet(3, 800, seed=11, anomalies_per_device=1)
    b = generate_fleet(3, 800, seed=12, anomalies_per_device=1)
    assert not np.allclose(a.readings[list(SENSORS)], b.readings[list(SENSORS)])
    assert a.episodes != b.episodes


def test_shape_columns_and_order(fleet: Fleet) -> None:
    r, lab = fleet.readings, fleet.labels
    assert list(r.columns) == ["ts", "device_id", *SENSORS]
    assert list(lab.columns) == ["ts", "device_id", "anomaly", "kind"]
    assert len(r) == len(lab) == N_DEVICES * N_STEPS
    for col in ["ts", *SENSORS]:
        assert pd.api.types.is_float_dtype(r[col]), col
    assert pd.api.types.is_integer_dtype(lab["anomaly"])

    ids = [f"dev-{i:03d}" for i in range(N_DEVICES)]
    assert sorted(r["device_id"].unique()) == ids
    # Streaming order: every device at ts0, then every device at ts1, ...
    assert r.equals(r.sort_values(["ts", "device_id"], kind="stable"))
    assert r["device_id"].tolist() == ids * N_STEPS
    ts = np.sort(r["ts"].unique())
    np.testing.assert_allclose(ts, START_TS + PERIOD_S * np.arange(N_STEPS))
    # Labels are row-aligned with readings.
    assert lab["ts"].tolist() == r["ts"].tolist()
    assert lab["device_id"].tolist() == r["device_id"].tolist()


def test_no_missing_or_infinite_values(fleet: Fleet) -> None:
    values = fleet.readings[list(SENSORS)].to_numpy()
    assert np.isfinite(values).all()
    assert not fleet.labels.isna().any().any()


def test_devices_are_similar_but_not_identical(fleet: Fleet) -> None:
    means = fleet.readings.groupby("device_id")[list(SENSORS)].mean()
    nominal = pd.Series(
        [60.0, 3.0, 0.5, 12.0, 230.0, 30.0, 1500.0, 40.0], index=list(SENSORS), dtype=float
    )
    rel = (means - nominal).abs() / nominal
    assert (rel < 0.25).all().all()
    assert (means.std() > 0).all()


def test_no_anomalies_by_default() -> None:
    f = generate_fleet(3, 600, seed=1)
    assert f.episodes == []
    assert (f.labels["anomaly"] == 0).all()
    assert (f.labels["kind"] == "").all()


def test_every_kind_appears_with_cycling_assignment(fleet: Fleet) -> None:
    assert {ep.kind for ep in fleet.episodes} == set(ANOMALY_KINDS)
    assert len(fleet.episodes) == N_DEVICES * 2
    for i in range(N_DEVICES):
        eps = sorted(
            (ep for ep in fleet.episodes if ep.device_id == f"dev-{i:03d}"),
            key=lambda e: e.start_ts,
        )
        assert [ep.kind for ep in eps] == [ANOMALY_KINDS[(i + j) % 4] for j in range(2)]
    for ep in fleet.episodes:
        assert set(ep.sensors) <= set(SENSORS)
        assert len(set(ep.sensors)) == len(ep.sensors)
        if ep.kind == "stuck":
            assert len(ep.sensors) == 1
        elif ep.kind == "correlation_break":
            assert len(ep.sensors) == 2
        else:
            assert 1 <= len(ep.sensors) <= 2


def test_episode_layout(fleet: Fleet) -> None:
    _check_episode_layout(fleet, N_STEPS, PERIOD_S, START_TS)


def test_labels_match_episodes_exactly(fleet: Fleet) -> None:
    _check_labels_match(fleet, PERIOD_S)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n_devices=st.integers(1, 5),
    per_device=st.integers(1, 3),
)
def test_layout_and_labels_hold_for_any_seed(seed: int, n_devices: int, per_device: int) -> None:
    f = generate_fleet(n_devices, 1200, seed=seed, anomalies_per_device=per_device)
    assert len(f.episodes) == n_devices * per_device
    _check_episode_layout(f, 1200, 1.0, 1_700_000_000.0)
    _check_labels_match(f, 1.0)


def test_too_many_anomalies_for_series_raises() -> None:
    with pytest.raises(ValueError, match="too short"):
        generate_fleet(2, 400, seed=0, anomalies_per_device=3)


def _z(fleet: Fleet, ep: AnomalyEpisode, sensor: str) -> pd.Series:
    normal = fleet.readings.loc[_normal_mask(fleet, ep.device_id), sensor]
    return (fleet.readings.loc[_episode_mask(fleet, ep), sensor] - normal.mean()) / normal.std()


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_spike_and_drift_leave_the_normal_envelope(seed: int) -> None:
    f = generate_fleet(N_DEVICES, N_STEPS, seed=seed, anomalies_per_device=2)
    checked = 0
    for ep in f.episodes:
        if ep.kind in ("spike", "drift"):
            for sensor in ep.sensors:
                assert _z(f, ep, sensor).abs().max() > 4.0, (ep, sensor)
                checked += 1
    assert checked >= 2


def _unexplained(fleet: Fleet, ep: AnomalyEpisode, sensor: str) -> np.ndarray:
    """Part of ``sensor`` inside the episode that the undisturbed sensors do not explain.

    A linear fit on the device's normal rows removes the shared cycle/load movement, so what is
    left is the injected disturbance; returned in units of the sensor's normal std.
    """
    others = [s for s in SENSORS if s not in ep.sensors]
    normal = fleet.readings.loc[_normal_mask(fleet, ep.device_id)]
    inside = fleet.readings.loc[_episode_mask(fleet, ep)]

    def design(frame: pd.DataFrame) -> np.ndarray:
        return np.column_stack([frame[others].to_numpy(), np.ones(len(frame))])

    coef, *_ = np.linalg.lstsq(design(normal), normal[sensor].to_numpy(), rcond=None)
    return (inside[sensor].to_numpy() - design(inside) @ coef) / normal[sensor].std()


@pytest.mark.parametrize("seed", [0, 7])
def test_drift_ramps_up_over_the_episode(seed: int) -> None:
    f = generate_fleet(N_DEVICES, N_STEPS, seed=seed, anomalies_per_device=2)
    drifts = [ep for ep in f.episodes if ep.kind == "drift"]
    assert drifts
    for ep in drifts:
        for sensor in ep.sensors:
            u = _unexplained(f, ep, sensor)
            k = max(3, len(u) // 5)
            # The deviation grows towards the end instead of appearing all at once.
            assert u[-k:].mean() - u[:k].mean() > 3.0, (ep, sensor)


def test_stuck_sensor_is_frozen_and_offset(fleet: Fleet) -> None:
    stuck = [ep for ep in fleet.episodes if ep.kind == "stuck"]
    assert stuck
    for ep in stuck:
        (sensor,) = ep.sensors
        values = fleet.readings.loc[_episode_mask(fleet, ep), sensor]
        assert values.nunique() == 1
        assert _z(fleet, ep, sensor).abs().min() > 2.5
        # Right before the episode the sensor is still alive.
        before = fleet.readings.loc[
            (fleet.readings["device_id"] == ep.device_id)
            & (fleet.readings["ts"] < ep.start_ts)
            & (fleet.readings["ts"] >= ep.start_ts - 20 * PERIOD_S),
            sensor,
        ]
        assert before.nunique() > 1


def test_correlation_break_flips_the_pair(fleet: Fleet) -> None:
    breaks = [ep for ep in fleet.episodes if ep.kind == "correlation_break"]
    assert breaks
    r = fleet.readings
    for ep in breaks:
        mirrored, partner = ep.sensors
        normal = r.loc[_normal_mask(fleet, ep.device_id)]
        assert normal[mirrored].corr(normal[partner]) > 0.5
        inside = r.loc[_episode_mask(fleet, ep)]
        assert inside[mirrored].corr(inside[partner]) < 0.0
        # Predicting the mirrored sensor from its partner, as a multivariate model implicitly
        # does, fails by far more than on normal data.
        slope, intercept = np.polyfit(normal[partner], normal[mirrored], 1)
        resid_normal = normal[mirrored] - (slope * normal[partner] + intercept)
        resid_inside = inside[mirrored] - (slope * inside[partner] + intercept)
        assert resid_inside.abs().mean() > 5.0 * resid_normal.std()


def test_sensors_are_correlated_on_normal_data(fleet: Fleet) -> None:
    for i in range(N_DEVICES):
        normal = fleet.readings.loc[_normal_mask(fleet, f"dev-{i:03d}")]
        assert abs(normal["current"].corr(normal["rpm"])) > 0.5
        assert abs(normal["flow_rate"].corr(normal["pressure"])) > 0.5


def test_write_fleet_round_trip(fleet: Fleet, tmp_path: Path) -> None:
    paths = write_fleet(fleet, tmp_path / "out", "demo")
    assert paths == {
        "readings": tmp_path / "out" / "demo.csv",
        "labels": tmp_path / "out" / "demo_labels.csv",
        "episodes": tmp_path / "out" / "demo_episodes.json",
    }
    readings = pd.read_csv(paths["readings"])
    labels = pd.read_csv(paths["labels"], keep_default_na=False)
    assert list(readings.columns) == list(fleet.readings.columns)
    assert readings["device_id"].tolist() == fleet.readings["device_id"].tolist()
    np.testing.assert_allclose(
        readings[["ts", *SENSORS]].to_numpy(),
        fleet.readings[["ts", *SENSORS]].to_numpy(),
        rtol=1e-12,
    )
    assert list(labels.columns) == list(fleet.labels.columns)
    assert labels["anomaly"].tolist() == fleet.labels["anomaly"].tolist()
    assert labels["kind"].tolist() == fleet.labels["kind"].tolist()
    np.testing.assert_allclose(labels["ts"], fleet.labels["ts"], rtol=1e-12)

    episodes = json.loads(paths["episodes"].read_text(encoding="utf-8"))
    assert episodes == [{**asdict(ep), "sensors": list(ep.sensors)} for ep in fleet.episodes]
    restored = [AnomalyEpisode(**{**e, "sensors": tuple(e["sensors"])}) for e in episodes]
    assert restored == fleet.episodes


def test_write_fleet_without_anomalies_writes_empty_episode_list(tmp_path: Path) -> None:
    paths = write_fleet(generate_fleet(2, 100, seed=3), tmp_path, "clean")
    assert json.loads(paths["episodes"].read_text(encoding="utf-8")) == []
    assert (pd.read_csv(paths["labels"])["anomaly"] == 0).all()


MIXED_STEPS = 1200


@pytest.fixture(scope="module")
def mixed() -> Fleet:
    return generate_mixed_fleet(
        2, MIXED_STEPS, profiles=("pump", "fan", "compressor"), seed=5, anomalies_per_device=2
    )


def test_mixed_fleet_is_wide_over_every_profiles_sensors(mixed: Fleet) -> None:
    r = mixed.readings
    union = list(
        dict.fromkeys(s for p in ("pump", "fan", "compressor") for s in PROFILES[p].sensors)
    )
    assert list(r.columns) == ["ts", "device_id", PROFILE_COLUMN, *union]
    assert PROFILES["fan"].sensors != PROFILES["pump"].sensors
    assert set(PROFILES["fan"].sensors) - set(SENSORS)  # a sensor pumps do not have
    ids = [f"{p}-{i}" for p in ("pump", "fan", "compressor") for i in range(2)]
    assert r["device_id"].tolist() == ids * MIXED_STEPS
    assert (r[PROFILE_COLUMN] == r["device_id"].str.split("-").str[0]).all()
    assert r.equals(r.sort_values("ts", kind="stable"))
    assert mixed.labels["device_id"].tolist() == r["device_id"].tolist()


def test_mixed_fleet_is_nan_exactly_where_a_profile_lacks_a_sensor(mixed: Fleet) -> None:
    r = mixed.readings
    for name, profile in PROFILES.items():
        rows = r[r[PROFILE_COLUMN] == name].drop(columns=["ts", "device_id", PROFILE_COLUMN])
        own = list(profile.sensors)
        assert np.isfinite(rows[own].to_numpy()).all(), name
        assert rows.drop(columns=own).isna().all().all(), name


def test_profiles_have_their_own_normals(mixed: Fleet) -> None:
    means = mixed.readings.groupby(PROFILE_COLUMN)[["temperature", "vibration", "current"]].mean()
    for sensor in means.columns:
        assert means[sensor].nunique() == 3, sensor
    for name, profile in PROFILES.items():
        nominal = pd.Series(profile.baseline, index=list(profile.sensors))
        rows = mixed.readings[mixed.readings[PROFILE_COLUMN] == name]
        assert ((rows[list(profile.sensors)].mean() - nominal).abs() / nominal < 0.25).all()


def test_mixed_fleet_has_episodes_on_every_profile(mixed: Fleet) -> None:
    for name, profile in PROFILES.items():
        eps = [e for e in mixed.episodes if e.device_id.startswith(f"{name}-")]
        # Device i's j-th episode is ANOMALY_KINDS[(i + j) % 4], counting i within the profile.
        for i in range(2):
            mine = sorted(
                (e for e in eps if e.device_id == f"{name}-{i}"), key=lambda e: e.start_ts
            )
            assert [e.kind for e in mine] == [ANOMALY_KINDS[(i + j) % 4] for j in range(2)]
        assert all(set(e.sensors) <= set(profile.sensors) for e in eps), name
    _check_episode_layout(mixed, MIXED_STEPS, 1.0, 1_700_000_000.0)
    _check_labels_match(mixed, 1.0)


def test_mixed_fleet_correlation_break_on_a_fan_flips_its_pair() -> None:
    f = generate_mixed_fleet(4, 2000, profiles=("fan",), seed=2, anomalies_per_device=2)
    breaks = [e for e in f.episodes if e.kind == "correlation_break"]
    assert breaks
    for ep in breaks:
        mirrored, partner = ep.sensors
        normal = f.readings.loc[_normal_mask(f, ep.device_id)]
        inside = f.readings.loc[_episode_mask(f, ep)]
        assert normal[mirrored].corr(normal[partner]) > 0.5
        assert inside[mirrored].corr(inside[partner]) < 0.0


def test_mixed_fleet_is_deterministic_by_seed() -> None:
    a = generate_mixed_fleet(2, 800, seed=3, anomalies_per_device=1)
    b = generate_mixed_fleet(2, 800, seed=3, anomalies_per_device=1)
    pd.testing.assert_frame_equal(a.readings, b.readings, check_exact=True)
    pd.testing.assert_frame_equal(a.labels, b.labels, check_exact=True)
    assert a.episodes == b.episodes
    c = generate_mixed_fleet(2, 800, seed=4, anomalies_per_device=1)
    assert not a.readings["current"].equals(c.readings["current"])


def test_a_profiles_devices_do_not_depend_on_the_other_profiles() -> None:
    alone = generate_mixed_fleet(2, 800, profiles=("fan",), seed=9, anomalies_per_device=1)
    mixed = generate_mixed_fleet(2, 800, profiles=("pump", "fan"), seed=9, anomalies_per_device=1)
    fans = mixed.readings[mixed.readings[PROFILE_COLUMN] == "fan"].reset_index(drop=True)
    sensors = list(PROFILES["fan"].sensors)
    pd.testing.assert_frame_equal(fans[sensors], alone.readings[sensors], check_exact=True)
    assert [e for e in mixed.episodes if e.device_id.startswith("fan-")] == alone.episodes


@pytest.mark.parametrize(
    "profiles", [("pump", "boiler"), ("fan", "fan"), ()], ids=["unknown", "repeated", "none"]
)
def test_mixed_fleet_refuses_bad_profiles(profiles: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="profiles"):
        generate_mixed_fleet(2, 400, profiles=profiles)


def test_mixed_fleet_splits_and_writes_with_nan_and_profiles_intact(tmp_path: Path) -> None:
    f = generate_mixed_fleet(2, 1600, seed=1, anomalies_per_device=1, quiet_steps=1000)
    normal, stream = split_at(f, 1000)
    assert not normal.episodes and len(stream.episodes) == 4
    assert len(normal.readings) == 4 * 1000
    paths = write_fleet(stream, tmp_path, "stream")
    back = pd.read_csv(paths["readings"])
    assert list(back.columns) == list(stream.readings.columns)
    assert back[PROFILE_COLUMN].tolist() == stream.readings[PROFILE_COLUMN].tolist()
    sensors = [c for c in back.columns if c not in ("ts", "device_id", PROFILE_COLUMN)]
    np.testing.assert_array_equal(back[sensors].isna(), stream.readings[sensors].isna())
    np.testing.assert_allclose(back[sensors], stream.readings[sensors], rtol=1e-12)


def test_synth_command_writes_a_mixed_fleet_only_when_asked(tmp_path: Path) -> None:
    sizes = ["--devices", "2", "--normal-steps", "600", "--stream-steps", "400"]
    assert main(["synth", "--out", str(tmp_path / "one"), *sizes]) == 0
    single = pd.read_csv(tmp_path / "one" / "stream.csv")
    assert list(single.columns) == ["ts", "device_id", *SENSORS]

    assert main(["synth", "--out", str(tmp_path / "mixed"), "--mixed", *sizes]) == 0
    normal = pd.read_csv(tmp_path / "mixed" / "normal.csv")
    stream = pd.read_csv(tmp_path / "mixed" / "stream.csv")
    episodes = json.loads((tmp_path / "mixed" / "stream_episodes.json").read_text())
    assert sorted(stream["device_id"].unique()) == ["fan-0", "fan-1", "pump-0", "pump-1"]
    assert set(normal[PROFILE_COLUMN]) == {"pump", "fan"}
    assert len(normal) == 4 * 600 and len(stream) == 4 * 400
    assert {e["device_id"].split("-")[0] for e in episodes} == {"pump", "fan"}


def test_synth_command_refuses_profiles_without_mixed_and_unknown_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", "--out", str(tmp_path), "--profiles", "fan"]) == 2
    assert "--profiles needs --mixed" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--mixed", "--profiles", "pump,boiler"]) == 2
    assert "boiler" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
