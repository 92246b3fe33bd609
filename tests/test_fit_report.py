"""The trainer says how well a fit learned and warns when its model or threshold cannot be trusted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from detector.core.artifact import load_artifact
from detector.core.thresholds import fit_threshold
from trainer.cli import main
from trainer.config import ThresholdConfig, TrainerConfig
from trainer.fit import (
    TrainingError,
    calibrate,
    effective_batch_size,
    fit,
    fit_warnings,
)

GOOD = {
    "validation_error_share": 0.1,
    "validation_windows": 500.0,
    "train_flag_rate": 0.0,
    "holdout_flag_rate": 0.001,
    "max_flag_rate": 0.01,
}


def test_a_good_fit_gets_no_warning() -> None:
    assert fit_warnings(GOOD) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"validation_error_share": 0.93}, "barely learned: its validation error is 93%"),
        ({"train_flag_rate": 0.05}, "flags 5% of its own training windows"),
        ({"holdout_flag_rate": 0.02}, "flags 2% of its own validation windows"),
    ],
)
def test_each_weakness_gets_one_warning_naming_the_fix(change: dict, words: str) -> None:
    [warning] = fit_warnings({**GOOD, **change})
    assert words in warning


@pytest.mark.parametrize("part", ["train", "holdout"])
def test_flag_rate_warning_comes_above_the_configured_rate_not_at_or_below(part: str) -> None:
    """threshold.max_flag_rate is the risk the user accepts: 3 % flagged is fine at 5 %."""
    accepts = {**GOOD, "max_flag_rate": 0.05}
    assert fit_warnings({**accepts, f"{part}_flag_rate": 0.03}) == []
    assert fit_warnings({**accepts, f"{part}_flag_rate": 0.05}) == []
    [warning] = fit_warnings({**accepts, f"{part}_flag_rate": 0.06})
    assert "flags 6% of its own" in warning
    assert "more than threshold.max_flag_rate 5%" in warning
    strict = {**GOOD, "max_flag_rate": 0.0005, "train_flag_rate": 0.0, "holdout_flag_rate": 0.0}
    [warning] = fit_warnings({**strict, f"{part}_flag_rate": 0.001})
    assert "more than threshold.max_flag_rate 0.05%" in warning


def _scores(count: int, level: float, seed: int) -> np.ndarray:
    return level * np.random.default_rng(seed).gamma(4.0, size=count)


def test_enough_validation_windows_set_the_threshold_alone() -> None:
    validation, train = _scores(100, 2.0, 1), _scores(400, 1.0, 2)
    info = calibrate(validation, train, ThresholdConfig(quantile=0.99, margin=1.5))
    assert info.value == pytest.approx(fit_threshold(validation, quantile=0.99, margin=1.5))
    assert info.params == {"quantile": 0.99, "margin": 1.5}
    assert info.error_summary["count"] == 100


def test_few_validation_windows_add_training_ones_scaled_up_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The model saw its training windows: they score half what unseen normal windows do.
    validation, train = _scores(40, 2.0, 1), _scores(400, 1.0, 2)
    settings = ThresholdConfig(quantile=0.99, margin=1.0, min_calibration_windows=100)
    with caplog.at_level(logging.WARNING, logger="trainer.fit"):
        info = calibrate(validation, train, settings)
    factor = np.median(validation) / np.median(train)
    assert 1.6 < factor < 2.4
    assert info.params["validation_windows"] == 40
    assert info.params["train_windows"] == 400
    assert info.params["train_score_factor"] == pytest.approx(factor)
    combined = np.concatenate([validation, train * factor])
    assert info.value == pytest.approx(fit_threshold(combined, quantile=0.99))
    # Uncorrected training scores would have pulled the threshold well below unseen ones'.
    assert info.value > 1.3 * fit_threshold(np.concatenate([validation, train]), quantile=0.99)
    assert info.error_summary["count"] == 440
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "40 validation windows (fewer than threshold.min_calibration_windows 100)" in warning
    assert f"400 training windows, whose scores were multiplied by {factor:.3g}" in warning


def test_training_scores_are_never_scaled_down() -> None:
    validation, train = _scores(30, 1.0, 1), _scores(400, 2.0, 2)
    info = calibrate(validation, train, ThresholdConfig(min_calibration_windows=100))
    assert info.params["train_score_factor"] == 1.0


def test_an_overfitted_model_cannot_push_its_threshold_out_of_reach() -> None:
    # Training windows score 45x lower than unseen ones: the correction stops at the cap.
    validation, train = _scores(40, 45.0, 1), _scores(400, 1.0, 2)
    settings = ThresholdConfig(min_calibration_windows=100, max_train_score_factor=4.0)
    info = calibrate(validation, train, settings)
    assert info.params["train_score_factor"] == 4.0


def test_pot_takes_training_windows_when_validation_has_too_few_peaks() -> None:
    # pot at init_quantile 0.98 needs 251 scores for its 5 peaks, more than the 100 configured.
    validation, train = _scores(150, 2.0, 1), _scores(600, 1.0, 2)
    info = calibrate(validation, train, ThresholdConfig(method="pot", risk=1e-3))
    assert info.params["validation_windows"] == 150
    assert info.params["train_windows"] == 600


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


def _tiny_config(tmp_path: Path, rows: int, **sections: dict) -> TrainerConfig:
    """Two epochs of one optimiser step each on ``rows`` rows: seconds, and next to no learning."""
    return TrainerConfig.model_validate(
        {
            "data": {"paths": [str(_csv(tmp_path / "small.csv", rows))]},
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
            **sections,
        }
    )


def test_a_fit_on_little_data_records_its_quality_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Half the fitted threshold: a good share of its own windows are over it.
    config = _tiny_config(tmp_path, 120, threshold={"margin": 0.5, "max_flag_rate": 0.02})
    with caplog.at_level(logging.INFO, logger="trainer.fit"):
        result = fit(config, show_progress=False)
    meta = load_artifact(result.path).metadata
    validation, params = meta.validation, meta.threshold.params
    # 9 validation windows (the last 24 rows), 41 training ones (96 rows, stride 2).
    assert (validation["validation_windows"], validation["train_windows"]) == (9, 41)
    assert validation["validation_error_share"] > 0.9
    assert 0 <= validation["train_flag_rate"] <= 1
    assert validation["train_error_share"] > 0
    assert validation["max_flag_rate"] == 0.02
    # Fewer than the 100 validation windows: the threshold took the training windows too.
    assert (params["validation_windows"], params["train_windows"]) == (9, 41)
    assert params["train_score_factor"] >= 1.0
    assert meta.threshold.error_summary["count"] == 50
    assert (result.validation_windows, result.threshold_train_windows) == (9, 41)
    # Every row is in some window: the range the extremes rule starts from is the data's.
    data = pd.read_csv(tmp_path / "small.csv")[meta.feature_names]
    assert meta.input_range is not None
    assert meta.input_range.low == pytest.approx(data.min().tolist())
    assert meta.input_range.high == pytest.approx(data.max().tolist())
    assert result.train_score_factor == params["train_score_factor"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("barely learned" in w for w in warnings), warnings
    assert any("9 validation windows (fewer than" in w for w in warnings), warnings
    # One line each, always: the shares of its own windows over the threshold, and the limit.
    [rates] = [m for m in infos if m.startswith("windows over the threshold")]
    assert "of 41 training" in rates and "of 9 validation" in rates
    assert "threshold.max_flag_rate 2%" in rates
    for part, name in (("train", "training"), ("holdout", "validation")):
        assert validation[f"{part}_flag_rate"] > 0.02
        [flagged] = [w for w in warnings if f"of its own {name} windows" in w]
        assert "more than threshold.max_flag_rate 2%" in flagged


def test_a_rerun_trains_the_same_model_whatever_the_registry_holds(tmp_path: Path) -> None:
    """The same data and settings give the same model on an empty registry and on one whose
    current model the fit loads first (its construction used to shift the seeded weights)."""
    config = _tiny_config(tmp_path, 120)
    first = load_artifact(fit(config, show_progress=False).path)
    second = load_artifact(fit(config, show_progress=False).path)
    assert second.metadata.threshold.value == first.metadata.threshold.value
    for name, weights in first.model.state_dict().items():
        assert torch.equal(weights, second.model.state_dict()[name]), name


def test_too_few_windows_for_any_threshold_is_refused_before_training(tmp_path: Path) -> None:
    # 3 validation windows and 8 training ones (stride 8): 11, fewer than the 20 a threshold needs.
    config = _tiny_config(tmp_path, 90, window={"length": 16, "stride": 8})
    with pytest.raises(TrainingError) as refused:
        fit(config, show_progress=False)
    message = str(refused.value)
    assert (
        "too few windows for a quantile threshold: 3 validation and 8 training windows" in message
    )
    assert "20 needed together" in message
    assert message.endswith("; add data, shorten window.length or lower window.stride (now 8)")
    assert not (tmp_path / "models").exists()


def test_a_registry_that_cannot_be_written_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the registry's parent should be")
    config = _tiny_config(tmp_path, 400, output={"dir": str(tmp_path / "taken" / "models")})
    with pytest.raises(TrainingError, match=r"cannot write the model registry .*taken/models"):
        fit(config, show_progress=False)


def test_pot_refuses_fewer_windows_than_its_five_peaks_need(tmp_path: Path) -> None:
    # 65 validation + 153 training windows: 218, fewer than the 251 pot needs at 0.98.
    config = _tiny_config(tmp_path, 400, threshold={"method": "pot", "risk": 1e-3})
    with pytest.raises(TrainingError, match="65 validation and 153 training windows, 251 needed"):
        fit(config, show_progress=False)
    assert not (tmp_path / "models").exists()


def test_trainer_fit_prints_where_the_threshold_came_from_and_what_it_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "trainer.yaml"
    config.write_text(
        f"data: {{paths: [{_csv(tmp_path / 'small.csv', 120)}]}}\n"
        "window: {length: 16, stride: 2}\n"
        "model: {hidden_size: 8, latent_size: 4}\n"
        "training: {epochs: 2, min_steps: 0, device: cpu}\n"
        "threshold: {max_flag_rate: 0.05}\n"
        f"output: {{dir: {tmp_path / 'models'}}}\n"
    )
    assert main(["fit", "--config", str(config), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "from 9 validation + 41 training windows, training scores x" in summary
    assert "held-out normal windows flagged: new " in summary
    assert "training windows flagged " in summary
    assert "(warning above 0.0500)" in summary


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
                "training": {
                    "epochs": 3,
                    "min_steps": min_steps,
                    "learning_rate": 0.001,
                    "seed": 0,
                    "device": "cpu",
                },
                "output": {"dir": str(tmp_path / f"models-{min_steps}")},
            }
        )
        return load_artifact(fit(config, show_progress=False).path).metadata.validation

    untrained, budgeted = trained(0), trained(300)
    steps_per_epoch = -(-int(budgeted["train_windows"]) // 15)  # 153 windows, batch 15
    assert budgeted["epochs"] * steps_per_epoch >= 300
    assert budgeted["validation_error_share"] < 0.8
    assert untrained["validation_error_share"] > 0.9
