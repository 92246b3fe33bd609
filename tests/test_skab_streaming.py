"""Streaming equals offline on real data: a SKAB file through the broker and the daemon.

Uses ``../shared/data/skab`` (or ``SKAB_DATA``) when present and skips otherwise; the benchmark
(bench/skab.py) computes its flags offline, and this is what makes those figures the daemon's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from detector.config import AlertConfig
from detector.core.datafiles import load_table
from detector_devtools.replay import encode_messages
from tests.conftest import (
    ROOT,
    Topics,
    offline_transitions,
    produce,
    read_topic,
    streamed_transitions,
    wait_until,
)
from trainer.config import TrainerConfig
from trainer.fit import fit

SKAB = Path(os.environ.get("SKAB_DATA", ROOT.parent / "shared" / "data" / "skab"))

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (SKAB / "valve1" / "0.csv").is_file(), reason=f"no SKAB data at {SKAB}"),
]


def test_skab_file_streamed_through_the_daemon_gives_the_offline_episodes(
    tmp_path: Path, topics: Topics, start_daemon
) -> None:
    bench = yaml.safe_load((ROOT / "configs" / "skab.yaml").read_text())
    frame = pd.read_csv(SKAB / "valve1" / "0.csv", sep=";")
    train_csv = tmp_path / "train.csv"
    frame.drop(columns=["anomaly", "changepoint"]).iloc[: bench["train_rows"]].to_csv(
        train_csv, index=False
    )
    values = {**bench["trainer"], "data": {"paths": [str(train_csv)]}}
    values["output"] = {"dir": str(tmp_path / "models")}
    if bench.get("reference"):
        values["scaling"] = {
            **values.get("scaling", {}),
            "reference_paths": [str(SKAB / bench["reference"])],
        }
    result = fit(TrainerConfig.model_validate(values), show_progress=False)

    readings = load_table(SKAB / "valve1" / "0.csv", default_device="valve1-0")
    alerts_config = AlertConfig.model_validate(bench["alerts"])
    daemon = start_daemon(
        DETECTOR_MODEL__PATH=str(result.path),
        DETECTOR_ALERTS=json.dumps(alerts_config.model_dump(mode="json")),
    )
    produce(topics.bootstrap, topics.readings, encode_messages(readings))
    length = json.loads((result.path / "metadata.json").read_text())["window_length"]
    wait_until(
        lambda: daemon.metric("detector_windows_scored_total") == len(readings) - (length - 1),
        60,
        "every window of the file scored",
    )
    streamed = streamed_transitions(read_topic(topics.bootstrap, topics.alerts))
    expected = offline_transitions(result.path, readings, alerts_config)
    assert streamed == expected
    assert expected, "the file's anomaly produced alerts"
