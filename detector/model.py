"""The LSTM autoencoder and how its errors become a score: shared by the trainer and the detector."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

Aggregation = Literal["mean", "max"]


class ModelSpec(BaseModel):
    """Architecture hyper-parameters; stored in the artifact so the detector rebuilds the same net."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_features: int = Field(ge=1)
    hidden_size: int = Field(64, ge=1)
    latent_size: int = Field(16, ge=1)
    num_layers: int = Field(1, ge=1)


class ScoreSpec(BaseModel):
    """How per-sensor reconstruction errors become one window score; stored in the artifact.

    The defaults (plain mean, no normalisation) are what artifacts without this section meant.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregation: Aggregation = "mean"
    sensor_scale: list[float] | None = Field(
        None,
        description="per-sensor error divisors (normal validation error): every sensor's "
        "error then reads in units of its own normal level",
    )

    @property
    def normalised(self) -> bool:
        """Whether per-sensor errors are divided by ``sensor_scale``."""
        return self.sensor_scale is not None


class LSTMAutoencoder(nn.Module):
    """Encoder LSTM -> latent vector -> decoder LSTM -> linear head, reconstructing each step."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = nn.LSTM(spec.n_features, spec.hidden_size, spec.num_layers, batch_first=True)
        self.to_latent = nn.Linear(spec.hidden_size, spec.latent_size)
        self.decoder = nn.LSTM(
            spec.latent_size, spec.hidden_size, spec.num_layers, batch_first=True
        )
        self.head = nn.Linear(spec.hidden_size, spec.n_features)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``windows`` of shape ``(batch, length, features)``."""
        _, (hidden, _) = self.encoder(windows)
        latent = self.to_latent(hidden[-1])
        repeated = latent.unsqueeze(1).expand(-1, windows.shape[1], -1)
        decoded, _ = self.decoder(repeated)
        return self.head(decoded)
