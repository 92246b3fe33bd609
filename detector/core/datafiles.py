"""Reading wide-format sensor tables (CSV or Parquet) for the trainer and the replay tool.

Wide format: a time column, an optional device column, then one numeric column per sensor.
SKAB files (``;``-separated, ``datetime`` column, ``anomaly``/``changepoint`` labels) load as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "LABEL_COLUMNS",
    "TIME_COLUMN_CANDIDATES",
    "DataFileError",
    "load_table",
    "sensor_columns",
]

TIME_COLUMN_CANDIDATES = ("ts", "timestamp", "time", "datetime")
LABEL_COLUMNS = frozenset({"anomaly", "changepoint", "label", "labels", "kind"})


class DataFileError(ValueError):
    """A data file cannot be used; the message says which file and why."""


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    with path.open() as handle:
        header = handle.readline()
    separator = ";" if header.count(";") > header.count(",") else ","
    return pd.read_csv(path, sep=separator)


def _epoch_seconds(column: pd.Series, path: Path) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.float64)
    try:
        moments = pd.to_datetime(column, utc=True)
    except (ValueError, TypeError) as exc:
        raise DataFileError(
            f"{path}: time column {column.name!r} is not parseable: {exc}"
        ) from None
    return (moments - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def load_table(
    path: Path,
    *,
    time_column: str | None = None,
    device_column: str | None = None,
    sensors: Sequence[str] | None = None,
    default_device: str | None = None,
    extra_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Load a file into columns ``ts`` (epoch seconds), ``device_id``, sensor columns, extras.

    Sensors default to every numeric column that is not time, device or a label column. Without a
    device column every row belongs to ``default_device`` (the file's stem if not given).
    ``extra_columns`` (e.g. labels) are carried along as they are, after the sensors. Rows are
    sorted by device and time.
    """
    path = Path(path)
    frame = _read_frame(path)
    if time_column is None:
        time_column = next((c for c in TIME_COLUMN_CANDIDATES if c in frame.columns), None)
        if time_column is None:
            raise DataFileError(
                f"{path}: no time column (tried {', '.join(TIME_COLUMN_CANDIDATES)})"
            )
    elif time_column not in frame.columns:
        raise DataFileError(f"{path}: time column {time_column!r} not found")
    if device_column is None and "device_id" in frame.columns:
        device_column = "device_id"
    if device_column is not None and device_column not in frame.columns:
        raise DataFileError(f"{path}: device column {device_column!r} not found")
    if sensors is None:
        skip = {time_column, device_column} | LABEL_COLUMNS
        sensors = [
            c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])
        ]
    missing = [name for name in sensors if name not in frame.columns]
    if missing:
        raise DataFileError(f"{path}: sensor columns not found: {missing}")
    absent = [name for name in extra_columns if name not in frame.columns]
    if absent:
        raise DataFileError(f"{path}: columns not found: {absent}")
    if not sensors:
        raise DataFileError(f"{path}: no numeric sensor columns")
    devices = (
        frame[device_column].astype(str)
        if device_column is not None
        else pd.Series(default_device or path.stem, index=frame.index)
    )
    table = pd.DataFrame({"ts": _epoch_seconds(frame[time_column], path), "device_id": devices})
    for name in sensors:
        table[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    for name in extra_columns:
        if name not in table.columns:
            table[name] = frame[name].to_numpy()
    return table.sort_values(["device_id", "ts"], kind="stable").reset_index(drop=True)


def sensor_columns(table: pd.DataFrame) -> list[str]:
    """The sensor columns of a table returned by :func:`load_table`, in order."""
    return [c for c in table.columns if c not in ("ts", "device_id")]
