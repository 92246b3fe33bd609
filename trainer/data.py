"""Training data: load normal readings, split each device in time, build scaled windows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from detector.core.artifact import Artifact, DataSummary, sha256_file
from detector.core.datafiles import DataFileError, load_table, sensor_columns
from detector.core.scaling import StandardScaler
from detector.core.scoring import Scorer
from detector.core.windows import sliding_windows, window_end_indices
from trainer.config import DataConfig, ScalingConfig

__all__ = [
    "NormalData",
    "SplitData",
    "drop_rows",
    "exclude_flagged",
    "fit_scaler",
    "load_normal_data",
    "load_normal_files",
    "split_by_time",
    "windows_of",
]


@dataclass(frozen=True)
class SplitData:
    """Per-device train and validation segments (raw values, time order) and the feature order."""

    feature_names: list[str]
    train: list[np.ndarray]
    validation: list[np.ndarray]
    summary: DataSummary


@dataclass(frozen=True)
class NormalData:
    """Normal readings (``ts``, ``device_id``, sensors) and where they came from."""

    table: pd.DataFrame
    sources: list[str]
    sha256: str


def load_normal_files(config: DataConfig, profile: str | None = None) -> NormalData:
    """The configured files as :class:`NormalData`, hashed by their bytes (and ``profile``).

    ``profile`` selects the rows of one device profile, as :func:`load_normal_data` says.
    """
    digest = hashlib.sha256()
    for path in config.paths:
        digest.update(sha256_file(path).encode())
    if profile is not None:
        # Two profiles trained from one fleet file are different training data.
        digest.update(f"\0profile={profile}".encode())
    return NormalData(
        load_normal_data(config, profile), [str(p) for p in config.paths], digest.hexdigest()
    )


def load_normal_data(config: DataConfig, profile: str | None = None) -> pd.DataFrame:
    """All configured files as one table (``ts``, ``device_id``, sensors), NaN rows dropped.

    With ``config.profile_column``, ``profile`` is required and only rows whose profile column
    equals it are kept. A fleet file is wide with every kind's sensors, NaN where a kind has
    none: without ``config.sensors`` the sensors entirely NaN in the kept rows are dropped, so
    the profile trains on its own sensors.
    """
    column = config.profile_column
    if column is not None and profile is None:
        raise DataFileError(
            f"data.profile_column {column!r} is set: name the profile to train (--profile NAME)"
        )
    extra = [column] if column is not None else []
    tables = [
        load_table(
            path,
            time_column=config.time_column,
            device_column=config.device_column,
            sensors=config.sensors,
            extra_columns=extra,
        )
        for path in config.paths
    ]
    names = sensor_columns(tables[0])
    for path, table in zip(config.paths[1:], tables[1:], strict=True):
        if sensor_columns(table) != names:
            raise DataFileError(f"{path}: sensors {sensor_columns(table)} differ from {names}")
    table = pd.concat(tables, ignore_index=True)
    if column is not None and profile is not None:
        table = _profile_rows(table, column, profile)
        if config.sensors is None:
            table = table.loc[:, table.notna().any(axis=0)]
            if not sensor_columns(table):
                raise DataFileError(f"the rows of profile {profile!r} have no sensor values")
    table = table.dropna()
    return table.sort_values(["device_id", "ts"], kind="stable").reset_index(drop=True)


def _profile_rows(table: pd.DataFrame, column: str, profile: str) -> pd.DataFrame:
    """The rows of ``table`` whose ``column`` is ``profile``, without that column."""
    values = table[column]
    if pd.api.types.is_numeric_dtype(values):
        # A numeric profile column (profiles named 1, 2...) was read as numbers by load_table.
        selected = values == pd.to_numeric(profile, errors="coerce")
    else:
        selected = values.astype(str) == profile
    if not selected.any():
        raise DataFileError(
            f"no rows of profile {profile!r} (data.profile_column {column!r}) in the training data"
        )
    return table.loc[selected].drop(columns=column)


def split_by_time(data: NormalData, validation_fraction: float) -> SplitData:
    """Each device's first ``1 - validation_fraction`` of rows train, the rest validate."""
    table = data.table.dropna()
    if table.empty:
        raise DataFileError("no complete rows in the training data")
    names = sensor_columns(table)
    train, validation = [], []
    for _device, rows in table.groupby("device_id", sort=True):
        values = rows[names].to_numpy(dtype=np.float64)
        cut = round(len(values) * (1 - validation_fraction))
        train.append(values[:cut])
        validation.append(values[cut:])
    summary = DataSummary(
        rows=len(table),
        devices=table["device_id"].nunique(),
        time_start=float(table["ts"].min()),
        time_end=float(table["ts"].max()),
        sha256=data.sha256,
        files=data.sources,
    )
    return SplitData(names, train, validation, summary)


