"""The LSTM autoencoder and how its errors become a score: shared by the trainer and the detector."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

__all__ = [
    "MAX_LAYERS",
    "MAX_PARAMETERS",
    "LSTMAutoencoder",
    "ModelSpec",
    "ScoreSpec",
    "weight_shapes",
]

Aggregation = Literal["mean", "max", "mahalanobis"]

# 200 MB of float32 weights: thousands of times the default model (about 40 000), small enough
# that a version declaring more is refused before anything is allocated for it (12 000 hidden
# units took 4.7 GB to build).
MAX_PARAMETERS = 50_000_000
MAX_LAYERS = 16


class ModelSpec(BaseModel):
    """Architecture hyper-parameters; stored in the artifact so the detector rebuilds the same net."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_features: int = Field(ge=1)
    hidden_size: int = Field(64, ge=1)
    latent_size: int = Field(16, ge=1)
    num_layers: int = Field(1, ge=1, le=MAX_LAYERS)

    @model_validator(mode="after")
    def _bounded(self) -> ModelSpec:
        count = sum(math.prod(shape) for shape in weight_shapes(self).values())
        if count > MAX_PARAMETERS:
            raise ValueError(f"{count} parameters is more than the {MAX_PARAMETERS} allowed")
        return self


def _lstm_shapes(
    prefix: str, input_size: int, hidden: int, layers: int
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(layers):
        inputs = input_size if layer == 0 else hidden
        shapes[f"{prefix}.weight_ih_l{layer}"] = (4 * hidden, inputs)
        shapes[f"{prefix}.weight_hh_l{layer}"] = (4 * hidden, hidden)
        shapes[f"{prefix}.bias_ih_l{layer}"] = (4 * hidden,)
        shapes[f"{prefix}.bias_hh_l{layer}"] = (4 * hidden,)
    return shapes


def weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of :class:`LSTMAutoencoder`'s state dict, without building it.

    Lets a loader compare a weights file with the spec before allocating anything.
    """
    hidden, layers = spec.hidden_size, spec.num_layers
    return {
        **_lstm_shapes("encoder", spec.n_features, hidden, layers),
        "to_latent.weight": (spec.latent_size, hidden),
        "to_latent.bias": (spec.latent_size,),
        **_lstm_shapes("decoder", spec.latent_size, hidden, layers),
        "head.weight": (spec.n_features, hidden),
        "head.bias": (spec.n_features,),
    }


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
    error_center: list[float] | None = Field(
        None, description="mahalanobis: mean log error per sensor on normal training windows"
    )
    error_whitening: list[list[float]] | None = Field(
        None,
        description="mahalanobis: W with W^T W the inverse (shrunk) covariance of the log errors",
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
