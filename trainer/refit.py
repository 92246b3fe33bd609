"""Scheduled refits for the backtest: the trainer's own fit, as the retrain CronJob runs it.

``detector evaluate`` (:class:`detector.evaluate.Backtest`) hands a :class:`TrainerRefitter` the
rows the detector has seen; it fits a candidate with the settings the current model recorded
(:func:`~trainer.fit.refit_config`), leaving out the readings inside the detector's alert
episodes (``retrain.exclude: alerts``, as ``trainer fit --exclude-alerts`` does in
deploy/k8s/trainer-cronjob.yaml) and promoting only what the trainer's gate lets through
(``--promote auto``), into a registry of its own.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from detector.config import RetrainConfig
from detector.core.artifact import (
    Artifact,
    ArtifactError,
    load_artifact,
    read_metadata,
    set_current,
)
from detector.core.datafiles import DataFileError
from detector.evaluate import Refit, RefitError
from trainer.data import NormalData, drop_rows
from trainer.fit import TrainingError, fit, refit_config
from trainer.registry import read_current

__all__ = ["TrainerRefitter"]

log = logging.getLogger(__name__)

# What a refit can fail with and the backtest goes on: the trainer refusing the data, settings
# recorded by another trainer version (a pydantic error is a ValueError), a device this machine
# lacks, a registry it cannot write.
_REFIT_FAILURES = (TrainingError, DataFileError, ArtifactError, ValueError, RuntimeError, OSError)


class TrainerRefitter:
    """Fits refits into ``registry`` with the trainer, as the retrain schedule ``settings`` says."""

    def __init__(self, registry: Path, settings: RetrainConfig) -> None:
        self.registry = registry
        self.settings = settings

    def __call__(
        self, current: Artifact, rows: pd.DataFrame, in_episodes: np.ndarray, at: float
    ) -> tuple[Artifact | None, Refit]:
        """Fit on ``rows`` (all seen before ``at``); the new model when it replaces ``current``.

        ``in_episodes`` marks the rows inside the detector's alert episodes, left out with
        ``exclude: alerts`` (the rest cut where they were, as ``trainer fit`` cuts). A fit that
        fails (too few rows, say) keeps ``current``: the refit is reported with its reason, and
        the backtest goes on.
        """
        recorded = current.metadata.training_config
        if recorded is None:
            raise RefitError(f"model {current.version} does not record how it was trained")
        warm = self.settings.warm_start
        exclude = self.settings.exclude
        digest = hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy())
        data = NormalData(rows, [f"seen before {at!r}"], digest.hexdigest())
        if exclude == "alerts":
            data = drop_rows(data, in_episodes)
        data = NormalData(data.table.dropna(), data.sources, data.sha256)
        started = time.perf_counter()
        try:
            self._make_current(current)
            result = fit(
                refit_config(recorded, self.registry),
                show_progress=False,
                data=data,
                exclude_flagged=exclude == "flagged",
                promote=self.settings.promote,
                warm_start=current if warm else None,
            )
            trained = read_metadata(result.path).training_data.rows
            fitted = load_artifact(result.path) if result.promoted else None
        except _REFIT_FAILURES as exc:
            seconds = time.perf_counter() - started
            log.warning("refit at %s on %d rows failed: %s", at, len(rows), exc)
            return None, Refit(at, len(rows), len(data.table), seconds, warm, None, False, str(exc))
        seconds = time.perf_counter() - started
        current_rate = result.current_holdout_flag_rate
        detail = (
            f"held-out normal windows flagged: new {result.holdout_flag_rate:.4f}, current "
            f"{'-' if current_rate is None else f'{current_rate:.4f}'}"
        )
        refit = Refit(
            at, len(rows), trained, seconds, warm, result.version, result.promoted, detail
        )
        return fitted, refit

    def _make_current(self, current: Artifact) -> None:
        """Put ``current`` in the registry as its current model (what the fit compares with)."""
        self.registry.mkdir(parents=True, exist_ok=True)
        if read_current(self.registry) == current.version:
            return
        target = self.registry / current.version
        if not target.exists():
            shutil.copytree(current.path, target)
        set_current(self.registry, current.version)
