"""Per-sensor standardisation fitted on training data and stored in the model artifact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StandardScaler"]

# A sensor that never moved in training gets unit scale, so it neither divides by zero nor
# turns every later wiggle into an enormous error.
_MIN_SCALE = 1e-8
# Interquartile range of a normal distribution, in standard deviations.
_IQR_PER_STD = 1.3489795003921634


@dataclass(frozen=True)
class StandardScaler:
    """``(x - mean) / scale`` per sensor, on the last axis."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(
        cls, values: np.ndarray, min_scale: np.ndarray | None = None, robust: bool = False
    ) -> StandardScaler:
        """Fit on rows of shape ``(n, features)``; NaN rows must be removed first.

        ``min_scale`` (per sensor) floors the fitted scale: a short training span underestimates
        how far slow sensors wander, and the floor keeps that wander from reading as anomalous.
        ``robust`` centres on the median and scales by the interquartile range / 1.349 (the
        standard deviation of a normal distribution), so spikes in the training rows neither
        shift the centre nor inflate the scale; a sensor whose quartiles tie (flat but for rare
        moves) falls back to its standard deviation.
        """
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"need a non-empty 2-D array, got shape {values.shape}")
        if robust:
            lower, mean, upper = np.quantile(values.astype(np.float64), [0.25, 0.5, 0.75], axis=0)
            scale = (upper - lower) / _IQR_PER_STD
            scale = np.where(scale < _MIN_SCALE, values.std(axis=0, dtype=np.float64), scale)
        else:
            mean = values.mean(axis=0, dtype=np.float64)
            scale = values.std(axis=0, dtype=np.float64)
        if min_scale is not None:
            scale = np.maximum(scale, np.asarray(min_scale, dtype=np.float64))
        scale = np.where(scale < _MIN_SCALE, 1.0, scale)
        return cls(mean=mean, scale=scale)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale values of any shape ending in ``features``; returns float32."""
        return ((values - self.mean) / self.scale).astype(np.float32, copy=False)

    def inverse_transform(self, scaled: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform`."""
        return scaled * self.scale + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready form for the artifact metadata."""
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> StandardScaler:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=np.asarray(data["mean"], np.float64), scale=np.asarray(data["scale"], np.float64)
        )
