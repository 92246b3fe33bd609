"""``detector evaluate`` as the daemon's twin, and the retrain loop it replays.

The backtest (:class:`detector.evaluate.Backtest`) drives the daemon's own pipeline over the
fleet in time order: on the real broker the daemon publishes exactly the alerts it computes, also
across a hot reload. Its retrain loop fits refits with the trainer on rows it has seen, never
one it has not, and swaps them in as a hot reload would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from detector.config import (
    DetectorConfig,
    ExtremesConfig,
    ModelConfig,
    RetrainConfig,
    load_config,
)
from detector.core.artifact import METADATA_FILE, Artifact, load_artifact, set_current
from detector.evaluate import Backtest, Refit
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    ROOT,
    DemoData,
    Topics,
    committed_total,
    copy_version,
    produce,
    read_topic,
    wait_until,
)


def _config(**retrain: float | bool | str) -> DetectorConfig:
    """configs/detector.yaml (as the daemons in these tests use) with a retrain schedule."""
    config = load_config(ROOT / "configs" / "detector.yaml")
    return config.model_copy(update={"retrain": RetrainConfig.model_validate(retrain)})


def _alert_keys(alerts: list[dict]) -> set[tuple]:
    """What the daemon and the backtest must agree on, per alert (``detected_at`` aside)."""
    fields = ("alert_id", "device_id", "window_start", "window_end", "state", "model_version")
    return {tuple(alert[name] for name in fields) for alert in alerts}


@pytest.mark.integration
def test_the_daemon_publishes_the_backtests_alerts_across_a_hot_reload(
    tmp_path: Path, topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    registry = tmp_path / "models"
    copy_version(registry, demo_data.model.path, "v1", 1.0)
    set_current(registry, "v1")
    readings = interleave(demo_data.anomalous.readings)
    steps = np.sort(readings["ts"].unique())
    swap_at = float(steps[len(steps) // 2])
    first, rest = readings[readings["ts"] < swap_at], readings[readings["ts"] >= swap_at]
    # The new version pages at a visibly lower level: the swap must show in the alerts.
    copy_version(registry, demo_data.model.path, "v2", 0.6)
    backtest = Backtest(load_artifact(registry / "v1"), _config()).run(
        readings, swaps=[(swap_at, load_artifact(registry / "v2"))]
    )
    expected = _alert_keys([alert.model_dump() for alert in backtest.alerts])
    versions = {key[-1] for key in expected}
    assert versions == {"v1", "v2"}, "both models raise alerts in this stream"
    assert [(swap.at, swap.version) for swap in backtest.swaps] == [(swap_at, "v2")]

    daemon = start_daemon(
        DETECTOR_MODEL__PATH=str(registry), DETECTOR_MODEL__RELOAD_INTERVAL_S="0.2"
    )
    produce(topics.bootstrap, topics.readings, encode_messages(first))
    # Committed means scored and published: every window of the first part is v1's.
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == len(first),
        60,
        "first part committed",
    )
    set_current(registry, "v2")
    wait_until(
        lambda: daemon.metric('detector_model_reloads_total{result="success"}') == 1, 30, "swap"
    )
    produce(topics.bootstrap, topics.readings, encode_messages(rest))
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == len(readings),
        60,
        "everything committed",
    )
    streamed = read_topic(topics.bootstrap, topics.alerts)
    assert _alert_keys(streamed) == expected
    # Same windows, same model, same level: the scores agree as well.
    by_id = {alert.alert_id: alert for alert in backtest.alerts}
    for alert in streamed:
        twin = by_id[alert["alert_id"]]
        assert alert["score"] == pytest.approx(twin.score, rel=1e-5)
        assert alert["threshold"] == pytest.approx(twin.threshold, rel=1e-5)


def test_a_swapped_model_judges_every_window_from_its_time_on(
    tmp_path: Path, demo_data: DemoData
) -> None:
    registry = tmp_path / "models"
    copy_version(registry, demo_data.model.path, "v1", 1.0)
    copy_version(registry, demo_data.model.path, "v2", 0.6)
    readings = interleave(demo_data.anomalous.readings)
    swap_at = float(readings["ts"].iloc[len(readings) // 2])
    v1, v2 = load_artifact(registry / "v1"), load_artifact(registry / "v2")
    result = Backtest(v1, _config()).run(readings, swaps=[(swap_at, v2)])
    assert {a.model_version for a in result.alerts if a.window_end < swap_at} == {"v1"}
    assert {a.model_version for a in result.alerts if a.window_end >= swap_at} == {"v2"}
    frozen = Backtest(v1, _config()).run(readings)
    for swapped, unswapped in zip(result.devices, frozen.devices, strict=True):
        before = swapped.ts < swap_at
        # The same windows, scored alike; judged alike before the swap, by v2's level after.
        np.testing.assert_array_equal(swapped.scores, unswapped.scores)
        np.testing.assert_array_equal(swapped.thresholds[before], unswapped.thresholds[before])
        after = ~before & ~np.isnan(swapped.thresholds)
        assert (swapped.thresholds[after] < unswapped.thresholds[after]).all()


class _Recording:
    """A refitter that fits nothing and remembers what each refit was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, pd.DataFrame]] = []
        self.in_episodes: list[np.ndarray] = []

    def __call__(
        self, current: Artifact, rows: pd.DataFrame, in_episodes: np.ndarray, at: float
    ) -> tuple[Artifact | None, Refit]:
        self.calls.append((at, rows))
        self.in_episodes.append(in_episodes)
        return None, Refit(at, len(rows), 0, 0.0, False, None, False, "recorded only")


