"""Classical baseline for the quality benchmark: PCA with Hotelling T² and Q (SPE) limits.

The literature's reference detector on TEP ("T-squared+Q (PCA)" on the SKAB leaderboard, "PCA
reconstruction error" on SMD), computed on the same tasks and rows as the LSTM autoencoder. It is
point-wise: every row is scored on its own, with no window and no warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

__all__ = ["PCABaseline", "Rule"]

Rule = Literal["t2+q", "q"]
"""``"t2+q"``: flag when T² or Q is over its limit; ``"q"``: Q alone (PCA reconstruction error)."""

# Like detector.core.scaling: a sensor that never moved in the fitting rows gets unit scale, so it
# neither divides by zero nor turns every later wiggle into an enormous score.
_MIN_SCALE = 1e-8
# Eigenvalues below this share of the largest are numerically zero: dividing T² by them would
# only amplify rounding error, so such directions always go to the residual (Q) part.
_RELATIVE_EIGEN_TOL = 1e-10


def _rows(name: str, values: npt.ArrayLike, features: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (rows, sensors) array, got shape {array.shape}")
    if features is not None and array.shape[1] != features:
        raise ValueError(f"{name} has {array.shape[1]} sensors, the model was fitted on {features}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


@dataclass(frozen=True)
class PCABaseline:
    """A fitted PCA monitor; build it with :meth:`fit`.

    ``components`` (sensors x k) are the retained loadings with their ``eigenvalues``;
    ``residual`` (sensors x (sensors - k)) spans the rest. ``t2_limit`` and ``q_limit`` are the
    control limits of the two statistics.
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    residual: np.ndarray
    t2_limit: float
    q_limit: float

    @classmethod
    def fit(
        cls,
        train_values: npt.ArrayLike,
        variance: float = 0.95,
        confidence: float = 0.99,
        validation_fraction: float = 0.2,
    ) -> PCABaseline:
        """Fit on normal rows ``(n, sensors)`` in time order.

        The first ``1 - validation_fraction`` of the rows (the fitting part) give the per-sensor
        mean and standard deviation (floored, so a constant sensor gets unit scale) and the
        principal components of the standardised rows; the fewest components that explain
        ``variance`` of the total variance are kept. Each control limit is the ``confidence``
        empirical quantile of its statistic on the remaining last ``validation_fraction`` of the
        rows, which the components never saw. Empirical rather than the F / χ² limits, because
        those assume Gaussian, independent rows and sensor data are neither; held-out rows make
        the nominal false-alarm rate hold for data like them, as the LSTM autoencoder's
        validation threshold does. Rows pooled from several devices may be passed together.
        """
        values = _rows("train_values", train_values)
        if not 0 < variance <= 1:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
        if not 0 < confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
        n_validation = round(len(values) * validation_fraction)
        n_fit = len(values) - n_validation
        if n_validation < 1 or n_fit < 2:
            raise ValueError(
                f"{len(values)} rows give {n_fit} to fit and {n_validation} to validate; "
                "need at least 2 and 1"
            )
        fitting, validation = values[:n_fit], values[n_fit:]
        mean = fitting.mean(axis=0)
        scale = fitting.std(axis=0)
        scale = np.where(scale < _MIN_SCALE, 1.0, scale)
        z = (fitting - mean) / scale
        eigenvalues, vectors = np.linalg.eigh(z.T @ z / (n_fit - 1))
        # eigh sorts ascending; rounding can leave tiny negative values for null directions.
        eigenvalues, vectors = np.clip(eigenvalues[::-1], 0.0, None), vectors[:, ::-1]
        total = eigenvalues.sum()
        if total > 0:
            explained = np.cumsum(eigenvalues) / total
            wanted = int(np.searchsorted(explained, variance)) + 1
            k = min(wanted, int(np.sum(eigenvalues > _RELATIVE_EIGEN_TOL * eigenvalues[0])))
        else:
            k = 0  # every sensor constant: no variance to model, everything is residual
        unlimited = cls(
            mean=mean,
            scale=scale,
            components=vectors[:, :k],
            eigenvalues=eigenvalues[:k],
            residual=vectors[:, k:],
            t2_limit=np.inf,
            q_limit=np.inf,
        )
        t2, q = unlimited.scores(validation)
        return replace(
            unlimited,
            t2_limit=float(np.quantile(t2, confidence)),
            q_limit=float(np.quantile(q, confidence)),
        )

    @property
    def n_components(self) -> int:
        """Number of retained principal components."""
        return int(self.components.shape[1])

    def scores(self, values: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Per-row Hotelling T² and Q (squared prediction error) of ``values`` ``(n, sensors)``.

        T² is the sum over retained components of score² / eigenvalue; Q is the squared length
        of the standardised row's part outside the retained components.
        """
        z = (_rows("values", values, len(self.mean)) - self.mean) / self.scale
        # Q from the residual basis, not |z - reconstruction|^2: with every component kept it is
        # exactly 0 instead of rounding noise that a limit of ~0 would then flag.
        t2 = np.sum((z @ self.components) ** 2 / self.eigenvalues, axis=1)
        q = np.sum((z @ self.residual) ** 2, axis=1)
        return t2, q

    def flags(self, values: npt.ArrayLike, rule: Rule = "t2+q") -> np.ndarray:
        """Boolean flag per row: over a limit by ``rule`` (see :data:`Rule`)."""
        if rule not in get_args(Rule):
            raise ValueError(f"rule must be one of {get_args(Rule)}, got {rule!r}")
        t2, q = self.scores(values)
        over_q = q > self.q_limit
        return over_q | (t2 > self.t2_limit) if rule == "t2+q" else over_q
