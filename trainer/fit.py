"""Fitting the LSTM autoencoder, setting the threshold and writing the artifact."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from detector.core.artifact import (
    Artifact,
    ArtifactError,
    InputRange,
    ScoreDistribution,
    ThresholdInfo,
    load_artifact,
    save_artifact,
    set_candidate,
)
from detector.core.drift import reference_distribution
from detector.core.episodes import rows_in_episodes
from detector.core.model import LSTMAutoencoder, ModelSpec, ScoreSpec
from detector.core.scaling import StandardScaler
from detector.core.scoring import Scorer, fit_mahalanobis, resolve_device
from detector.core.thresholds import MIN_POT_PEAKS, fit_threshold_with, summarize_errors
from trainer.config import ThresholdConfig, TrainerConfig
from trainer.data import (
    NormalData,
    drop_rows,
    fit_scaler,
    load_normal_files,
    split_by_time,
    windows_of,
)
from trainer.data import exclude_flagged as exclude_flagged_rows

__all__ = [
    "MAX_MAHALANOBIS_SENSORS",
    "MIN_STEPS_PER_EPOCH",
    "MIN_THRESHOLD_WINDOWS",
    "POOR_FIT_ERROR_SHARE",
    "FitResult",
    "TrainingError",
    "calibrate",
    "effective_batch_size",
    "fit",
    "fit_warnings",
    "holdout_flag_rate",
    "min_threshold_windows",
    "recorded_config",
    "refit_config",
    "require_threshold_windows",
    "require_writable",
    "train_autoencoder",
]

log = logging.getLogger(__name__)

Promotion = Literal["always", "auto", "never", "shadow"]

# A validation error this share of the data's variance or more means the model learned little
# (1.0: it reconstructs a window no better than the sensors' means would).
POOR_FIT_ERROR_SHARE = 0.9
# Fewer window scores than this place no threshold, wherever they come from: with 20 the 0.99
# quantile is already the largest score and the standard deviation is a guess.
MIN_THRESHOLD_WINDOWS = 20
# The Mahalanobis score's matrix lives in metadata.json (at most 4 MiB): 256 sensors is 1.3 MB.
MAX_MAHALANOBIS_SENSORS = 256


class TrainingError(Exception):
    """Training cannot proceed with this data and configuration."""


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` produced: where the artifact is and the headline numbers."""

    path: Path
    version: str
    threshold: float
    train_loss: float
    validation_loss: float
    epochs: int
    seconds: float
    promoted: bool = True
    holdout_flag_rate: float | None = None
    current_holdout_flag_rate: float | None = None
    train_flag_rate: float | None = None
    max_flag_rate: float | None = None
    validation_windows: int = 0
    # Training windows among the threshold's scores (0: validation windows only), and the factor
    # their scores were multiplied by.
    threshold_train_windows: int = 0
    train_score_factor: float = 1.0
    # ``promote="shadow"``: the new version is the registry's candidate, beside this current one.
    shadowed: bool = False
    current_version: str | None = None


def _version_id(config: TrainerConfig, data_sha: str) -> str:
    now = datetime.now(timezone.utc)
    digest = hashlib.sha256((config.model_dump_json() + data_sha).encode()).hexdigest()[:8]
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{digest}"


# Fewer optimiser steps than this per pass over the data shrink the batch: on a few hundred
# windows a batch of 256 is one or two steps an epoch, and the model barely moves.
MIN_STEPS_PER_EPOCH = 10