def test_a_refit_reads_only_rows_the_detector_has_already_seen(demo_data: DemoData) -> None:
    readings = interleave(demo_data.anomalous.readings)
    artifact = load_artifact(demo_data.model.path)
    span, every = 300.0, 200.0
    recording = _Recording()
    config = _config(every_s=every, span_s=span, min_new_rows=50)
    result = Backtest(artifact, config, refitter=recording).run(readings)
    assert len(recording.calls) >= 5
    ts = readings["ts"].to_numpy()
    previous = float(ts[0])
    for at, rows in recording.calls:
        assert at - previous >= every
        previous = at
        # Every row before ``at`` within the span, and nothing at or after it.
        seen = readings[(readings["ts"] < at) & (readings["ts"] >= at - span)]
        assert len(rows) == len(seen)
        assert rows["ts"].max() < at
        assert set(rows.columns) == {"ts", "device_id", *artifact.metadata.feature_names}
    assert [refit.at for refit in result.refits] == [at for at, _ in recording.calls]


def test_a_refit_is_told_which_rows_lie_inside_the_detectors_alert_episodes(
    demo_data: DemoData,
) -> None:
    readings = interleave(demo_data.anomalous.readings)
    artifact = load_artifact(demo_data.model.path)
    recording = _Recording()
    config = _config(every_s=float(readings["ts"].iloc[-1] - readings["ts"].iloc[0]) - 1)
    result = Backtest(artifact, config, refitter=recording).run(readings)
    ((at, rows),), (fired,) = recording.calls, recording.in_episodes
    expected = np.zeros(len(rows), dtype=bool)
    for device in result.devices:
        # From each firing alert's window start to the next resolved alert's window end, of the
        # alerts published before the refit.
        alerts = sorted((a for a in device.alerts if a.window_end < at), key=lambda a: a.window_end)
        mine = (rows["device_id"] == device.device_id).to_numpy()
        stamps = rows["ts"].to_numpy()
        for i, alert in enumerate(alerts):
            if alert.state != "firing":
                continue
            closing = next((a for a in alerts[i + 1 :] if a.state == "resolved"), None)
            end = np.inf if closing is None else closing.window_end
            expected |= mine & (stamps >= alert.window_start) & (stamps <= end)
    assert fired.sum() > 0
    np.testing.assert_array_equal(fired, expected)


def test_min_new_rows_holds_a_refit_back_and_never_splits_a_time(demo_data: DemoData) -> None:
    readings = interleave(demo_data.anomalous.readings)
    recording = _Recording()
    # One row past a third: the three devices report at the same times, so the refit waits for
    # the other two rows of that time.
    third = len(readings) // 3 + 1
    config = _config(every_s=1.0, span_s=1e9, min_new_rows=third)
    Backtest(load_artifact(demo_data.model.path), config, refitter=recording).run(readings)
    assert [len(rows) for _, rows in recording.calls] == [third + 2, 2 * third + 4]
    for at, rows in recording.calls:
        assert rows["ts"].max() < at
        assert len(rows) == int((readings["ts"] < at).sum())


