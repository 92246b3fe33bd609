"""Retraining from a Kafka topic over a time range, excluding flagged windows or alert episodes,
promoting on merit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import load_config
from detector.core.artifact import CURRENT_POINTER, load_artifact
from detector.core.episodes import Transition, episode_spans, rows_in_episodes
from detector.evaluate import evaluate_table
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import ROOT, DemoData, Topics, produce

pytestmark = pytest.mark.integration


def _trainer_config(tmp_path: Path, registry: Path) -> Path:
    config = tmp_path / "trainer.yaml"
    config.write_text(
        "data:\n  paths: [unused.csv]\n"
        "window: {length: 16, stride: 2}\n"
        "model: {hidden_size: 16, latent_size: 4}\n"
        "training: {epochs: 3, batch_size: 128, learning_rate: 0.005, patience: 2}\n"
        "threshold: {method: quantile, quantile: 0.999, margin: 2.0}\n"
        f"output: {{dir: {registry}}}\n"
    )
    return config


def _fit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "--config", str(config), "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_retrain_from_kafka_time_range_excluding_flagged_windows(
    tmp_path: Path, topics: Topics, demo_data: DemoData
) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    shutil.copytree(demo_data.model.path, registry / demo_data.model.version)
    (registry / CURRENT_POINTER).write_text(demo_data.model.version + "\n")
    readings = interleave(demo_data.anomalous.readings)
    produce(topics.bootstrap, topics.readings, encode_messages(readings))
    stamps = readings["ts"].drop_duplicates().sort_values().to_numpy()
    since, until = stamps[100], stamps[1100]
    in_range = int(((readings["ts"] >= since) & (readings["ts"] < until)).sum())
    config = _trainer_config(tmp_path, registry)

    from_kafka = [
        *("--from-kafka", topics.readings, "--since", str(since), "--until", str(until)),
        *("--bootstrap-servers", topics.bootstrap, "--exclude-flagged"),
    ]
    result = _fit(config, *from_kafka, "--promote", "never")
    assert result.returncode == 0, result.stderr
    assert "not promoted, current model kept" in result.stdout
    assert (registry / CURRENT_POINTER).read_text().strip() == demo_data.model.version
    new = sorted(p for p in registry.iterdir() if p.is_dir() and p.name != demo_data.model.version)
    assert len(new) == 1
    meta = load_artifact(new[0]).metadata
    # The injected anomalies are flagged by the current model and their windows left out.
    assert 0 < in_range - meta.training_data.rows < 0.2 * in_range
    assert meta.training_data.time_start >= since and meta.training_data.time_end < until
    assert meta.training_data.files == [f"kafka://{topics.readings}?since={since}&until={until}"]
    assert "current_model_holdout_flag_rate" in meta.validation
    assert meta.feature_names == load_artifact(demo_data.model.path).metadata.feature_names

    auto = _fit(config, *from_kafka, "--promote", "auto")
    assert auto.returncode == 0, auto.stderr
    current = (registry / CURRENT_POINTER).read_text().strip()
    newest = load_artifact(registry / current).metadata.validation
    if "now current" in auto.stdout:
        assert current != demo_data.model.version
        assert newest["holdout_flag_rate"] <= newest["current_model_holdout_flag_rate"]
    else:
        assert current == demo_data.model.version


def test_from_kafka_without_range_is_a_clear_error(tmp_path: Path) -> None:
    result = _fit(_trainer_config(tmp_path, tmp_path / "models"), "--from-kafka", "topic")
    assert result.returncode == 2
    assert "--since, --until and --bootstrap-servers" in result.stderr


def test_kafka_settings_come_from_a_detector_config_with_its_security(tmp_path: Path) -> None:
    from trainer.cli import _kafka_settings

    config = tmp_path / "detector.yaml"
    config.write_text(
        "kafka:\n  bootstrap_servers: [secure-1:9093]\n  security_protocol: SASL_SSL\n"
        "  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: trainer\n  sasl_password: pw-91f2\n"
        f"model: {{path: {tmp_path}}}\n"
    )
    kafka = _kafka_settings(config, None)
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_username == "trainer"
    assert kafka.sasl_password is not None and kafka.sasl_password.get_secret_value() == "pw-91f2"
    assert _kafka_settings(config, "other:9093").bootstrap_servers == ["other:9093"]
    assert _kafka_settings(config, "other:9093").sasl_mechanism == "SCRAM-SHA-512"


def test_retrain_from_kafka_with_a_detector_config_for_the_cluster(
    tmp_path: Path, topics: Topics, demo_data: DemoData
) -> None:
    registry = tmp_path / "models"
    readings = interleave(demo_data.normal.readings)
    produce(topics.bootstrap, topics.readings, encode_messages(readings))
    stamps = readings["ts"].drop_duplicates().sort_values().to_numpy()
    since, until = stamps[0], stamps[600]
    detector_config = tmp_path / "detector.yaml"
    detector_config.write_text(
        f"kafka: {{bootstrap_servers: ['{topics.bootstrap}']}}\nmodel: {{path: {registry}}}\n"
    )
    result = _fit(
        _trainer_config(tmp_path, registry),
        *("--from-kafka", topics.readings, "--since", str(since), "--until", str(until)),
        *("--kafka-config", str(detector_config)),
    )
    assert result.returncode == 0, result.stderr
    meta = load_artifact(registry).metadata
    assert meta.training_data.files == [f"kafka://{topics.readings}?since={since}&until={until}"]


def test_retrain_leaves_out_the_readings_inside_the_alerts_topics_episodes(
    tmp_path: Path, topics: Topics, demo_data: DemoData
) -> None:
    readings = interleave(demo_data.anomalous.readings)
    produce(topics.bootstrap, topics.readings, encode_messages(readings))
    # The alerts the backtest (the daemon's twin) raises on this stream, on the alerts topic, and
    # one record that is not an alert, which the trainer skips.
    alerts = evaluate_table(
        readings, load_artifact(demo_data.model.path), load_config(ROOT / "configs/detector.yaml")
    )
    published = [a for device in alerts for a in device.alerts]
    assert any(a.state == "firing" for a in published)
    messages = [(a.device_id.encode(), a.model_dump_json().encode()) for a in published]
    produce(topics.bootstrap, topics.alerts, [*messages, (None, b"not an alert")])
    spans = episode_spans(
        Transition(a.device_id, a.state, a.window_start, a.window_end) for a in published
    )
    inside = int(
        rows_in_episodes(readings["device_id"].to_numpy(), readings["ts"].to_numpy(), spans).sum()
    )
    stamps = readings["ts"].drop_duplicates().sort_values().to_numpy()
    since, until = stamps[0], stamps[-1] + 1
    registry = tmp_path / "models"
    result = _fit(
        _trainer_config(tmp_path, registry),
        *("--from-kafka", topics.readings, "--since", str(since), "--until", str(until)),
        *("--bootstrap-servers", topics.bootstrap, "--exclude-alerts", topics.alerts),
    )
    assert result.returncode == 0, result.stderr
    assert f"excluded {inside} rows inside {sum(map(len, spans.values()))} alert episodes" in (
        result.stderr
    )
    meta = load_artifact(registry).metadata
    assert meta.training_data.rows == len(readings) - inside


def test_exclude_alerts_needs_a_broker_to_read_them_from(tmp_path: Path) -> None:
    result = _fit(_trainer_config(tmp_path, tmp_path / "models"), "--exclude-alerts", "alerts")
    assert result.returncode == 2
    assert "--exclude-alerts needs --bootstrap-servers or --kafka-config" in result.stderr
