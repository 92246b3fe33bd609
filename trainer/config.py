"""Trainer configuration: pydantic models, loaded from YAML with ``TRAINER_`` overrides.

Example override: ``TRAINER_TRAINING__EPOCHS=5``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detector.settings import load_settings

ENV_PREFIX = "TRAINER_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Normal (anomaly-free) training data: CSV or Parquet files in wide format."""

    paths: list[Path] = Field(min_length=1)
    time_column: str | None = None
    device_column: str | None = None
    sensors: list[str] | None = Field(None, description="feature order; default: numeric columns")


class WindowConfig(_Section):
    """Window length (stored in the artifact, used by the detector) and training stride."""

    length: int = Field(32, ge=2)
    stride: int = Field(1, ge=1)


class ModelConfig(_Section):
    """LSTM autoencoder size."""

    hidden_size: int = Field(64, ge=1)
    latent_size: int = Field(16, ge=1)
    num_layers: int = Field(1, ge=1)


class TrainingConfig(_Section):
    """Optimisation and validation split."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    patience: int = Field(5, ge=1, description="epochs without validation improvement before stop")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_train_windows: int | None = Field(None, ge=1, description="subsample for quick runs")


class ThresholdConfig(_Section):
    """How the alert threshold is derived from validation reconstruction errors."""

    method: Literal["quantile", "mean_std"] = "quantile"
    quantile: float = Field(0.995, gt=0, lt=1)
    k: float = Field(3.0, gt=0)
    margin: float = Field(1.0, gt=0)


class OutputConfig(_Section):
    """Where versions are written: ``<dir>/<version>/`` and the ``<dir>/current`` pointer."""

    dir: Path = Path("models/default")


class TrainerConfig(_Section):
    """Everything ``trainer fit`` needs; see configs/trainer.yaml."""

    data: DataConfig
    window: WindowConfig = Field(default_factory=WindowConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _unique_sensors(self) -> TrainerConfig:
        sensors = self.data.sensors
        if sensors is not None and len(set(sensors)) != len(sensors):
            raise ValueError("data.sensors contains duplicates")
        return self


def load_config(path: Path | None) -> TrainerConfig:
    """Load and validate the trainer configuration; raises ``ConfigError`` naming bad fields."""
    return load_settings(TrainerConfig, path, ENV_PREFIX)