def test_a_refit_the_trainer_refuses_is_reported_and_the_backtest_goes_on(
    tmp_path: Path, demo_data: DemoData
) -> None:
    readings = interleave(demo_data.anomalous.readings)
    # Five seconds of rows hold no training window: the trainer refuses each refit.
    config = _config(every_s=200.0, span_s=5.0, min_new_rows=10)
    result = Backtest(
        load_artifact(demo_data.model.path), config, registry=tmp_path / "refits"
    ).run(readings)
    assert len(result.refits) >= 3
    for refit in result.refits:
        assert refit.version is None and not refit.promoted
        assert "not enough rows" in refit.detail
    assert result.swaps == [] and result.alerts
    assert sum(len(d.ts) for d in result.devices) == len(readings)


@pytest.fixture(scope="module")
def drifting(demo_data: DemoData) -> pd.DataFrame:
    """The normal stream, whose last 60 % sit at a new level: a normal that moved on."""
    readings = interleave(demo_data.normal.readings).copy()
    sensors = load_artifact(demo_data.model.path).metadata.feature_names
    moved = readings["ts"] >= readings["ts"].quantile(0.4)
    readings.loc[moved, sensors] = readings.loc[moved, sensors] * 1.4 + 0.5
    return readings


def test_scheduled_refits_learn_the_new_normal_and_swap_in(
    tmp_path: Path, demo_data: DemoData, drifting: pd.DataFrame
) -> None:
    artifact = load_artifact(demo_data.model.path)
    assert artifact.metadata.training_config is not None
    frozen = Backtest(artifact, _config()).run(drifting)
    every = float(drifting["ts"].quantile(0.55) - drifting["ts"].iloc[0])
    # Nothing excluded: the moved normal has fired, and is what the refit must learn.
    config = _config(every_s=every, span_s=1e9, min_new_rows=100, exclude="none")
    retrained = Backtest(artifact, config, registry=tmp_path / "refits").run(drifting)
    assert len(retrained.refits) == 1
    refit = retrained.refits[0]
    assert refit.version is not None and refit.seconds > 0 and not refit.warm
    assert refit.promoted, refit.detail
    assert [swap.version for swap in retrained.swaps] == [refit.version]
    assert (tmp_path / "refits" / refit.version / METADATA_FILE).is_file()
    after = [a for a in retrained.alerts if a.window_end >= refit.at]
    assert {a.model_version for a in after} <= {refit.version}
    # The frozen model pages on the moved normal for the rest of the stream; the refit stops it.
    frozen_firing = sum(int(d.firing[d.ts >= refit.at].sum()) for d in frozen.devices)
    refit_firing = sum(int(d.firing[d.ts >= refit.at].sum()) for d in retrained.devices)
    assert refit_firing < frozen_firing / 2, (refit_firing, frozen_firing)


def test_a_warm_start_fine_tunes_the_current_weights(
    tmp_path: Path, demo_data: DemoData, drifting: pd.DataFrame
) -> None:
    artifact = load_artifact(demo_data.model.path)
    every = float(drifting["ts"].quantile(0.55) - drifting["ts"].iloc[0])
    config = _config(every_s=every, span_s=1e9, min_new_rows=100, warm_start=True, exclude="none")
    result = Backtest(artifact, config, registry=tmp_path / "refits").run(drifting)
    (refit,) = result.refits
    assert refit.warm and refit.version is not None
    refitted = load_artifact(tmp_path / "refits" / refit.version)
    assert refitted.metadata.model == artifact.metadata.model
    fresh_config = config.model_copy(
        update={"retrain": config.retrain.model_copy(update={"warm_start": False})}
    )
    fresh = Backtest(artifact, fresh_config, registry=tmp_path / "fresh").run(drifting)
    fresh_model = load_artifact(tmp_path / "fresh" / fresh.refits[0].version)
    # Fine-tuned from the current weights: they moved, and far less than a fresh fit's.
    assert _distance(refitted, artifact) > 0
    assert _distance(refitted, artifact) < _distance(fresh_model, artifact) / 2


def _distance(a: Artifact, b: Artifact) -> float:
    """The Euclidean distance between two models' weights."""
    mine, theirs = a.model.state_dict(), b.model.state_dict()
    return float(sum(((mine[k] - theirs[k]) ** 2).sum() for k in mine) ** 0.5)


