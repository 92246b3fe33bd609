"""One device profile's state: its devices, pending windows, model, drift watch and shadow.

A :class:`Lane` holds everything that belongs to one profile: the devices routed to it (their
windows, admission and alert state in a :class:`~detector.core.devices.DeviceRegistry`), the
ready windows waiting for a batch (:class:`~detector.stages.window.PendingWindows`), the model
that scores them and the alert rule that judges them, the drift watch over its live scores and,
while the profile's registry names a ``candidate``, the candidate model scored in shadow on the
same windows. The stages (:mod:`detector.stages`) read and update it; the
:class:`~detector.pipeline.Pipeline` wires them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from detector.config import AlertConfig, DetectorConfig
from detector.core.admission import Admitter
from detector.core.artifact import Artifact
from detector.core.devices import DeviceRegistry
from detector.core.drift import DriftMonitor
from detector.core.judge import judge_levels
from detector.core.scoring import Scorer
from detector.core.windows import WindowStore
from detector.sensor import Sensor
from detector.stages.window import PendingWindows

__all__ = ["Lane", "Model", "PollCounts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """A loaded model version and the scorer that runs it."""

    artifact: Artifact
    scorer: Scorer

    @property
    def version(self) -> str:
        """The artifact's version id."""
        return self.artifact.version


@dataclass
class PollCounts:
    """What a lane admitted during one poll, reported once at its end."""

    accepted: int = 0
    imputed: int = 0
    resets: dict[str, int] = field(default_factory=dict)


class Lane:
    """One profile: its devices, pending windows, model, alert rule, drift watch and shadow."""

    def __init__(
        self, name: str, config: DetectorConfig, model: Model, sensor: Sensor | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.alerts: AlertConfig = config.alerts_for(name)
        self.sensor = sensor or Sensor()
        meta = model.artifact.metadata
        windows = config.windows
        store = WindowStore(
            meta.window_length,
            len(meta.feature_names),
            stride=windows.stride,
            max_devices=windows.max_devices,
        )
        self.registry: DeviceRegistry = DeviceRegistry(
            store,
            Admitter(windows.policy(), store, meta.feature_names),
            self.alerts.judge(judge_levels(model.artifact.metadata)),
            windows.capacity_min_idle_s,
        )
        self.pending = PendingWindows(
            config.scoring.max_batch_size,
            config.scoring.max_wait_ms,
            meta.window_length,
            len(meta.feature_names),
        )
        self.counts = PollCounts()
        self.drift: DriftMonitor | None = None
        self._candidate: Model | None = None
        self.batches_scored = 0
        self.install(model)

    @property
    def model(self) -> Model:
        """The model whose alerts are published."""
        return self._model

    @property
    def candidate(self) -> Model | None:
        """The model scored in shadow, if any."""
        return self._candidate

    @property
    def feature_names(self) -> list[str]:
        """The model's feature order (what the parser maps this profile's sensors to)."""
        return self._model.artifact.metadata.feature_names

    def install(self, model: Model) -> None:
        """Score every following window with ``model``; call with nothing pending.

        Alert state carries over; thresholds calibrate and adapt again, the drift watch starts
        over (the new model's scores are not comparable with the old one's), and so does the
        shadow comparison.
        """
        self._model = model
        self.registry.judge.install(judge_levels(model.artifact.metadata))
        self.drift = self._drift_monitor(model.artifact)
        self._drift_score = float("nan")
        if self._candidate is not None:
            self.shadow(self._candidate)

    def shadow(self, candidate: Model | None) -> None:
        """Score every following window with ``candidate`` too (``None``: stop); call with nothing pending.

        The candidate judges with its own threshold and alert state, from a clean start; what it
        would have raised is counted (:meth:`Sensor.shadow_alert`), never published.
        """
        self._candidate = candidate
        if candidate is None:
            self.registry.shadow = None
        else:
            self.registry.shadow = self.alerts.judge(judge_levels(candidate.artifact.metadata))
        self.sensor.shadow(self._model.version, None if candidate is None else candidate.version)

    def _drift_monitor(self, artifact: Artifact) -> DriftMonitor | None:
        reference = artifact.metadata.score_distribution
        settings = self.config.drift
        if settings.windows == 0:
            return None
        if reference is None:
            log.warning(
                "model %s of profile %s has no validation score distribution (trained before "
                "drift watch): no drift reported until it is retrained",
                artifact.version,
                self.name,
            )
            return None
        return DriftMonitor(
            reference.edges, reference.shares, settings.windows, settings.min_windows
        )

    def drift_score(self) -> float:
        """The drift watch's PSI (NaN while it has too few scores or the model no reference).

        As of the last scored batch: the metrics thread reads it at each scrape, and a value
        taken while :meth:`observe_drift` updates the monitor could be half of each.
        """
        return self._drift_score

    def observe_drift(self, scores: np.ndarray) -> None:
        """Feed calm live windows' scores to the drift watch (if any); its PSI is then current."""
        if self.drift is not None:
            self.drift.observe(scores)
            self._drift_score = self.drift.psi()
