"""Benchmark datasets as train/stream tasks, each loaded by the protocol of its README.

A :class:`Dataset` is a list of :class:`Task` s; a task is one model, fitted on its ``train``
frame (normal data only) and then evaluated on each of its :class:`Stream` s, every stream being
one device whose rows are fed through the detector in order. Metrics count a stream's rows from
``scored_from`` on.

- SKAB (``shared/data/skab``): one task per experiment file (34), trained on the file's first 400
  rows; the whole file streams and rows 400 on are scored.
- TEP (``shared/data/tep``): one task trained on ``train/d00.csv``; 22 streams, ``d00_te`` (all
  normal, for the false-alarm rate) and ``d01_te`` … ``d21_te`` (fault from sample 161 on), all
  rows scored. :func:`tep_fault_of` gives a stream's fault number; :data:`TEP_HARD_FAULTS` lists
  the near-undetectable ones, to be reported apart.
- SMD (``shared/data/smd``): one task per machine (7), trained on its train half, its test half
  streamed and scored whole.
- synthetic (:mod:`detector_devtools.synthetic`): one task for an 8-device fleet trained on every device's
  normal first part; each device's later part, with injected anomaly episodes, is one stream.
- NAB development set (``shared/data/nab-dev``, name ``nab-dev``): one task per stream (27), grouped
  by NAB category, trained on the stream's probationary rows (the first ``min(floor(0.15 rows),
  750)``); the whole stream is streamed and scored from the end of the probation on, labelled 1
  inside NAB's anomaly windows (each window one run of 1s: windows never touch).

Every loader raises :class:`FileNotFoundError` naming what is missing when ``path`` is not that
dataset's directory, and :class:`ValueError` naming the file when one does not have the expected
columns or order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from detector_devtools.synthetic import SENSORS as SYNTHETIC_SENSORS
from detector_devtools.synthetic import generate_fleet, split_at

__all__ = [
    "NAB_CATEGORIES",
    "NAB_SENSORS",
    "NAMES",
    "SKAB_GROUPS",
    "SKAB_SENSORS",
    "SKAB_TRAIN_ROWS",
    "SMD_MACHINES",
    "SMD_SENSORS",
    "TEP_FAULTS",
    "TEP_FAULT_START_ROW",
    "TEP_HARD_FAULTS",
    "TEP_SENSORS",
    "Dataset",
    "Stream",
    "Task",
    "load",
    "load_nab",
    "load_skab",
    "load_smd",
    "load_tep",
    "make_synthetic",
    "tep_fault_of",
]

NAMES: tuple[str, ...] = ("skab", "tep", "smd", "synthetic", "nab-dev")

# The 34 SKAB experiment files, as in bench/skab.py (anomaly-free/ is not part of the protocol).
SKAB_GROUPS: Mapping[str, tuple[int, ...]] = {
    "valve1": tuple(range(16)),
    "valve2": tuple(range(4)),
    "other": tuple(range(1, 15)),
}
SKAB_SENSORS: tuple[str, ...] = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
SKAB_TRAIN_ROWS = 400
_SKAB_PERIOD_S = 1.0

TEP_SENSORS: tuple[str, ...] = tuple(
    [f"xmeas_{i}" for i in range(1, 42)] + [f"xmv_{i}" for i in range(1, 12)]
)
TEP_FAULTS: tuple[int, ...] = tuple(range(22))  # 0 is the normal run d00_te
# Compensated by the control loops, these stay inside the noise for every published method, so
# the README asks for them to be reported separately, not averaged in nor dropped.
TEP_HARD_FAULTS: tuple[int, ...] = (3, 9, 15)
# Rows 0..159 of a fault test file are normal; the fault enters after sample 160.
TEP_FAULT_START_ROW = 160
_TEP_PERIOD_S = 180.0  # one sample every 3 minutes

SMD_MACHINES: tuple[str, ...] = tuple(f"machine-1-{n}" for n in range(2, 9))
SMD_SENSORS: tuple[str, ...] = tuple(f"dim_{i}" for i in range(1, 39))
_SMD_PERIOD_S = 60.0  # ``t`` is a minute index

# Synthetic fleet: the first _SYN_TRAIN_STEPS steps of every device are anomaly-free training data;
# episodes start no earlier than _SYN_MARGIN_STEPS into the stream, so a detector's first window
# is full (for windows up to that length) before anything happens.
_SYN_DEVICES = 8
_SYN_TRAIN_STEPS = 1500
_SYN_STREAM_STEPS = 2000
_SYN_MARGIN_STEPS = 100
_SYN_EPISODES = 4  # per device; with 4 every device gets each anomaly kind once
_SYN_PERIOD_S = 1.0
_SYN_START_TS = 1_700_000_000.0

# NAB development set: combined_windows.json maps "<category>/<file>.csv" to its windows.
NAB_CATEGORIES: tuple[str, ...] = (
    "realTweets",
    "realAdExchange",
    "artificialWithAnomaly",
    "artificialNoAnomaly",
)
NAB_SENSORS: tuple[str, ...] = ("value",)
_NAB_WINDOWS = "combined_windows.json"
_NAB_PROBATION_SHARE = 0.15
_NAB_PROBATION_CAP = 750  # NAB: 0.15 * 5000 rows


@dataclass(frozen=True)
class Stream:
    """One device streamed in order through the detector.

    ``frame`` has columns ``ts`` (float seconds, strictly increasing), the sensor columns, and
    ``label`` (0/1 int). Rows before ``scored_from`` are the training part or a warm-up and are
    left out of the metrics; they still stream, so the detector's windows fill on them.
    """

    device_id: str
    frame: pd.DataFrame
    scored_from: int

    def __post_init__(self) -> None:
        """Reject a ``scored_from`` outside the frame."""
        if not 0 <= self.scored_from <= len(self.frame):
            raise ValueError(
                f"{self.device_id}: scored_from {self.scored_from} outside 0..{len(self.frame)}"
            )


@dataclass(frozen=True)
class Task:
    """One model: trained on ``train``, then each stream is evaluated with it.

    ``train`` has ``ts`` and the sensor columns, normal data only. When it pools several devices
    (the synthetic fleet) it also has a ``device_id`` column, and windows must not cross devices;
    written to a CSV it loads as is with the trainer, which reads ``device_id`` by default.
    ``group`` is the reporting group (SKAB ``valve1``/``valve2``/``other``, ``tep``, ``smd``,
    ``synthetic``).
    """

    name: str
    train: pd.DataFrame
    streams: tuple[Stream, ...]
    group: str


@dataclass(frozen=True)
class Dataset:
    """A benchmark dataset: the shared sensor columns, its tasks, and seconds between rows."""

    name: str
    sensors: tuple[str, ...]
    tasks: tuple[Task, ...]
    period_s: float


def _require_dir(path: Path, dataset: str, expected: Sequence[Path]) -> None:
    """Fail with every expected file that is missing, so a wrong directory is obvious."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (expected the {dataset} data)")
    missing = [str(p.relative_to(path)) for p in expected if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise FileNotFoundError(f"{path}: not the {dataset} data directory, missing {shown}")


def _read(path: Path, columns: Sequence[str], sep: str = ",") -> pd.DataFrame:
    frame = pd.read_csv(path, sep=sep)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns not found: {missing}")
    if frame[list(columns)].isna().any().any():
        raise ValueError(f"{path}: missing values in {list(columns)}")
    return frame


def _sensor_frame(source: Path | str, ts: np.ndarray, values: pd.DataFrame) -> pd.DataFrame:
    """Columns ``ts`` and the sensors as float64; time must increase for the detector."""
    if np.any(np.diff(ts) <= 0):
        raise ValueError(f"{source}: timestamps do not strictly increase")
    frame = pd.DataFrame({"ts": ts})
    frame[list(values.columns)] = values.to_numpy(dtype=np.float64)
    return frame


def _labelled(
    source: Path | str, ts: np.ndarray, values: pd.DataFrame, label: pd.Series
) -> pd.DataFrame:
    """A stream frame: :func:`_sensor_frame` plus the 0/1 ``label`` column."""
    if not label.isin((0, 1)).all():
        raise ValueError(f"{source}: labels other than 0 and 1")
    frame = _sensor_frame(source, ts, values)
    frame["label"] = label.to_numpy().astype(np.int64)
    return frame


def _epoch_seconds(column: pd.Series) -> np.ndarray:
    # SKAB's times carry no zone; reading them as UTC matches detector.core.datafiles.load_table.
    moments = pd.to_datetime(column, utc=True)
    return (moments - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()


def load_skab(path: Path | str, groups: Mapping[str, Sequence[int]] = SKAB_GROUPS) -> Dataset:
    """SKAB: one task per experiment file, trained on its first 400 rows, scored from row 400.

    ``groups`` maps a folder to its file numbers (default: all 34 files). Tasks and devices are
    named ``<folder>-<number>``; ``ts`` is the ``datetime`` column in epoch seconds, ``label`` the
    ``anomaly`` column; ``changepoint`` is dropped.
    """
    path = Path(path)
    files = [(g, n, path / g / f"{n}.csv") for g, numbers in groups.items() for n in numbers]
    _require_dir(path, "SKAB", [f for _, _, f in files])
    tasks = []
    for group, number, file in files:
        raw = _read(file, ["datetime", *SKAB_SENSORS, "anomaly"], sep=";")
        if len(raw) <= SKAB_TRAIN_ROWS:
            raise ValueError(
                f"{file}: {len(raw)} rows, not more than the {SKAB_TRAIN_ROWS} to train"
            )
        frame = _labelled(
            file, _epoch_seconds(raw["datetime"]), raw[list(SKAB_SENSORS)], raw["anomaly"]
        )
        name = f"{group}-{number}"
        tasks.append(
            Task(
                name=name,
                train=frame.iloc[:SKAB_TRAIN_ROWS].drop(columns="label"),
                streams=(Stream(name, frame, SKAB_TRAIN_ROWS),),
                group=group,
            )
        )
    return Dataset("skab", SKAB_SENSORS, tuple(tasks), _SKAB_PERIOD_S)


def tep_fault_of(device_id: str) -> int:
    """The IDV fault number of a TEP stream (``"d00"`` is 0, the normal run; ``"d15"`` is 15)."""
    match = re.fullmatch(r"d(\d{2})", device_id)
    if match is None:
        raise ValueError(f"{device_id!r} is not a TEP device id (d00 … d21)")
    return int(match.group(1))


def _tep_frame(file: Path, fault: int) -> pd.DataFrame:
    raw = _read(file, ["sample", *TEP_SENSORS, "fault", "label"])
    if not (raw["fault"] == fault).all():
        raise ValueError(f"{file}: fault column is not {fault} throughout")
    ts = (raw["sample"].to_numpy(dtype=np.float64) - 1) * _TEP_PERIOD_S
    return _labelled(file, ts, raw[list(TEP_SENSORS)], raw["label"])


def load_tep(path: Path | str, faults: Sequence[int] = TEP_FAULTS) -> Dataset:
    """TEP: one task trained on ``train/d00.csv``, streaming ``test/dKK_te.csv`` for each fault.

    ``faults`` picks the test runs (default 0 … 21; 0 is the normal run). Devices are ``dKK``;
    ``ts`` = (sample - 1) * 180 s; all rows are scored (``scored_from`` 0), the detector's window
    warm-up leaving the first rows unflagged. Fault runs are labelled 1 from row 160
    (:data:`TEP_FAULT_START_ROW`) on; the fault training files d01 … d21 are not used, since an
    unsupervised detector must not see faults.
    """
    path = Path(path)
    train_file = path / "train" / "d00.csv"
    test_files = [(k, path / "test" / f"d{k:02d}_te.csv") for k in faults]
    _require_dir(path, "TEP", [train_file, *(f for _, f in test_files)])
    train = _tep_frame(train_file, 0)
    if train["label"].any():
        raise ValueError(f"{train_file}: labelled faulty rows in the normal training run")
    streams = tuple(Stream(f"d{k:02d}", _tep_frame(file, k), 0) for k, file in test_files)
    task = Task("tep", train.drop(columns="label"), streams, "tep")
    return Dataset("tep", TEP_SENSORS, (task,), _TEP_PERIOD_S)


def load_smd(path: Path | str, machines: Sequence[str] = SMD_MACHINES) -> Dataset:
    """SMD: one task per machine, trained on its train half, its test half streamed and scored.

    ``machines`` defaults to the 7 of the shared subset. ``ts`` = t * 60 s (``t`` is the minute
    index, continuing from train into test). The train half is unlabelled upstream and may hold
    anomalies; the protocol trains on it all the same.
    """
    path = Path(path)
    pairs = [(m, path / "train" / f"{m}.csv.gz", path / "test" / f"{m}.csv.gz") for m in machines]
    _require_dir(path, "SMD", [f for _, train, test in pairs for f in (train, test)])
    tasks = []
    for machine, train_file, test_file in pairs:
        raw = _read(train_file, ["t", *SMD_SENSORS])
        ts = raw["t"].to_numpy(dtype=np.float64) * _SMD_PERIOD_S
        train = _sensor_frame(train_file, ts, raw[list(SMD_SENSORS)])
        test = _read(test_file, ["t", *SMD_SENSORS, "label"])
        frame = _labelled(
            test_file,
            test["t"].to_numpy(dtype=np.float64) * _SMD_PERIOD_S,
            test[list(SMD_SENSORS)],
            test["label"],
        )
        tasks.append(Task(machine, train, (Stream(machine, frame, 0),), "smd"))
    return Dataset("smd", SMD_SENSORS, tuple(tasks), _SMD_PERIOD_S)


def make_synthetic(seed: int = 0) -> Dataset:
    """A synthetic fleet from :func:`detector_devtools.synthetic.generate_fleet`, deterministic in ``seed``.

    8 devices; each device's first 1,500 steps are normal and form the single task's ``train``
    (with a ``device_id`` column, rows in time-major order so the last share of rows is the last
    share in time of every device). Its next 2,000 steps are its stream, all scored, with 4
    labelled anomaly episodes (one of each kind), none in the stream's first 100 steps.
    """
    fleet = generate_fleet(
        _SYN_DEVICES,
        _SYN_TRAIN_STEPS + _SYN_STREAM_STEPS,
        seed=seed,
        anomalies_per_device=_SYN_EPISODES,
        start_ts=_SYN_START_TS,
        period_s=_SYN_PERIOD_S,
        quiet_steps=_SYN_TRAIN_STEPS + _SYN_MARGIN_STEPS,
    )
    normal, anomalous = split_at(fleet, _SYN_TRAIN_STEPS, period_s=_SYN_PERIOD_S)
    train = normal.readings[["ts", "device_id", *SYNTHETIC_SENSORS]]
    readings, labels = anomalous.readings, anomalous.labels
    streams = []
    for device in sorted(readings["device_id"].unique()):
        mine = (readings["device_id"] == device).to_numpy()
        rows = readings[mine]
        frame = _labelled(
            f"synthetic fleet (seed {seed}), {device}",
            rows["ts"].to_numpy(dtype=np.float64),
            rows[list(SYNTHETIC_SENSORS)],
            labels.loc[mine, "anomaly"],
        )
        streams.append(Stream(str(device), frame, 0))
    task = Task("synthetic", train.reset_index(drop=True), tuple(streams), "synthetic")
    return Dataset("synthetic", SYNTHETIC_SENSORS, (task,), _SYN_PERIOD_S)


def _nab_probation(rows: int) -> int:
    """NAB's probationary rows, ``min(floor(0.15 rows), 750)`` (``bench.nab.probation_rows``)."""
    return min(int(np.floor(_NAB_PROBATION_SHARE * rows)), _NAB_PROBATION_CAP)


def _nab_labels(source: str, ts: np.ndarray, windows: object) -> np.ndarray:
    """1 on the rows inside any of ``windows`` (``[start, end]`` timestamps, inclusive)."""
    if not isinstance(windows, list) or not all(
        isinstance(w, list) and len(w) == 2 for w in windows
    ):
        raise ValueError(f"{source}: windows must be a list of [start, end] pairs")
    label = np.zeros(len(ts), dtype=np.int64)
    previous_end = -2
    for start, end in windows:
        first, last = _epoch_seconds(pd.Series([start, end]))
        rows = np.flatnonzero((ts >= first) & (ts <= last))
        if not len(rows):
            raise ValueError(f"{source}: window [{start}, {end}] holds no row")
        # Windows are kept apart as runs of 1s, so they must not overlap or touch.
        if rows[0] <= previous_end + 1:
            raise ValueError(f"{source}: window [{start}, {end}] overlaps or touches the previous")
        label[rows] = 1
        previous_end = int(rows[-1])
    return label


def _nudge_repeats(ts: np.ndarray) -> np.ndarray:
    """``ts`` with each repeat of the previous row's time moved 1 s after it.

    NAB's exchange-2 files hold 2011-08-24 12:00:01 twice; NAB scores rows, not times, so both
    rows stay (the windows and the probation count rows) and the detector, which needs time to
    increase, gets them one second apart.
    """
    ts = ts.copy()
    for row in np.flatnonzero(np.diff(ts) == 0) + 1:
        if ts[row] == ts[row - 1]:
            ts[row] = ts[row - 1] + 1.0
    return ts


def load_nab(path: Path | str, files: Sequence[str] | None = None) -> Dataset:
    """The NAB development set: one task per stream, trained on its probationary rows.

    ``path`` holds ``combined_windows.json`` and ``data/<category>/<file>.csv``; ``files`` picks
    streams by their ``<category>/<file>.csv`` key (default: every key of the windows file, in
    :data:`NAB_CATEGORIES` order, then by name). A task and its one device are named
    ``<category>/<file>`` (no ``.csv``), its group is the category. ``ts`` is the ``timestamp``
    column in epoch seconds (UTC; a repeated time moves 1 s on, see :func:`_nudge_repeats`); the
    sensor is ``value``. ``train`` is the first
    ``min(floor(0.15 rows), 750)`` rows (NAB's probationary period, the only rows a streaming
    detector has seen before scoring starts); the stream is the whole file with ``scored_from``
    at the end of the probation and ``label`` 1 on the rows inside a window (timestamps
    inclusive). ``period_s`` is the median interval between rows over all streams.
    """
    path = Path(path)
    windows_file = path / _NAB_WINDOWS
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (expected the NAB data)")
    if not windows_file.is_file():
        raise FileNotFoundError(f"{path}: not the NAB data directory, missing {_NAB_WINDOWS}")
    try:
        all_windows = json.loads(windows_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{windows_file}: not valid JSON ({exc})") from exc
    if not isinstance(all_windows, dict):
        raise ValueError(f"{windows_file}: expected an object mapping files to windows")
    order = {c: i for i, c in enumerate(NAB_CATEGORIES)}
    keys = (
        list(files)
        if files is not None
        else sorted(all_windows, key=lambda k: (order.get(k.split("/")[0], len(order)), k))
    )
    unknown = [k for k in keys if k not in all_windows]
    if unknown:
        raise ValueError(f"{windows_file}: no windows for {unknown}")
    _require_dir(path, "NAB", [path / "data" / k for k in keys])
    tasks, periods = [], []
    for key in keys:
        file = path / "data" / key
        raw = _read(file, ["timestamp", "value"])
        ts = _epoch_seconds(raw["timestamp"])
        label = _nab_labels(str(file), ts, all_windows[key])
        ts = _nudge_repeats(ts)
        frame = _labelled(file, ts, raw[list(NAB_SENSORS)], pd.Series(label))
        probation = _nab_probation(len(frame))
        if probation < 2:
            raise ValueError(f"{file}: {len(frame)} rows leave {probation} probationary rows")
        name = key.removesuffix(".csv")
        tasks.append(
            Task(
                name=name,
                train=frame.iloc[:probation].drop(columns="label"),
                streams=(Stream(name, frame, probation),),
                group=key.split("/")[0],
            )
        )
        periods.append(float(np.median(np.diff(ts))))
    if not tasks:
        raise ValueError(f"{windows_file}: no streams to load")
    return Dataset("nab-dev", NAB_SENSORS, tuple(tasks), float(np.median(periods)))


def load(name: str, path: Path | str | None = None) -> Dataset:
    """The dataset ``name`` (one of :data:`NAMES`) from ``path``; ``synthetic`` needs no path."""
    if name == "synthetic":
        return make_synthetic()
    loaders = {"skab": load_skab, "tep": load_tep, "smd": load_smd, "nab-dev": load_nab}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(NAMES)}")
    if path is None:
        raise ValueError(f"dataset {name!r} needs a data directory")
    return loaders[name](Path(path))
