"""bench.datasets: the synthetic fleet in full, and each loader on tiny fake data directories.

The shared SKAB/TEP/SMD data are not available in CI, so the loaders are checked on directories
written here in the same formats.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.datasets import (
    NAB_SENSORS,
    SKAB_SENSORS,
    SMD_SENSORS,
    TEP_SENSORS,
    Dataset,
    Stream,
    load,
    load_nab,
    load_skab,
    load_smd,
    load_tep,
    make_synthetic,
    tep_fault_of,
)
from detector_devtools.synthetic import SENSORS


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return make_synthetic(seed=0)


def _runs(labels: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(labels, prepend=0, append=0)
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_layout(synthetic: Dataset) -> None:
    assert synthetic.name == "synthetic" and synthetic.period_s == 1.0
    assert synthetic.sensors == SENSORS
    (task,) = synthetic.tasks
    assert task.group == "synthetic"
    assert list(task.train.columns) == ["ts", "device_id", *SENSORS]
    assert len(task.streams) == 8
    assert task.train["device_id"].value_counts().to_dict() == {
        s.device_id: 1500 for s in task.streams
    }
    for stream in task.streams:
        assert list(stream.frame.columns) == ["ts", *SENSORS, "label"]
        assert len(stream.frame) == 2000 and stream.scored_from == 0
        assert stream.frame["label"].dtype == np.int64
        assert np.all(np.diff(stream.frame["ts"]) == 1.0)
        assert np.isfinite(stream.frame[list(SENSORS)].to_numpy()).all()


def test_synthetic_stream_continues_its_device_training_part(synthetic: Dataset) -> None:
    (task,) = synthetic.tasks
    for stream in task.streams:
        train_ts = task.train.loc[task.train["device_id"] == stream.device_id, "ts"]
        assert stream.frame["ts"].iloc[0] == train_ts.max() + 1.0


def test_synthetic_episodes(synthetic: Dataset) -> None:
    for stream in synthetic.tasks[0].streams:
        runs = _runs(stream.frame["label"].to_numpy())
        # One episode of each kind per device; spikes are 5-10 rows, the others 30-60.
        assert len(runs) == 4
        assert sorted(stop - start >= 30 for start, stop in runs) == [False, True, True, True]
        assert all(5 <= stop - start <= 60 for start, stop in runs)
        # The first 100 rows are normal, so a detector's first windows fill on normal data.
        assert runs[0][0] >= 100


def test_synthetic_train_is_time_major(synthetic: Dataset) -> None:
    train = synthetic.tasks[0].train
    # The last fifth of the rows is the last fifth in time of every device (validation splits).
    tail = train.iloc[-len(train) // 5 :]
    assert tail["device_id"].value_counts().to_dict() == dict.fromkeys(
        train["device_id"].unique(), 300
    )
    assert train["ts"].is_monotonic_increasing


def test_synthetic_is_deterministic_in_seed(synthetic: Dataset) -> None:
    again = make_synthetic(seed=0)
    other = make_synthetic(seed=1)
    pd.testing.assert_frame_equal(again.tasks[0].train, synthetic.tasks[0].train)
    for a, b in zip(again.tasks[0].streams, synthetic.tasks[0].streams, strict=True):
        pd.testing.assert_frame_equal(a.frame, b.frame)
    assert not other.tasks[0].train[list(SENSORS)].equals(synthetic.tasks[0].train[list(SENSORS)])


def test_synthetic_normal_stream_rows_match_training_levels(
    synthetic: Dataset,
) -> None:
    # Normal stream rows come from the same process as the training rows: their means agree
    # within a few training standard deviations for every sensor.
    (task,) = synthetic.tasks
    train = task.train[list(SENSORS)]
    normal = pd.concat([s.frame.loc[s.frame["label"] == 0, list(SENSORS)] for s in task.streams])
    assert (np.abs(normal.mean() - train.mean()) < 0.5 * train.std()).all()


def test_load_synthetic_needs_no_path(synthetic: Dataset) -> None:
    pd.testing.assert_frame_equal(load("synthetic").tasks[0].train, synthetic.tasks[0].train)


# --- SKAB --------------------------------------------------------------------------------------


def _write_skab(root: Path, group: str = "valve1", number: int = 0, rows: int = 450) -> Path:
    rng = np.random.default_rng(number)
    frame = pd.DataFrame(
        {"datetime": pd.date_range("2020-03-09 10:14:33", periods=rows, freq="s").astype(str)}
    )
    for name in SKAB_SENSORS:
        frame[name] = rng.normal(size=rows)
    frame["anomaly"] = np.where(np.arange(rows) >= 420, 1.0, 0.0)
    frame["changepoint"] = 0.0
    path = root / group / f"{number}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=";", index=False)
    return path


def test_load_skab(tmp_path: Path) -> None:
    _write_skab(tmp_path, "valve1", 0)
    _write_skab(tmp_path, "other", 3, rows=401)
    data = load_skab(tmp_path, groups={"valve1": (0,), "other": (3,)})
    assert data.name == "skab" and data.sensors == SKAB_SENSORS and data.period_s == 1.0
    assert [(t.name, t.group) for t in data.tasks] == [("valve1-0", "valve1"), ("other-3", "other")]
    task = data.tasks[0]
    (stream,) = task.streams
    assert stream.device_id == "valve1-0" and stream.scored_from == 400
    assert list(stream.frame.columns) == ["ts", *SKAB_SENSORS, "label"]
    assert list(task.train.columns) == ["ts", *SKAB_SENSORS]
    pd.testing.assert_frame_equal(task.train, stream.frame.iloc[:400].drop(columns="label"))
    assert stream.frame["ts"].iloc[0] == pd.Timestamp("2020-03-09 10:14:33", tz="UTC").timestamp()
    assert np.all(np.diff(stream.frame["ts"]) == 1.0)
    assert stream.frame["label"].tolist() == [0] * 420 + [1] * 30


def test_load_skab_defaults_to_all_34_files(tmp_path: Path) -> None:
    _write_skab(tmp_path, "valve1", 0)
    with pytest.raises(FileNotFoundError, match=r"missing valve1/1\.csv.* and 28 more"):
        load_skab(tmp_path)


def test_load_skab_rejects_a_file_too_short_to_train(tmp_path: Path) -> None:
    path = _write_skab(tmp_path, rows=400)
    with pytest.raises(ValueError, match=str(path)):
        load_skab(tmp_path, groups={"valve1": (0,)})


def test_load_skab_rejects_missing_columns(tmp_path: Path) -> None:
    path = _write_skab(tmp_path)
    pd.read_csv(path, sep=";").drop(columns="Pressure").to_csv(path, sep=";", index=False)
    with pytest.raises(ValueError, match=r"columns not found: \['Pressure'\]"):
        load_skab(tmp_path, groups={"valve1": (0,)})


# --- TEP ---------------------------------------------------------------------------------------


def _write_tep(path: Path, fault: int, rows: int, fault_from: int | None) -> None:
    rng = np.random.default_rng(fault)
    frame = pd.DataFrame({"sample": np.arange(1, rows + 1)})
    for name in TEP_SENSORS:
        frame[name] = rng.normal(size=rows)
    frame["fault"] = fault
    label = np.zeros(rows, dtype=int)
    if fault_from is not None:
        label[fault_from:] = 1
    frame["label"] = label
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


@pytest.fixture
def tep_dir(tmp_path: Path) -> Path:
    _write_tep(tmp_path / "train" / "d00.csv", 0, 50, None)
    _write_tep(tmp_path / "test" / "d00_te.csv", 0, 40, None)
    _write_tep(tmp_path / "test" / "d01_te.csv", 1, 40, 16)
    return tmp_path


def test_load_tep(tep_dir: Path) -> None:
    data = load_tep(tep_dir, faults=(0, 1))
    assert data.name == "tep" and data.sensors == TEP_SENSORS and data.period_s == 180.0
    (task,) = data.tasks
    assert (task.name, task.group) == ("tep", "tep")
    assert list(task.train.columns) == ["ts", *TEP_SENSORS]
    assert len(task.train) == 50 and task.train["ts"].iloc[:2].tolist() == [0.0, 180.0]
    assert [s.device_id for s in task.streams] == ["d00", "d01"]
    normal, faulty = task.streams
    assert normal.scored_from == faulty.scored_from == 0
    assert normal.frame["label"].sum() == 0
    assert faulty.frame["label"].tolist() == [0] * 16 + [1] * 24
    assert list(faulty.frame.columns) == ["ts", *TEP_SENSORS, "label"]
    assert [tep_fault_of(s.device_id) for s in task.streams] == [0, 1]


def test_load_tep_defaults_to_all_faults(tep_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{tep_dir}: not the TEP data.*d02_te\.csv"):
        load("tep", tep_dir)


def test_load_tep_checks_the_fault_column(tep_dir: Path) -> None:
    _write_tep(tep_dir / "test" / "d01_te.csv", 2, 40, 16)
    with pytest.raises(ValueError, match=r"d01_te\.csv: fault column is not 1"):
        load_tep(tep_dir, faults=(0, 1))


def test_load_tep_rejects_faulty_training_rows(tep_dir: Path) -> None:
    _write_tep(tep_dir / "train" / "d00.csv", 0, 50, 10)
    with pytest.raises(ValueError, match="labelled faulty rows"):
        load_tep(tep_dir, faults=(0,))


def test_load_tep_rejects_time_going_back(tep_dir: Path) -> None:
    path = tep_dir / "test" / "d00_te.csv"
    frame = pd.read_csv(path)
    frame.loc[5, "sample"] = 3
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match="timestamps do not strictly increase"):
        load_tep(tep_dir, faults=(0,))


@given(st.integers(0, 99))
def test_tep_fault_of_round_trips(fault: int) -> None:
    assert tep_fault_of(f"d{fault:02d}") == fault


@pytest.mark.parametrize("device", ["d1", "d001", "x01", "valve1-0", "d0a"])
def test_tep_fault_of_rejects_other_ids(device: str) -> None:
    with pytest.raises(ValueError, match="not a TEP device id"):
        tep_fault_of(device)


# --- SMD ---------------------------------------------------------------------------------------


def _write_smd(root: Path, machine: str, rows: int) -> None:
    rng = np.random.default_rng(0)
    for part, first_t in (("train", 0), ("test", rows)):
        frame = pd.DataFrame({"t": np.arange(first_t, first_t + rows)})
        for name in SMD_SENSORS:
            frame[name] = rng.uniform(size=rows).astype(np.float32)
        if part == "test":
            frame["label"] = (np.arange(rows) % 10 >= 8).astype(int)
        path = root / part / f"{machine}.csv.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)


def test_load_smd(tmp_path: Path) -> None:
    _write_smd(tmp_path, "machine-1-2", 30)
    data = load_smd(tmp_path, machines=("machine-1-2",))
    assert data.name == "smd" and data.sensors == SMD_SENSORS and data.period_s == 60.0
    (task,) = data.tasks
    assert (task.name, task.group) == ("machine-1-2", "smd")
    assert list(task.train.columns) == ["ts", *SMD_SENSORS] and len(task.train) == 30
    (stream,) = task.streams
    assert stream.device_id == "machine-1-2" and stream.scored_from == 0
    assert stream.frame["ts"].iloc[0] == 30 * 60.0 and task.train["ts"].iloc[-1] == 29 * 60.0
    assert stream.frame["label"].sum() == 6
    assert stream.frame[list(SMD_SENSORS)].dtypes.eq(np.float64).all()


def test_load_smd_needs_both_halves(tmp_path: Path) -> None:
    _write_smd(tmp_path, "machine-1-2", 30)
    (tmp_path / "test" / "machine-1-2.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing test/machine-1-2\.csv\.gz"):
        load_smd(tmp_path, machines=("machine-1-2",))


def test_load_smd_rejects_unlabelled_test(tmp_path: Path) -> None:
    _write_smd(tmp_path, "machine-1-2", 30)
    path = tmp_path / "test" / "machine-1-2.csv.gz"
    pd.read_csv(path).drop(columns="label").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"machine-1-2\.csv\.gz: columns not found: \['label'\]"):
        load_smd(tmp_path, machines=("machine-1-2",))


# --- NAB ---------------------------------------------------------------------------------------


def _write_nab_stream(root: Path, key: str, rows: int, start: str = "2015-02-26 21:42:53") -> Path:
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=rows, freq="5min").astype(str),
            "value": np.arange(rows) % 7,
        }
    )
    path = root / "data" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def _write_nab_windows(root: Path, windows: dict[str, list[list[str]]]) -> None:
    (root / "combined_windows.json").write_text(json.dumps(windows))


@pytest.fixture
def nab_dir(tmp_path: Path) -> Path:
    # 40 rows: 6 probationary (floor(0.15 * 40)); the window covers rows 10..14 inclusive.
    _write_nab_stream(tmp_path, "realTweets/Twitter_volume_X.csv", 40)
    _write_nab_stream(tmp_path, "artificialNoAnomaly/art_flat.csv", 20, "2014-04-01 00:00:00")
    _write_nab_windows(
        tmp_path,
        {
            "artificialNoAnomaly/art_flat.csv": [],
            "realTweets/Twitter_volume_X.csv": [
                ["2015-02-26 22:32:53.000000", "2015-02-26 22:52:53.000000"]
            ],
        },
    )
    return tmp_path


def test_load_nab(nab_dir: Path) -> None:
    data = load("nab-dev", nab_dir)
    assert data.name == "nab-dev" and data.sensors == NAB_SENSORS == ("value",)
    assert data.period_s == 300.0
    # Categories in NAB_CATEGORIES order (realTweets first), not alphabetical.
    assert [(t.name, t.group) for t in data.tasks] == [
        ("realTweets/Twitter_volume_X", "realTweets"),
        ("artificialNoAnomaly/art_flat", "artificialNoAnomaly"),
    ]
    task = data.tasks[0]
    (stream,) = task.streams
    assert stream.device_id == task.name and stream.scored_from == 6
    assert list(stream.frame.columns) == ["ts", "value", "label"]
    assert list(task.train.columns) == ["ts", "value"]
    pd.testing.assert_frame_equal(task.train, stream.frame.iloc[:6].drop(columns="label"))
    assert stream.frame["ts"].iloc[0] == pd.Timestamp("2015-02-26 21:42:53", tz="UTC").timestamp()
    assert np.all(np.diff(stream.frame["ts"]) == 300.0)
    # Window timestamps are inclusive at both ends.
    assert stream.frame["label"].tolist() == [0] * 10 + [1] * 5 + [0] * 25
    assert stream.frame["value"].dtype == np.float64
    empty = data.tasks[1].streams[0]
    assert empty.scored_from == 3 and empty.frame["label"].sum() == 0


def test_load_nab_probation_is_capped_at_750_rows(tmp_path: Path) -> None:
    _write_nab_stream(tmp_path, "realTweets/long.csv", 6000)
    _write_nab_windows(tmp_path, {"realTweets/long.csv": []})
    (task,) = load_nab(tmp_path).tasks
    assert len(task.train) == task.streams[0].scored_from == 750  # not floor(0.15 * 6000) = 900


def test_load_nab_picks_files(nab_dir: Path) -> None:
    data = load_nab(nab_dir, files=["artificialNoAnomaly/art_flat.csv"])
    assert [t.name for t in data.tasks] == ["artificialNoAnomaly/art_flat"]
    with pytest.raises(ValueError, match=r"no windows for \['realTweets/other\.csv'\]"):
        load_nab(nab_dir, files=["realTweets/other.csv"])


def test_load_nab_keeps_a_repeated_timestamp_as_its_own_row(nab_dir: Path) -> None:
    path = nab_dir / "data" / "realTweets" / "Twitter_volume_X.csv"
    frame = pd.read_csv(path)
    frame.loc[20, "timestamp"] = frame.loc[19, "timestamp"]
    frame.to_csv(path, index=False)
    stream = load_nab(nab_dir).tasks[0].streams[0]
    assert len(stream.frame) == 40
    ts = stream.frame["ts"].to_numpy()
    assert ts[20] == ts[19] + 1.0 and ts[21] == ts[19] + 600.0


def test_load_nab_names_what_is_missing(nab_dir: Path) -> None:
    (nab_dir / "data" / "artificialNoAnomaly" / "art_flat.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"not the NAB data.*art_flat\.csv"):
        load_nab(nab_dir)
    (nab_dir / "combined_windows.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing combined_windows\.json"):
        load_nab(nab_dir)


def test_load_nab_rejects_missing_columns(nab_dir: Path) -> None:
    path = nab_dir / "data" / "realTweets" / "Twitter_volume_X.csv"
    pd.read_csv(path).rename(columns={"value": "v"}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"Twitter_volume_X\.csv: columns not found: \['value'\]"):
        load_nab(nab_dir)


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        ([["2016-01-01 00:00:00", "2016-01-02 00:00:00"]], "holds no row"),
        (
            [
                ["2015-02-26 22:32:53", "2015-02-26 22:52:53"],
                ["2015-02-26 22:57:53", "2015-02-26 23:02:53"],
            ],
            "overlaps or touches",
        ),
        ([["2015-02-26 22:32:53"]], r"list of \[start, end\] pairs"),
    ],
)
def test_load_nab_rejects_bad_windows(
    nab_dir: Path, windows: list[list[str]], message: str
) -> None:
    _write_nab_windows(
        nab_dir,
        {"realTweets/Twitter_volume_X.csv": windows, "artificialNoAnomaly/art_flat.csv": []},
    )
    with pytest.raises(ValueError, match=message):
        load_nab(nab_dir)


# --- common ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["skab", "tep", "smd", "nab-dev"])
def test_loaders_name_a_missing_directory(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{missing}: no such directory"):
        load(name, missing)


def test_load_rejects_unknown_names_and_a_missing_path() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nab'"):
        load("nab", ".")
    with pytest.raises(ValueError, match="needs a data directory"):
        load("tep")


def test_stream_rejects_scored_from_outside_the_frame() -> None:
    frame = pd.DataFrame({"ts": [0.0, 1.0], "x": [0.0, 0.0], "label": [0, 0]})
    assert Stream("d", frame, 2).scored_from == 2
    with pytest.raises(ValueError, match="scored_from 3"):
        Stream("d", frame, 3)
