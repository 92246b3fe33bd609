"""Scoring: scale raw windows, reconstruct them with the autoencoder, and measure the error.

The window score is the mean squared reconstruction error over time steps and sensors of the
scaled window. The trainer derives its threshold from the same function, so a score means the
same thing in training, in benchmarks and in the daemon.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from detector.artifact import Artifact
from detector.model import LSTMAutoencoder
from detector.scaling import StandardScaler

log = logging.getLogger(__name__)


def resolve_device(choice: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a start-up error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("scoring.device is 'cuda' but torch sees no CUDA device")
    return torch.device(choice)


@torch.inference_mode()
def sensor_errors(model: LSTMAutoencoder, scaled: torch.Tensor) -> torch.Tensor:
    """Per-window, per-sensor mean squared reconstruction error: ``(batch, features)``."""
    reconstruction = model(scaled)
    return (reconstruction - scaled).pow(2).mean(dim=1)


def window_scores(errors: np.ndarray) -> np.ndarray:
    """Collapse per-sensor errors ``(batch, features)`` into one score per window."""
    return errors.mean(axis=1)


def top_sensor_shares(
    errors: np.ndarray, feature_names: list[str], count: int
) -> list[dict[str, float | str]]:
    """The ``count`` sensors with the largest share of one window's error, largest first."""
    total = float(errors.sum())
    order = np.argsort(errors)[::-1][:count]
    return [
        {
            "sensor": feature_names[i],
            "share": round(float(errors[i]) / total, 4) if total > 0 else 0.0,
        }
        for i in order
    ]


class Scorer:
    """Scores batches of raw (unscaled) windows on one device, in chunks of ``max_batch_size``.

    The trainer scores its validation windows through this class too, so the threshold is set on
    exactly the numbers the daemon compares with it.
    """

    def __init__(
        self,
        model: LSTMAutoencoder,
        scaler: StandardScaler,
        device: str = "auto",
        max_batch_size: int = 1024,
    ) -> None:
        self.device = resolve_device(device)
        self.max_batch_size = max_batch_size
        self.scaler = scaler
        self.model = model.to(self.device).eval()
        self._mean = torch.as_tensor(self.scaler.mean, dtype=torch.float32, device=self.device)
        self._scale = torch.as_tensor(self.scaler.scale, dtype=torch.float32, device=self.device)

    @classmethod
    def from_artifact(
        cls, artifact: Artifact, device: str = "auto", max_batch_size: int = 1024
    ) -> Scorer:
        """A scorer for a loaded artifact."""
        return cls(artifact.model, artifact.scaler, device, max_batch_size)

    def sensor_errors(self, windows: np.ndarray) -> np.ndarray:
        """Per-sensor errors ``(batch, features)`` for raw windows ``(batch, length, features)``."""
        if len(windows) == 0:
            return np.empty((0, windows.shape[-1]), dtype=np.float32)
        host = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.device.type == "cuda":
            host = host.pin_memory()
        chunks = []
        for start in range(0, len(host), self.max_batch_size):
            batch = host[start : start + self.max_batch_size].to(self.device, non_blocking=True)
            scaled = (batch - self._mean) / self._scale
            chunks.append(sensor_errors(self.model, scaled))
        return torch.cat(chunks).float().cpu().numpy()

    def warm_up(self, window_length: int) -> None:
        """Run one batch so the first real batch does not pay for lazy initialisation."""
        self.sensor_errors(np.zeros((1, window_length, len(self.scaler.mean)), np.float32))
