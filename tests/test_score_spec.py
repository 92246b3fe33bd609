"""Score aggregation stored in the artifact (one source of truth), scale floors, trainer options."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from detector.core.artifact import METADATA_FILE, ArtifactMetadata, load_artifact
from detector.core.model import LSTMAutoencoder, ModelSpec, ScoreSpec
from detector.core.scaling import StandardScaler
from detector.core.scoring import Scorer, fit_mahalanobis, window_scores
from detector.core.thresholds import fit_threshold
from detector.core.windows import sliding_windows
from trainer.config import TrainerConfig
from trainer.fit import fit


def _scorer(spec: ScoreSpec | None = None) -> Scorer:
    torch.manual_seed(0)
    model = LSTMAutoencoder(ModelSpec(n_features=3, hidden_size=4, latent_size=2))
    scaler = StandardScaler(mean=np.zeros(3), scale=np.ones(3))
    return Scorer(model, scaler, "cpu", spec=spec)


def _windows(count: int = 6) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(count, 5, 3)).astype(np.float32)


def test_window_scores_aggregations() -> None:
    errors = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(window_scores(errors), [3.0, 0.0])
    np.testing.assert_allclose(window_scores(errors, "max"), [6.0, 0.0])


def test_scorer_normalises_and_aggregates_as_its_spec_says() -> None:
    windows = _windows()
    raw = _scorer().sensor_errors(windows)
    spec = ScoreSpec(aggregation="max", sensor_scale=[2.0, 4.0, 0.5])
    scorer = _scorer(spec)
    normalised = scorer.sensor_errors(windows)
    np.testing.assert_allclose(normalised, raw / np.array([2.0, 4.0, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(scorer.window_scores(normalised), normalised.max(axis=1))


def test_default_spec_is_todays_mean_score() -> None:
    scorer = _scorer()
    errors = scorer.sensor_errors(_windows())
    np.testing.assert_allclose(scorer.window_scores(errors), errors.mean(axis=1))
    assert not ScoreSpec().normalised


def _write_csv(path: Path, rows: int, seed: int, level: float = 10.0) -> Path:
    rng = np.random.default_rng(seed)
    steps = np.arange(rows)
    pd.DataFrame(
        {
            "ts": steps.astype(float),
            "flow": level + np.sin(steps / 7) + 0.1 * rng.normal(size=rows),
            "temp": 50 + 0.01 * steps + 0.05 * rng.normal(size=rows),
            "noise": rng.normal(size=rows),
        }
    ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerConfig, Path]:
    root = tmp_path_factory.mktemp("spec")
    config = TrainerConfig.model_validate(
        {
            "data": {"paths": [str(_write_csv(root / "train.csv", 700, seed=0))]},
            "window": {"length": 8, "stride": 1},
            "model": {"hidden_size": 8, "latent_size": 4},
            "training": {"epochs": 3, "batch_size": 64, "seed": 0, "device": "cpu"},
            "scaling": {
                "reference_paths": [str(_write_csv(root / "ref.csv", 2000, seed=1, level=20.0))],
                "relative_floor": 3.0,
            },
            "scoring": {"aggregation": "max", "normalise": True},
            "threshold": {"method": "pot", "risk": 1e-3, "init_quantile": 0.9, "margin": 1.2},
            "output": {"dir": str(root / "models")},
        }
    )
    return config, fit(config, show_progress=False).path


def test_trainer_stores_the_spec_and_thresholds_through_it(
    trained: tuple[TrainerConfig, Path],
) -> None:
    config, path = trained
    artifact = load_artifact(path)
    meta = artifact.metadata
    assert meta.scoring.aggregation == "max"
    assert meta.scoring.sensor_scale is not None and len(meta.scoring.sensor_scale) == 3
    assert meta.threshold.method == "pot"
    assert meta.threshold.params == {"risk": 1e-3, "init_quantile": 0.9, "margin": 1.2}
    # The daemon's scorer, rebuilt from the artifact alone, reproduces the threshold.
    frame = pd.read_csv(config.data.paths[0])
    validation = frame[meta.feature_names].to_numpy()[round(700 * 0.8) :]
    scorer = Scorer.from_artifact(artifact, "cpu")
    scores = scorer.window_scores(
        scorer.sensor_errors(sliding_windows(validation, meta.window_length))
    )
    expected = fit_threshold(scores, "pot", risk=1e-3, init_quantile=0.9, margin=1.2)
    assert meta.threshold.value == pytest.approx(expected, rel=1e-4)


def test_reference_floors_the_scale(trained: tuple[TrainerConfig, Path]) -> None:
    config, path = trained
    scale = load_artifact(path).scaler.scale
    reference = pd.read_csv(config.scaling.reference_paths[0])[["flow", "temp", "noise"]]
    train = pd.read_csv(config.data.paths[0])[["flow", "temp", "noise"]].iloc[:560]
    floor = 3.0 * reference.std(ddof=0) / reference.mean().abs() * train.mean().abs()
    assert scale[0] == pytest.approx(max(floor["flow"], train["flow"].std(ddof=0)), rel=1e-6)
    assert scale[1] == pytest.approx(floor["temp"], rel=1e-6)  # slow drift: the floor wins


def test_artifact_without_a_scoring_section_loads_with_the_default(
    trained: tuple[TrainerConfig, Path], tmp_path: Path
) -> None:
    """Artifacts written before the section existed keep loading, with the mean score."""
    old = tmp_path / "old"
    shutil.copytree(trained[1], old)
    metadata = json.loads((old / METADATA_FILE).read_text())
    del metadata["scoring"]
    (old / METADATA_FILE).write_text(json.dumps(metadata))
    assert load_artifact(old).metadata.scoring == ScoreSpec()


def test_sensor_scale_must_match_the_features(trained: tuple[TrainerConfig, Path]) -> None:
    _, path = trained
    metadata = json.loads((path / METADATA_FILE).read_text())
    metadata["scoring"] = {"aggregation": "mean", "sensor_scale": [1.0, 2.0]}
    with pytest.raises(ValidationError, match="sensor_scale"):
        ArtifactMetadata.model_validate(metadata)
    metadata["scoring"] = {"aggregation": "mean", "sensor_scale": [1.0, 0.0, 1.0]}
    with pytest.raises(ValidationError, match="sensor_scale"):
        ArtifactMetadata.model_validate(metadata)


def test_min_scale_floors_the_fitted_scale() -> None:
    values = np.array([[1.0, 10.0], [3.0, 30.0]])
    scaler = StandardScaler.fit(values, min_scale=np.array([5.0, 1.0]))
    np.testing.assert_allclose(scaler.scale, [5.0, 10.0])


def test_pot_threshold_config_checks_levels() -> None:
    with pytest.raises(ValidationError, match="risk"):
        TrainerConfig.model_validate(
            {
                "data": {"paths": ["x.csv"]},
                "threshold": {"method": "pot", "risk": 0.1, "init_quantile": 0.95},
            }
        )


def test_mahalanobis_scores_an_error_unusual_for_its_sensor() -> None:
    """Normal windows score near 1 (a mean-like scale); a small error on a sensor that is
    always reconstructed well, or a broken correlation, scores far higher although its mean and
    max error are ordinary."""
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(4000, 1))
    logs = np.hstack(
        [shared, shared + 0.1 * rng.normal(size=(4000, 1)), rng.normal(size=(4000, 1))]
    )
    scales = np.array([1.0, 1.0, 0.01])  # sensor 2 is always reconstructed 100x better
    errors = np.exp(0.3 * logs) * scales
    center, whitening = fit_mahalanobis(errors[:3000])
    spec = ScoreSpec(aggregation="mahalanobis", error_center=center, error_whitening=whitening)
    normal = window_scores(errors[3000:], "mahalanobis", spec)
    assert 0.5 < normal.mean() < 1.5  # below 1 as the shrinkage damps the correlated pair
    unusual = np.array([[1.0, 1.0, 0.5], [1.3, 0.75, 0.01]])  # sensor 2 off; the pair decoupled
    scores = window_scores(unusual, "mahalanobis", spec)
    assert (scores > np.quantile(normal, 0.999)).all()
    assert window_scores(unusual, "max").max() < np.quantile(window_scores(errors, "max"), 0.9)
    with pytest.raises(ValueError, match="error_center"):
        window_scores(unusual, "mahalanobis")


def test_trainer_fits_a_mahalanobis_score_the_artifact_carries(tmp_path: Path) -> None:
    config = TrainerConfig.model_validate(
        {
            "data": {"paths": [str(_write_csv(tmp_path / "train.csv", 500, seed=0))]},
            "window": {"length": 8, "stride": 1},
            "model": {"hidden_size": 8, "latent_size": 4},
            "training": {"epochs": 2, "min_steps": 20, "seed": 0, "device": "cpu"},
            "scoring": {"aggregation": "mahalanobis"},
            "output": {"dir": str(tmp_path / "models")},
        }
    )
    artifact = load_artifact(fit(config, show_progress=False).path)
    spec = artifact.metadata.scoring
    assert spec.aggregation == "mahalanobis"
    assert len(spec.error_center or []) == 3 and len(spec.error_whitening or []) == 3
    scorer = Scorer.from_artifact(artifact, "cpu")
    values = pd.read_csv(config.data.paths[0])[artifact.metadata.feature_names].to_numpy()
    scores = scorer.window_scores(scorer.sensor_errors(sliding_windows(values, 8)))
    assert np.isfinite(scores).all() and (scores >= 0).all()
    # A whitening matrix of the wrong shape is refused when the artifact loads.
    metadata = json.loads((artifact.path / METADATA_FILE).read_text())
    metadata["scoring"]["error_whitening"] = metadata["scoring"]["error_whitening"][:2]
    with pytest.raises(ValidationError, match="mahalanobis"):
        ArtifactMetadata.model_validate(metadata)