def _evaluate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "detector", "evaluate", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_evaluate_applies_the_configs_schedule_and_no_retrain_freezes_it(
    tmp_path: Path, demo_data: DemoData, drifting: pd.DataFrame
) -> None:
    data = tmp_path / "stream.csv"
    drifting.to_csv(data, index=False)
    every = float(drifting["ts"].quantile(0.55) - drifting["ts"].iloc[0])
    config = tmp_path / "detector.yaml"
    values = yaml.safe_load((ROOT / "configs" / "detector.yaml").read_text())
    values["retrain"] = {"every_s": every, "span_s": 1e9, "min_new_rows": 100}
    config.write_text(yaml.safe_dump(values))
    model = str(demo_data.model.path)
    out = tmp_path / "retrained"
    run = _evaluate_cli(str(data), "--model", model, "--config", str(config), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "refits: 1 every" in run.stdout
    (refit,) = [json.loads(line) for line in (out / "refits.jsonl").read_text().splitlines()]
    assert refit["rows"] > 0 and refit["version"]
    assert (out / "models" / refit["version"] / METADATA_FILE).is_file()

    frozen_out = tmp_path / "frozen"
    frozen = _evaluate_cli(
        str(data), "--model", model, "--config", str(config), "--out", str(frozen_out),
        "--no-retrain",
    )  # fmt: skip
    assert frozen.returncode == 0, frozen.stderr
    assert "refits" not in frozen.stdout and not (frozen_out / "refits.jsonl").exists()


def test_a_model_that_does_not_record_its_training_cannot_be_refitted(
    tmp_path: Path, demo_data: DemoData, drifting: pd.DataFrame
) -> None:
    old = copy_version(tmp_path / "models", demo_data.model.path, "old", 1.0)
    metadata = json.loads((old / METADATA_FILE).read_text())
    del metadata["training_config"]
    (old / METADATA_FILE).write_text(json.dumps(metadata))
    data = tmp_path / "stream.csv"
    drifting.to_csv(data, index=False)
    config = tmp_path / "detector.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(old)}, "retrain": {"every_s": 60}}))
    run = _evaluate_cli(str(data), "--config", str(config), "--out", str(tmp_path / "out"))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not record how it was trained" in lines[0]
    assert "--no-retrain" in lines[0]


def test_flagged_exclusion_trains_on_fewer_rows_than_it_was_given(
    tmp_path: Path, demo_data: DemoData
) -> None:
    readings = interleave(demo_data.anomalous.readings)
    every = float(readings["ts"].iloc[-1] - readings["ts"].iloc[0]) - 1
    config = _config(every_s=every, span_s=1e9, min_new_rows=100, exclude="flagged")
    result = Backtest(
        load_artifact(demo_data.model.path), config, registry=tmp_path / "refits"
    ).run(readings)
    (refit,) = result.refits
    # The injected anomalies are over the model's threshold and left out of the training rows.
    assert refit.version is not None
    assert 0 < refit.rows - refit.trained_rows < 0.2 * refit.rows


def test_extremes_from_the_config_judge_the_windows_readings_in_the_backtest(
    demo_data: DemoData,
) -> None:
    readings = interleave(demo_data.normal.readings).reset_index(drop=True)
    sensor = load_artifact(demo_data.model.path).metadata.feature_names[0]
    device = readings["device_id"].iloc[0]
    mine = readings.index[readings["device_id"] == device]
    row = mine[len(mine) // 2]
    span = readings.loc[mine, sensor].max() - readings.loc[mine, sensor].min()
    readings.loc[row, sensor] = readings.loc[mine, sensor].max() + 0.5 * span
    config = _config()
    config = config.model_copy(
        update={"alerts": config.alerts.model_copy(update={"extremes": ExtremesConfig(windows=50)})}
    )
    result = Backtest(load_artifact(demo_data.model.path), config).run(readings)
    (evaluation,) = [d for d in result.devices if d.device_id == device]
    at = int(np.searchsorted(evaluation.ts, readings.loc[row, "ts"]))
    assert evaluation.thresholds[at] == evaluation.scores[at] / 2
    assert evaluation.firing[at]


def test_retrain_is_off_by_default() -> None:
    config = DetectorConfig(model=ModelConfig(path=Path("m")))
    assert not config.retrain.enabled
    assert not load_config(ROOT / "configs" / "detector.yaml").retrain.enabled