def effective_batch_size(windows: int, batch_size: int) -> int:
    """``batch_size``, or less so that a pass over ``windows`` takes ``MIN_STEPS_PER_EPOCH`` steps."""
    return max(1, min(batch_size, windows // MIN_STEPS_PER_EPOCH))


def train_autoencoder(
    model: LSTMAutoencoder,
    train: torch.Tensor,
    validation: torch.Tensor,
    config: TrainerConfig,
    device: torch.device,
    show_progress: bool = True,
) -> tuple[float, float, int]:
    """Adam on MSE with early stopping on validation loss; leaves the best weights in ``model``.

    Trains up to ``training.epochs`` passes, or more until ``training.min_steps`` optimiser steps
    are done, so small data gets as many steps as large; early stopping may end it only once the
    step budget is spent.
    Returns (train loss, best validation loss, epochs run).
    """
    settings = config.training
    batch_size = effective_batch_size(len(train), settings.batch_size)
    steps_per_epoch = -(-len(train) // batch_size)
    planned = max(settings.epochs, -(-settings.min_steps // steps_per_epoch))
    if batch_size < settings.batch_size or planned > settings.epochs:
        log.info(
            "%d windows: batch size %d, %d epochs (%d optimiser steps)",
            len(train),
            batch_size,
            planned,
            planned * steps_per_epoch,
        )
    generator = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    loss_fn = nn.MSELoss()
    best_state, best_val, stale, train_loss = (
        copy.deepcopy(model.state_dict()),
        float("inf"),
        0,
        0.0,
    )
    epochs = tqdm(range(1, planned + 1), desc="training", unit="epoch", disable=not show_progress)
    epoch = 0
    for epoch in epochs:
        model.train()
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), batch_size):
            batch = train[order[start : start + batch_size]].to(device)
            optimiser.zero_grad()
            loss = loss_fn(model(batch), batch)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        train_loss = total / len(train)
        val_loss = _mean_loss(model, validation, batch_size, device)
        epochs.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        log.info("epoch %d: train loss %.5f, validation loss %.5f", epoch, train_loss, val_loss)
        if val_loss < best_val - 1e-7:
            best_val, stale, best_state = val_loss, 0, copy.deepcopy(model.state_dict())
        else:
            stale += 1
            learned = epoch * steps_per_epoch >= settings.min_steps
            if stale >= settings.patience and learned:
                log.info("early stop after %d epochs (best validation loss %.5f)", epoch, best_val)
                break
    model.load_state_dict(best_state)
    return train_loss, best_val, epoch


@torch.inference_mode()
def _mean_loss(
    model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device
) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(device)
        total += float(nn.functional.mse_loss(model(batch), batch, reduction="sum"))
    return total / windows.numel()


def fit(
    config: TrainerConfig,
    show_progress: bool = True,
    data: NormalData | None = None,
    exclude_flagged: bool = False,
    promote: Promotion = "always",
    warm_start: Artifact | None = None,
    exclude_episodes: Mapping[str, list[tuple[float, float]]] | None = None,
) -> FitResult:
    """Train on normal data and write a new artifact version into ``config.output.dir``.

    ``data`` defaults to the configured files. With ``exclude_flagged`` the registry's current
    model first removes what it flags. ``promote``: ``always`` makes the new version current;
    ``auto`` only if it flags no more of the held-out normal windows than the current model
    does; ``never`` leaves ``current`` alone (``trainer promote`` can switch later); ``shadow``
    leaves it alone too and points the registry's ``candidate`` at the new version, which the
    daemon then scores in shadow, unless there is no current model yet: then the new version
    becomes current, as there is nothing to compare it with. ``warm_start``: start from that
    model's weights (same sensors and architecture) instead of fresh ones, and let early stopping
    end the fine-tune before ``training.min_steps``. ``exclude_episodes``: each device's alert
    episodes (:func:`~detector.core.episodes.episode_spans`), whose rows are left out first.
    """
    started = time.monotonic()
    require_writable(config.output.dir)
    np.random.seed(config.training.seed)
    device = resolve_device(config.training.device)
    data = data if data is not None else load_normal_files(config.data)
    current = _current_model(config.output.dir)
    if exclude_episodes is not None:
        table = data.table
        inside = rows_in_episodes(
            table["device_id"].astype(str).to_numpy(), table["ts"].to_numpy(), exclude_episodes
        )
        data = drop_rows(data, inside)
        log.info(
            "excluded %d rows inside %d alert episodes",
            int(inside.sum()),
            sum(len(spans) for spans in exclude_episodes.values()),
        )
    if exclude_flagged:
        if current is None:
            raise TrainingError(f"--exclude-flagged needs a current model in {config.output.dir}")
        data, dropped = exclude_flagged_rows(data, current)
        log.info("excluded %d rows flagged by model %s", dropped, current.version)
    split = split_by_time(data, config.training.validation_fraction)
    length, stride = config.window.length, config.window.stride
    scaler = fit_scaler(split, config.scaling)
    train_raw = windows_of(split.train, length, stride)
    val_raw = windows_of(split.validation, length, 1)
    if len(train_raw) == 0 or len(val_raw) == 0:
        raise TrainingError(
            f"not enough rows for windows of {length}: {len(train_raw)} training and "
            f"{len(val_raw)} validation windows; add data or shorten window.length"
        )
    input_range = _input_range(train_raw, val_raw)
    if config.training.max_train_windows and len(train_raw) > config.training.max_train_windows:
        keep = np.random.default_rng(config.training.seed).choice(
            len(train_raw), config.training.max_train_windows, replace=False
        )
        train_raw = train_raw[np.sort(keep)]
    # Before training: a threshold that cannot be placed should not cost the training time first.
    require_threshold_windows(len(val_raw), len(train_raw), config)
    log.info(
        "training on %d windows, validating on %d (length %d, %d sensors, %d devices) on %s",
        len(train_raw),
        len(val_raw),
        length,
        len(split.feature_names),
        split.summary.devices,
        device,
    )
    spec = ModelSpec(n_features=len(split.feature_names), **config.model.model_dump())
    # Seeded here, not only at the start: loading the current model builds one too, which draws
    # from the same generator, and a rerun must not depend on what the registry held.
    torch.manual_seed(config.training.seed)
    model = LSTMAutoencoder(spec)
    training = config
    if warm_start is not None:
        _require_warm_start_fits(warm_start, spec, split.feature_names)
        model.load_state_dict(warm_start.model.state_dict())
        # A fine-tune is done when validation stops improving; the step floor is for fresh fits.
        training = config.model_copy(
            update={"training": config.training.model_copy(update={"min_steps": 0})}
        )
    model = model.to(device)
    train_loss, val_loss, epochs = train_autoencoder(
        model,
        torch.from_numpy(scaler.transform(train_raw)),
        torch.from_numpy(scaler.transform(val_raw)),
        training,
        device,
        show_progress,
    )
    score_spec = _score_spec(model, scaler, train_raw, val_raw, config)
    new_scorer = Scorer(model, scaler, config.training.device, 4096, spec=score_spec)
    val_scores = new_scorer.window_scores(new_scorer.sensor_errors(val_raw))
    train_scores = new_scorer.window_scores(new_scorer.sensor_errors(train_raw))
    threshold_info = calibrate(val_scores, train_scores, config.threshold)
    threshold = threshold_info.value
    # Both shares are of the model's own normal windows scored as the daemon will score (training
    # scores uncorrected): how often it would page on data like what it was fitted on.
    new_rate = float(np.mean(val_scores > threshold))
    train_rate = float(np.mean(train_scores > threshold))
    max_rate = config.threshold.max_flag_rate
    log.info(
        "windows over the threshold: %s of %d training, %s of %d validation "
        "(threshold.max_flag_rate %s)",
        _percent(train_rate),
        len(train_scores),
        _percent(new_rate),
        len(val_scores),
        _percent(max_rate),
    )
    metadata = {
        "version": _version_id(config, split.summary.sha256),
        "created_at": datetime.now(timezone.utc),
        "feature_names": split.feature_names,
        "window_length": length,
        "model": spec,
        "scoring": score_spec,
        "scaler": scaler.to_dict(),
        "threshold": threshold_info,
        "training_data": split.summary,
        "score_distribution": _score_distribution(val_scores),
        "input_range": input_range,
        "validation": {
            "train_loss": train_loss,
            "validation_loss": val_loss,
            "epochs": float(epochs),
            "train_windows": float(len(train_raw)),
            "validation_windows": float(len(val_raw)),
        },
        "torch_version": torch.__version__,
        "training_config": recorded_config(config),
    }
    metadata["validation"].update(
        {
            "holdout_flag_rate": new_rate,
            "train_flag_rate": train_rate,
            "max_flag_rate": max_rate,
            "train_error_share": train_loss / _variance(scaler.transform(train_raw)),
            "validation_error_share": val_loss / _variance(scaler.transform(val_raw)),
        }
    )
    for warning in fit_warnings(metadata["validation"]):
        log.warning(warning)
    current_rate = None
    if current is not None and current.metadata.feature_names == split.feature_names:
        current_rate = holdout_flag_rate(
            Scorer.from_artifact(current, config.training.device, 4096),
            current.metadata.threshold.value,
            windows_of(split.validation, current.metadata.window_length, 1),
        )
        metadata["validation"]["current_model_holdout_flag_rate"] = current_rate
        log.info(
            "held-out normal windows flagged: new %.4f, current %s %.4f",
            new_rate,
            current.version,
            current_rate,
        )
    shadowed = promote == "shadow" and current is not None
    promoted = (
        promote == "always"
        or (promote == "shadow" and current is None)
        or (promote == "auto" and (current_rate is None or new_rate <= current_rate))
    )
    path = save_artifact(config.output.dir, metadata, model.cpu(), make_current=promoted)
    if shadowed:
        _make_candidate(config.output.dir, metadata["version"])
    seconds = time.monotonic() - started
    log.info(
        "wrote %s (threshold %.5g) in %.1f s; %s",
        path,
        threshold,
        seconds,
        "now current" if promoted else "candidate" if shadowed else "current model kept",
    )
    params = threshold_info.params
    return FitResult(
        path,
        metadata["version"],
        threshold,
        train_loss,
        val_loss,
        epochs,
        seconds,
        promoted,
        new_rate,
        current_rate,
        train_rate,
        max_rate,
        len(val_raw),
        int(params.get("train_windows", 0)),
        params.get("train_score_factor", 1.0),
        shadowed,
        None if current is None else current.version,
    )


def recorded_config(config: TrainerConfig) -> dict[str, Any]:
    """What an artifact records of how it was trained: every setting but the training files and
    the registry, which a refit on newer data replaces (:func:`refit_config`). A scaling
    reference (``scaling.reference_paths``) is recorded as it was named: a refit reads it there."""
    return config.model_dump(mode="json", exclude={"data": {"paths"}, "output": True})


def refit_config(recorded: Mapping[str, Any], registry: Path) -> TrainerConfig:
    """The trainer settings an artifact recorded (:func:`recorded_config`), writing to ``registry``.

    The data is handed to :func:`fit` directly, so the files are a placeholder that is never read;
    the device is ``auto``, since the machine that refits may lack the one the model trained on.
    """
    settings = dict(recorded)
    settings["training"] = {**settings.get("training", {}), "device": "auto"}
    settings["data"] = {**settings.get("data", {}), "paths": ["<refit: data given in memory>"]}
    settings["output"] = {"dir": str(registry)}
    return TrainerConfig.model_validate(settings)


def _require_warm_start_fits(start: Artifact, spec: ModelSpec, feature_names: list[str]) -> None:
    """Raise :class:`TrainingError` unless ``start``'s weights fit a model of ``spec``."""
    meta = start.metadata
    if meta.model != spec or meta.feature_names != feature_names:
        raise TrainingError(
            f"cannot warm-start from {meta.version}: its sensors or architecture differ "
            "(train a fresh model instead)"
        )


def _make_candidate(registry: Path, version: str) -> None:
    """Point the registry's candidate at the version just saved, a refusal as one line."""
    try:
        set_candidate(registry, version)
    except OSError as exc:
        raise TrainingError(
            f"saved {version} in {registry} but cannot write its candidate pointer "
            f"({exc.strerror or exc}): `trainer shadow {version} --models {registry}` retries"
        ) from None


def _input_range(*windows: np.ndarray) -> InputRange:
    """Each sensor's least and greatest reading over every window the fit sees."""
    rows = np.concatenate([w.reshape(-1, w.shape[-1]) for w in windows]).astype(np.float64)
    return InputRange(low=rows.min(axis=0).tolist(), high=rows.max(axis=0).tolist())


def _score_distribution(scores: np.ndarray) -> ScoreDistribution:
    """The validation scores' bins, the reference of the daemon's drift watch."""
    edges, shares = reference_distribution(scores)
    return ScoreDistribution(edges=edges, shares=shares, windows=len(scores))


def fit_warnings(validation: Mapping[str, float]) -> list[str]:
    """What a user must hear about a fit: it barely learned, or it flags too much normal data.

    ``validation`` is the artifact's ``validation`` section (error shares, the shares of its own
    training and validation windows the new model flags and the ``max_flag_rate`` they may reach).
    A threshold from too few validation windows is :func:`calibrate`'s warning.
    """
    warnings = []
    share = validation["validation_error_share"]
    if share >= POOR_FIT_ERROR_SHARE:
        warnings.append(
            f"the model barely learned: its validation error is {share:.0%} of the data's "
            "variance (100% = it reconstructs nothing); train longer (training.epochs), use a "
            "smaller training.batch_size, or add data"
        )
    limit = validation["max_flag_rate"]
    for part in ("train", "holdout"):
        rate = validation[f"{part}_flag_rate"]
        if rate > limit:
            name = "training" if part == "train" else "validation"
            warnings.append(
                f"the model flags {_percent(rate)} of its own {name} windows (more than "
                f"threshold.max_flag_rate {_percent(limit)}): it will page on normal data like "
                "this; raise threshold.margin or add data"
            )
    return warnings


def _percent(share: float) -> str:
    """A share as a percentage with three significant digits: 0.0005 is 0.05 %, not 0.0 %."""
    return f"{share * 100:.3g}%"


def _variance(scaled_windows: np.ndarray) -> float:
    """Mean per-sensor variance of scaled windows: what reconstructing nothing would cost."""
    flat = scaled_windows.reshape(-1, scaled_windows.shape[-1])
    return max(float(flat.var(axis=0, dtype=np.float64).mean()), np.finfo(np.float32).tiny)


def holdout_flag_rate(scorer: Scorer, threshold: float, windows: np.ndarray) -> float:
    """Share of held-out normal windows a model scores over its threshold (lower is better)."""
    if len(windows) == 0:
        return 0.0
    return float(np.mean(scorer.window_scores(scorer.sensor_errors(windows)) > threshold))


def min_threshold_windows(settings: ThresholdConfig) -> int:
    """The fewest window scores ``settings.method`` can place a threshold on.

    ``pot`` needs :data:`MIN_POT_PEAKS` scores above its ``init_quantile``: of ``n`` distinct
    scores at least ``(n - 1) * (1 - init_quantile)`` are.
    """
    if settings.method == "pot":
        peaks = math.ceil(MIN_POT_PEAKS / (1.0 - settings.init_quantile)) + 1
        return max(MIN_THRESHOLD_WINDOWS, peaks)
    return MIN_THRESHOLD_WINDOWS


def require_threshold_windows(validation: int, train: int, config: TrainerConfig) -> None:
    """Refuse, naming the fix, when even validation and training windows together are too few.

    :func:`calibrate` can make up for few validation windows with training ones; below
    :func:`min_threshold_windows` of both there is nothing to make up with.
    """
    settings = config.threshold
    needed = min_threshold_windows(settings)
    if validation + train >= needed:
        return
    fixes = ["add data", "shorten window.length"]
    if config.window.stride > 1:
        fixes.append(f"lower window.stride (now {config.window.stride})")
    if settings.method == "pot":
        fixes.append(f"lower threshold.init_quantile (now {settings.init_quantile})")
    raise TrainingError(
        f"too few windows for a {settings.method} threshold: {validation} validation and "
        f"{train} training windows, {needed} needed together; "
        f"{', '.join(fixes[:-1])} or {fixes[-1]}"
    )


def calibrate(
    validation: np.ndarray, train: np.ndarray, settings: ThresholdConfig
) -> ThresholdInfo:
    """The threshold fitted on validation window scores, as the artifact's ``threshold`` section.

    With fewer validation scores than ``settings.min_calibration_windows`` (or than the method
    needs, :func:`min_threshold_windows`) the training scores join them, multiplied by the ratio
    of the validation to the training median score (1 at least, ``max_train_score_factor`` at
    most): the model saw those windows, so they score lower than the unseen normal data the
    daemon will score. The medians are robust to
    the tail being fitted; a ratio below 1 means there is no optimism to undo. ``params`` then
    records ``validation_windows``, ``train_windows`` and ``train_score_factor``, and a warning
    states the correction. ``error_summary`` summarises the scores the threshold was fitted on.
    Assumes :func:`require_threshold_windows` passed.
    """
    params: dict[str, float] = {
        "quantile": {"quantile": settings.quantile},
        "mean_std": {"k": settings.k},
        "pot": {"risk": settings.risk, "init_quantile": settings.init_quantile},
    }[settings.method]
    params["margin"] = settings.margin
    scores = validation
    method_minimum = min_threshold_windows(settings)
    if len(validation) < max(settings.min_calibration_windows, method_minimum):
        tiny = float(np.finfo(np.float32).tiny)
        factor = float(np.median(validation)) / max(float(np.median(train)), tiny)
        factor = min(max(1.0, factor), settings.max_train_score_factor)
        scores = np.concatenate([validation, train * factor])
        params.update(
            validation_windows=float(len(validation)),
            train_windows=float(len(train)),
            train_score_factor=factor,
        )
        minimum = (
            f"threshold.min_calibration_windows {settings.min_calibration_windows}"
            if settings.min_calibration_windows >= method_minimum
            else f"the {method_minimum} {settings.method} needs"
        )
        log.warning(
            "the threshold comes from %d validation windows (fewer than %s) and %d training "
            "windows, whose scores were multiplied by %.3g (validation / training median score) "
            "because the model saw them: its false-alarm rate is an estimate; add data or raise "
            "training.validation_fraction for a threshold on unseen windows only",
            len(validation),
            minimum,
            len(train),
            factor,
        )
    return ThresholdInfo(
        method=settings.method,
        value=fit_threshold_with(scores, settings),
        params=params,
        error_summary=summarize_errors(scores),
    )


def require_writable(registry: Path) -> None:
    """Refuse, before any training, a registry directory the new version could not be saved in."""
    existing = registry
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # created when the version is saved
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise TrainingError(
            f"cannot write the model registry {registry} ({exc.strerror or exc}): set "
            "output.dir (TRAINER_OUTPUT__DIR) to a directory this user may write"
        ) from None


def _current_model(registry: Path) -> Artifact | None:
    try:
        return load_artifact(registry)
    except ArtifactError:
        return None


def _score_spec(
    model: LSTMAutoencoder,
    scaler: StandardScaler,
    train_raw: np.ndarray,
    val_raw: np.ndarray,
    config: TrainerConfig,
) -> ScoreSpec:
    """How errors become window scores.

    ``normalise`` divides each sensor's error by its mean validation error; ``mahalanobis`` is
    fitted on the training windows' errors, so that the threshold, fitted on validation scores,
    judges it on windows it did not see.
    """
    aggregation = config.scoring.aggregation
    scorer = Scorer(model, scaler, config.training.device, max_batch_size=4096)
    divisors = None
    if config.scoring.normalise:
        raw = scorer.sensor_errors(val_raw)
        divisors = np.maximum(raw.mean(axis=0, dtype=np.float64), np.finfo(np.float32).tiny)
    if aggregation != "mahalanobis":
        sensor_scale = None if divisors is None else divisors.tolist()
        return ScoreSpec(aggregation=aggregation, sensor_scale=sensor_scale)
    sensors = train_raw.shape[-1]
    if sensors > MAX_MAHALANOBIS_SENSORS:
        raise TrainingError(
            f"scoring.aggregation mahalanobis stores a {sensors} x {sensors} matrix in the "
            f"artifact; at most {MAX_MAHALANOBIS_SENSORS} sensors: use max"
        )
    errors = scorer.sensor_errors(train_raw)
    if divisors is not None:
        errors = errors / divisors
    center, whitening = fit_mahalanobis(errors)
    return ScoreSpec(
        aggregation=aggregation,
        sensor_scale=None if divisors is None else divisors.tolist(),
        error_center=center,
        error_whitening=whitening,
    )
