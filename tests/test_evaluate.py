"""``detector evaluate``: recorded files through the daemon's stages, offline, with its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.cli import main
from detector.config import DetectorConfig, ModelConfig
from detector.core.alerts import Alert
from detector.core.artifact import load_artifact
from detector.core.scoring import Scorer
from detector.evaluate import evaluate_device
from detector.exits import EXIT_CONFIG
from tests.conftest import DemoData, offline_transitions

ROOT = Path(__file__).resolve().parent.parent


def _labelled_stream(demo_data: DemoData, path: Path) -> pd.DataFrame:
    frame = demo_data.anomalous.readings.copy()
    frame["anomaly"] = demo_data.anomalous.labels["anomaly"].to_numpy()
    frame.to_csv(path, index=False)
    return frame


def test_evaluate_writes_scores_alerts_and_metrics(
    demo_data: DemoData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _labelled_stream(demo_data, tmp_path / "stream.csv")
    out = tmp_path / "backtest"
    code = main(
        [
            "evaluate", "--model", str(demo_data.model.path),
            "--config", str(ROOT / "configs" / "detector.yaml"),
            "--labels", "anomaly", "--out", str(out), "--quiet", str(tmp_path / "stream.csv"),
        ]
    )  # fmt: skip
    assert code == 0
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == len(frame)
    assert list(scores.columns) == ["device_id", "ts", "score", "threshold", "firing", "label"]
    length = load_artifact(demo_data.model.path).metadata.window_length
    devices = frame["device_id"].nunique()
    # Every reading after a device's first length - 1 completes a window (stride 1).
    assert scores["score"].notna().sum() == len(frame) - devices * (length - 1)
    alerts = [Alert.model_validate_json(line) for line in (out / "alerts.jsonl").open()]
    transitions: dict[str, list[tuple[float, str]]] = {}
    for alert in alerts:
        transitions.setdefault(alert.device_id, []).append((alert.window_end, alert.state))
    assert transitions == offline_transitions(demo_data.model.path, demo_data.anomalous.readings)
    # Every injected episode is caught and the printed figures are the saved ones.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["event_recall"] == 1.0
    assert metrics["episodes"] == len(demo_data.anomalous.episodes)
    printed = capsys.readouterr().out
    assert f"F1 {metrics['f1']:.3f}" in printed
    assert f"onset precision {metrics['event_precision']:.3f}" in printed


def test_evaluate_admits_readings_as_the_daemon_does(demo_data: DemoData) -> None:
    """A repeated reading is rejected as a duplicate and leaves the windows as they were."""
    artifact = load_artifact(demo_data.model.path)
    names = artifact.metadata.feature_names
    readings = demo_data.anomalous.readings
    rows = readings[readings["device_id"] == readings["device_id"].iloc[0]]
    ts, values = rows["ts"].to_numpy(), rows[names].to_numpy(dtype=np.float32)
    config = DetectorConfig(model=ModelConfig(path=demo_data.model.path))
    scorer = Scorer.from_artifact(artifact, "cpu")
    clean = evaluate_device("d", ts, values, artifact, config, scorer)
    repeat = np.insert(np.arange(len(ts)), 50, 49)  # row 49 arrives twice
    doubled = evaluate_device("d", ts[repeat], values[repeat], artifact, config, scorer)
    assert doubled.rejected == {"duplicate": 1}
    kept = np.delete(np.arange(len(repeat)), 50)
    np.testing.assert_array_equal(doubled.scores[kept], clean.scores)
    assert [a.alert_id for a in doubled.alerts] == [a.alert_id for a in clean.alerts]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop-sensor", "sensor columns not found"),
        ("bad-model", "cannot load model"),
        ("no-file", "no such file"),
    ],
)
def test_evaluate_start_up_errors_exit_2_with_one_line(
    demo_data: DemoData,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: str,
    message: str,
) -> None:
    frame = demo_data.anomalous.readings.head(100)
    data, model = tmp_path / "data.csv", demo_data.model.path
    if change == "drop-sensor":
        frame = frame.drop(columns=["pressure"])
    frame.to_csv(data, index=False)
    if change == "bad-model":
        model = tmp_path
    if change == "no-file":
        data = tmp_path / "missing.csv"
    code = main(["evaluate", "--model", str(model), "--out", str(tmp_path / "o"), str(data)])
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