def exclude_flagged(data: NormalData, artifact: Artifact) -> tuple[NormalData, int]:
    """Drop rows inside windows the current model flags, so retraining does not learn faults.

    What is left is cut where rows were dropped (:func:`drop_rows`). Returns the data and the
    number of rows dropped.
    """
    meta = artifact.metadata
    length = meta.window_length
    scorer = Scorer.from_artifact(artifact, "cpu", max_batch_size=4096)
    table = data.table.dropna().reset_index(drop=True)
    flagged = np.zeros(len(table), dtype=bool)
    all_values = table[meta.feature_names].to_numpy(dtype=np.float32)
    stamps = table["ts"].to_numpy()
    for rows in table.groupby("device_id", sort=True).indices.values():
        rows = rows[np.argsort(stamps[rows], kind="stable")]
        if len(rows) < length:
            continue
        values = all_values[rows]
        scores = scorer.window_scores(scorer.sensor_errors(sliding_windows(values, length)))
        device_flagged = np.zeros(len(rows), dtype=bool)
        for end in window_end_indices(len(rows), length)[scores > meta.threshold.value]:
            device_flagged[end - length + 1 : end + 1] = True
        flagged[rows] = device_flagged
    return drop_rows(NormalData(table, data.sources, data.sha256), flagged), int(flagged.sum())


def drop_rows(data: NormalData, dropped: np.ndarray) -> NormalData:
    """``data`` without the rows where ``dropped`` is set, each device cut where rows went.

    The pieces become separate series (``<device>#<n>``), so no training window spans a removed
    stretch. ``dropped`` is aligned with ``data.table``'s rows.
    """
    pieces = []
    table = data.table.assign(_dropped=np.asarray(dropped, dtype=bool))
    for device, rows in table.groupby("device_id", sort=True):
        rows = rows.sort_values("ts", kind="stable")
        flagged_rows = rows["_dropped"].to_numpy()
        run_id = np.cumsum(flagged_rows)  # rows between two dropped stretches share an id
        kept = rows[~flagged_rows].drop(columns="_dropped").assign(segment=run_id[~flagged_rows])
        for segment, part in kept.groupby("segment", sort=True):
            pieces.append(part.drop(columns="segment").assign(device_id=f"{device}#{segment}"))
    out = pd.concat(pieces, ignore_index=True) if pieces else data.table.iloc[:0]
    return NormalData(out, data.sources, data.sha256)


def fit_scaler(split: SplitData, scaling: ScalingConfig | None = None) -> StandardScaler:
    """Scaler statistics from the training segments only (validation must stay unseen).

    With a reference recording configured, the scale is floored as :class:`ScalingConfig` says.
    """
    train = np.concatenate([s for s in split.train if len(s)])
    robust = scaling is not None and scaling.method == "robust"
    if scaling is None or not scaling.reference_paths or scaling.relative_floor == 0:
        return StandardScaler.fit(train, robust=robust)
    reference = pd.concat(
        [load_table(path, sensors=split.feature_names) for path in scaling.reference_paths]
    )[split.feature_names].dropna()
    if reference.empty:
        raise DataFileError("no complete rows in the scaling reference data")
    values = reference.to_numpy(dtype=np.float64)
    level = np.abs(values.mean(axis=0))
    # A sensor centred on zero in the reference has no meaningful relative spread: no floor.
    variation = np.divide(values.std(axis=0), level, out=np.zeros_like(level), where=level > 0)
    floor = scaling.relative_floor * variation * np.abs(train.mean(axis=0))
    return StandardScaler.fit(train, min_scale=floor, robust=robust)


def windows_of(segments: list[np.ndarray], length: int, stride: int) -> np.ndarray:
    """Windows of every segment, concatenated; windows never cross two devices."""
    parts = [
        sliding_windows(segment, length, stride) for segment in segments if len(segment) >= length
    ]
    if not parts:
        return np.empty((0, length, segments[0].shape[1] if segments else 0), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)
