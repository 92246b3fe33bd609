"""Trainer configuration: pydantic models, loaded from YAML with ``TRAINER_`` overrides.

Example override: ``TRAINER_TRAINING__EPOCHS=5``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detector.core.model import Aggregation
from detector.core.thresholds import ThresholdMethod
from detector.settings import load_settings

__all__ = [
    "ENV_PREFIX",
    "PROFILE_NAME",
    "ArchitectureConfig",
    "DataConfig",
    "OutputConfig",
    "ScalingConfig",
    "ScoreAggregationConfig",
    "ThresholdConfig",
    "TrainerConfig",
    "TrainingConfig",
    "TrainingWindowConfig",
    "load_config",
    "profile_registry",
]

ENV_PREFIX = "TRAINER_"
# A profile name is a directory under output.profiles_dir, so it is a plain file name.
PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Normal (anomaly-free) training data: CSV or Parquet files in wide format."""

    paths: list[Path] = Field(min_length=1)
    time_column: str | None = None
    device_column: str | None = None
    sensors: list[str] | None = Field(None, description="feature order; default: numeric columns")
    profile_column: str | None = Field(
        None,
        description="column naming each row's device profile (a mixed fleet file): "
        "``trainer fit --profile NAME`` trains on that profile's rows only",
    )


class TrainingWindowConfig(_Section):
    """Window length (stored in the artifact, used by the detector) and training stride."""

    length: int = Field(32, ge=2)
    stride: int = Field(2, ge=1)


class ArchitectureConfig(_Section):
    """LSTM autoencoder size."""

    hidden_size: int = Field(32, ge=1)
    latent_size: int = Field(8, ge=1)
    num_layers: int = Field(1, ge=1)


class TrainingConfig(_Section):
    """Optimisation and validation split."""

    epochs: int = Field(
        12, ge=1, description="passes over the data at most, unless min_steps needs more"
    )
    batch_size: int = Field(
        256, ge=1, description="at most; smaller when the data would make under 10 steps a pass"
    )
    min_steps: int = Field(
        500,
        ge=0,
        description="optimiser steps at least, however little data: passes are added until "
        "reached, and early stopping waits for them",
    )
    learning_rate: float = Field(3e-3, gt=0)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    patience: int = Field(3, ge=1, description="epochs without validation improvement before stop")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_train_windows: int | None = Field(None, ge=1, description="subsample for quick runs")


class ScalingConfig(_Section):
    """Optional floor on the per-sensor scale, from a long normal reference recording.

    A short training span underestimates how far slow sensors (temperatures) wander. With
    ``reference_paths`` and ``relative_floor`` > 0, a sensor's scale is at least
    ``relative_floor`` x its coefficient of variation in the reference x ``|training mean|``: the
    reference's relative spread carried over to this device's operating level.
    """

    reference_paths: list[Path] = Field(default_factory=list)
    relative_floor: float = Field(0.0, ge=0)
    method: Literal["standard", "robust"] = Field(
        "standard",
        description="standard: mean and std; robust: median and IQR (spikes in training rows)",
    )


class ScoreAggregationConfig(_Section):
    """How per-sensor errors become a window score (stored in the artifact for the detector)."""

    aggregation: Aggregation = "max"
    normalise: bool = Field(
        False, description="divide each sensor's error by its mean validation error first"
    )


class ThresholdConfig(_Section):
    """How the alert threshold is derived from validation reconstruction errors, and trusted."""

    method: ThresholdMethod = "quantile"
    quantile: float = Field(0.99, gt=0, lt=1)
    k: float = Field(3.0, gt=0)
    margin: float = Field(2.0, gt=0)
    risk: float = Field(1e-3, gt=0, lt=1, description="pot: tail probability of the threshold")
    init_quantile: float = Field(0.98, gt=0, lt=1, description="pot: where the tail starts")
    min_calibration_windows: int = Field(
        100,
        ge=1,
        description="fewer validation windows: the training windows' scores join them, scaled "
        "up by the validation / training median score",
    )
    max_train_score_factor: float = Field(
        4.0,
        ge=1,
        description="the most the training windows' scores are scaled up by when they join: a "
        "model that overfits its training rows cannot push the threshold out of reach",
    )
    max_flag_rate: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="the share of its own training or validation windows a model may score "
        "over its threshold before the trainer warns (every method)",
    )

    @model_validator(mode="after")
    def _pot_levels(self) -> ThresholdConfig:
        if self.method == "pot" and self.risk >= 1.0 - self.init_quantile:
            raise ValueError("pot needs risk < 1 - init_quantile")
        return self


class OutputConfig(_Section):
    """Where versions are written: ``<dir>/<version>/`` and the ``<dir>/current`` pointer.

    ``trainer fit --profile NAME`` writes to the registry ``<profiles_dir>/<NAME>`` instead.
    """

    dir: Path = Path("models/default")
    profiles_dir: Path = Path("models")


class TrainerConfig(_Section):
    """Everything ``trainer fit`` needs; see configs/trainer.yaml."""

    data: DataConfig
    window: TrainingWindowConfig = Field(default_factory=TrainingWindowConfig)
    model: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    scoring: ScoreAggregationConfig = Field(default_factory=ScoreAggregationConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _unique_sensors(self) -> TrainerConfig:
        sensors = self.data.sensors
        if sensors is not None and len(set(sensors)) != len(sensors):
            raise ValueError("data.sensors contains duplicates")
        if sensors is not None and self.data.profile_column in sensors:
            raise ValueError("data.sensors names data.profile_column, which is not a sensor")
        return self


def load_config(path: Path | None) -> TrainerConfig:
    """Load and validate the trainer configuration; raises ``ConfigError`` naming bad fields."""
    return load_settings(TrainerConfig, path, ENV_PREFIX)


def profile_registry(output: OutputConfig, profile: str) -> Path:
    """The registry of ``profile``: ``<profiles_dir>/<profile>``; raises ``ValueError`` on a bad name."""
    if not PROFILE_NAME.fullmatch(profile) or profile in (".", ".."):
        raise ValueError(
            f"profile name {profile!r} must be 1-64 letters, digits, '_', '.' or '-' "
            "(and not '.' or '..')"
        )
    return output.profiles_dir / profile
