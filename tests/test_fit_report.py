"""The trainer says how well a fit learned and warns when its model or threshold cannot be trusted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detector.artifact import load_artifact
from trainer.config import TrainerConfig
from trainer.fit import MIN_CALIBRATION_WINDOWS, effective_batch_size, fit, fit_warnings

GOOD = {
    "validation_error_share": 0.1,
    "validation_windows": 500.0,
    "train_flag_rate": 0.0,
    "holdout_flag_rate": 0.001,
}


def test_a_good_fit_gets_no_warning() -> None:
    assert fit_warnings(GOOD) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"validation_error_share": 0.93}, "barely learned: its validation error is 93%"),
        ({"validation_windows": 6.0}, "only 6 validation windows"),
        ({"train_flag_rate": 0.05}, "flags 5.0% of its own training windows"),
        ({"holdout_flag_rate": 0.02}, "flags 2.0% of its own validation windows"),
    ],
)
def test_each_weakness_gets_one_warning_naming_the_fix(change: dict, words: str) -> None:
    [warning] = fit_warnings({**GOOD, **change})
    assert words in warning


def _csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    steps = np.arange(rows)
    pd.DataFrame(
        {
            "ts": steps.astype(float),
            "flow": np.sin(steps / 5) + 0.1 * rng.normal(size=rows),
            "temp": 50 + np.cos(steps / 9) + 0.05 * rng.normal(size=rows),
        }
    ).to_csv(path, index=False)
    return path


def test_a_fit_on_little_data_records_its_quality_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = TrainerConfig.model_validate(
        {
            "data": {"paths": [str(_csv(tmp_path / "small.csv", 120))]},
            "window": {"length": 16, "stride": 2},
            "model": {"hidden_size": 8, "latent_size": 4},
            "training": {
                "epochs": 2,
                "batch_size": 256,
                "min_steps": 0,
                "seed": 0,
                "device": "cpu",
            },
            "output": {"dir": str(tmp_path / "models")},
        }
    )
    with caplog.at_level(logging.WARNING, logger="trainer.fit"):
        result = fit(config, show_progress=False)
    validation = load_artifact(result.path).metadata.validation
    assert validation["validation_windows"] < MIN_CALIBRATION_WINDOWS
    # Two epochs of one optimiser step each: the model has learned next to nothing.
    assert validation["validation_error_share"] > 0.9
    assert 0 <= validation["train_flag_rate"] <= 1
    assert validation["train_error_share"] > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("barely learned" in w for w in warnings), warnings
    assert any(
        f"only {int(validation['validation_windows'])} validation windows" in w for w in warnings
    )


def test_batch_size_shrinks_so_a_pass_takes_ten_steps() -> None:
    assert effective_batch_size(100_000, 256) == 256
    assert effective_batch_size(280, 256) == 28
    assert effective_batch_size(5, 256) == 1


def test_small_data_gets_the_step_budget_and_learns(tmp_path: Path) -> None:
    def trained(min_steps: int) -> dict[str, float]:
        config = TrainerConfig.model_validate(
            {
                "data": {"paths": [str(_csv(tmp_path / "small.csv", 400))]},
                "window": {"length": 16, "stride": 2},
                "model": {"hidden_size": 8, "latent_size": 4},
                "training": {"epochs": 3, "min_steps": min_steps, "seed": 0, "device": "cpu"},
                "output": {"dir": str(tmp_path / f"models-{min_steps}")},
            }
        )
        return load_artifact(fit(config, show_progress=False).path).metadata.validation

    untrained, budgeted = trained(0), trained(300)
    steps_per_epoch = -(-int(budgeted["train_windows"]) // 15)  # 153 windows, batch 15
    assert budgeted["epochs"] * steps_per_epoch >= 300
    assert budgeted["validation_error_share"] < 0.8
    assert untrained["validation_error_share"] > 0.9
