"""Models that would make the daemon blind, huge or dead (issue 10, items 8-11), as a process.

Start-up: ``python -m detector run`` with a bad model exits 2 with one line on stderr; the model
loads before Kafka is touched, so those runs need no broker. Hot reload, on the real broker: a bad
version made current is refused, counted and logged once, and the running model goes on scoring
every window. Tests run as root, which reads any file; the daemon of the unreadable-file tests
runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv``), so file modes apply to it as
to the daemon user of the systemd setup, and the registry is owned by another user (the trainer).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from detector.config import ENV_PREFIX
from detector.core.artifact import (
    CURRENT_POINTER,
    METADATA_FILE,
    WEIGHTS_FILE,
    load_artifact,
    save_artifact,
    set_current,
)
from detector_devtools.embedded_broker import free_port
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    ROOT,
    WINDOW,
    Daemon,
    DemoData,
    Topics,
    committed_total,
    offline_transitions,
    produce,
    read_topic,
    streamed_transitions,
    wait_until,
)

FIGURES = logging.getLogger("fault-figures")
TRAINER_UID = 65534  # "nobody": owns the registry, as the user the trainer runs as
MiB = 1 << 20
NAN, INF = float("nan"), float("inf")
# A swap loads and warms up the new model on the main loop: on a busy shared machine that took
# over the tests' usual 10 s, and the rebalance that followed re-scored windows.
SWAP_POLL_INTERVAL_MS = "60000"

Edit = Callable[[dict[str, Any]], None]


def without_dac_override(command: list[str]) -> list[str]:
    """``command`` run by root but subject to file modes, like an unprivileged daemon user."""
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]


def copy_version(registry: Path, source: Path, version: str, edit: Edit | None = None) -> Path:
    """A copy of the artifact ``source`` as ``registry/version``, its metadata changed by ``edit``."""
    target = registry / version
    shutil.copytree(source, target)
    metadata = json.loads((target / METADATA_FILE).read_text())
    metadata["version"] = version
    if edit is not None:
        edit(metadata)
    (target / METADATA_FILE).write_text(json.dumps(metadata))
    return target


def chown_tree(path: Path, uid: int = TRAINER_UID) -> None:
    """Give ``path`` and everything below it to ``uid``."""
    for item in [path, *path.rglob("*")]:
        os.chown(item, uid, uid)


def _set(section: str, key: str, value: Any) -> Edit:
    def edit(metadata: dict[str, Any]) -> None:
        metadata[section][key] = value

    return edit


def _first_scale_zero(metadata: dict[str, Any]) -> None:
    metadata["scaler"]["scale"][0] = 0.0


def _first_mean_nan(metadata: dict[str, Any]) -> None:
    metadata["scaler"]["mean"][0] = NAN


def _threshold_inf(metadata: dict[str, Any]) -> None:
    metadata["threshold"]["value"] = INF


def _window_length(length: int) -> Edit:
    def edit(metadata: dict[str, Any]) -> None:
        metadata["window_length"] = length

    return edit


def _padded_validation(metadata: dict[str, Any]) -> None:
    # Valid, but 8 MiB: the daemon used to parse and keep it (200 MB: RSS 660 MiB after).
    metadata["validation"].update({f"pad{i:07d}": 0.0 for i in range(400_000)})


# Each bad model: what makes it bad, and a word the one-line refusal must contain.
BAD_MODELS: dict[str, tuple[Edit, str]] = {
    "scale-0": (_first_scale_zero, "scale"),
    "mean-nan": (_first_mean_nan, "mean"),
    "threshold-inf": (_threshold_inf, "threshold"),
    "hidden-12000": (_set("model", "hidden_size", 12_000), "parameters"),
    "metadata-8MiB": (_padded_validation, "bytes"),
}


# --- start-up ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartUp:
    """How one ``detector run`` ended: exit code (None: still running), stderr, time, peak RSS."""

    code: int | None
    stderr: str
    seconds: float
    peak_rss_mib: float


def start_up(
    runs: dict[str, tuple[list[str], dict[str, str]]], logs: Path, timeout_s: float = 120
) -> dict[str, StartUp]:
    """Start every command at once and wait for all; a run still going at the deadline is killed.

    Waited with ``wait4`` so each run's own peak RSS is known.
    """
    started = time.monotonic()
    processes = {}
    for name, (command, env) in runs.items():
        with (logs / f"{name}.stderr").open("wb") as stderr:
            processes[name] = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr
            )
    results: dict[str, StartUp] = {}
    deadline = started + timeout_s
    while processes:
        for name, process in list(processes.items()):
            overdue = time.monotonic() > deadline
            if overdue:
                process.kill()
            pid, status, usage = os.wait4(process.pid, 0 if overdue else os.WNOHANG)
            if pid == 0:
                continue
            process.returncode = os.waitstatus_to_exitcode(status)
            del processes[name]
            results[name] = StartUp(
                None if overdue else process.returncode,
                (logs / f"{name}.stderr").read_text(errors="replace"),
                time.monotonic() - started,
                usage.ru_maxrss / 1024,
            )
        time.sleep(0.05)
    return results


def _daemon_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "detector", "run", "--config", str(config)]


def _env(model: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    closed = free_port()  # nothing listens: a daemon that got past its model goes nowhere
    return {
        **env,
        "DETECTOR_MODEL__PATH": str(model),
        "DETECTOR_SCORING__DEVICE": "cpu",
        "DETECTOR_METRICS__HOST": "127.0.0.1",
        "DETECTOR_METRICS__PORT": str(free_port()),
        "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": json.dumps([f"127.0.0.1:{closed}"]),
        **overrides,
    }


@pytest.fixture(scope="module")
def startups(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> dict[str, StartUp]:
    """``detector run`` on each bad model (and a bad batch size), all in parallel."""
    root = tmp_path_factory.mktemp("startups")
    config = ROOT / "configs" / "detector.yaml"
    command = _daemon_command(config)
    runs = {}
    for name, (edit, _) in {
        **BAD_MODELS,
        "window-1e9": (_window_length(10**9), "window_length"),
    }.items():
        registry = root / name
        copy_version(registry, demo_data.model.path, "v1", edit)
        set_current(registry, "v1")
        runs[name] = (command, _env(registry))
    # Item 10: a version the daemon's user cannot read, in a registry of the trainer's user.
    unreadable = root / "unreadable"
    copy_version(unreadable, demo_data.model.path, "v1")
    set_current(unreadable, "v1")
    chown_tree(unreadable)
    (unreadable / "v1" / WEIGHTS_FILE).chmod(0)
    runs["weights-unreadable"] = (without_dac_override(command), _env(unreadable))
    runs["max-batch-1e9"] = (
        command,
        _env(demo_data.model.path, DETECTOR_SCORING__MAX_BATCH_SIZE=str(10**9)),
    )
    results = start_up(runs, root)
    for name, result in sorted(results.items()):
        FIGURES.info(
            f"start-up {name}: exit {result.code}, {result.seconds:.1f} s, "
            f"peak RSS {result.peak_rss_mib:.0f} MiB, stderr {result.stderr.strip()[-300:]!r}"
        )
    return results


def _assert_one_line_exit_2(result: StartUp, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.code == 2, f"exit {result.code}: {result.stderr[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_bad_model_at_start_up_exits_2_with_one_line(
    startups: dict[str, StartUp], name: str
) -> None:
    """Items 8 and 9: refused before Kafka is touched, naming what is wrong."""
    _assert_one_line_exit_2(startups[name], "cannot load model", BAD_MODELS[name][1])


def test_huge_hidden_size_is_refused_without_building_the_model(
    startups: dict[str, StartUp],
) -> None:
    """Item 9: 12 000 hidden units took 4.7 GB and 18 s before the weight shapes were checked."""
    result = startups["hidden-12000"]
    _assert_one_line_exit_2(result, "parameters")
    assert result.peak_rss_mib < 1024


def test_window_length_of_a_billion_exits_2(startups: dict[str, StartUp]) -> None:
    """Item 9: was exit 1 with numpy's ArrayMemoryError allocating the device windows."""
    _assert_one_line_exit_2(startups["window-1e9"], "cannot load model", "window_length")


def test_unreadable_weights_at_start_up_exit_2(startups: dict[str, StartUp]) -> None:
    """Item 10: a PermissionError reading the weights was exit 1 with a traceback."""
    _assert_one_line_exit_2(startups["weights-unreadable"], "cannot load model", WEIGHTS_FILE)


def test_absurd_batch_size_is_a_config_error(startups: dict[str, StartUp]) -> None:
    """Item 9: ``scoring.max_batch_size`` 10^9 was exit 1 preallocating the batch."""
    _assert_one_line_exit_2(startups["max-batch-1e9"], "scoring.max_batch_size")


# --- hot reload on the real broker --------------------------------------------------------------


def _reloads(daemon: Daemon, result: str) -> float:
    return daemon.metric(f'detector_model_reloads_total{{result="{result}"}}')


def _model_version(daemon: Daemon) -> str:
    """The version ``detector_model_info`` names; ``?`` before the model is installed."""
    for key, value in daemon.metrics().items():
        if key.startswith("detector_model_info") and value and 'version="' in key:
            return key.split('version="')[1].split('"')[0]
    return "?"


def _outcome(daemon: Daemon, reached: Callable[[], bool], timeout_s: float = 20) -> str:
    """``ok`` once ``reached()``; else whether the daemon died or what it runs and counted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            return f"daemon exited with {daemon.process.returncode}"
        try:
            if reached():
                return "ok"
        except OSError:
            continue  # the metrics port went away: the exit code tells why, next time round
        time.sleep(0.1)
    return (
        f"not within {timeout_s} s: running {_model_version(daemon)}, "
        f"reloads success={_reloads(daemon, 'success')}, rejected={_reloads(daemon, 'rejected')}"
    )


def _refusal_of(daemon: Daemon, before: float) -> str:
    """``ok`` once the rejected counter moved on by one from ``before``."""
    return _outcome(daemon, lambda: _reloads(daemon, "rejected") == before + 1)


@pytest.mark.integration
@pytest.mark.fault
def test_bad_versions_are_refused_on_hot_reload_and_the_old_model_keeps_scoring(
    tmp_path: Path, topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    """Items 8, 9 and 11: each bad current is refused, counted once, logged once; nothing lost."""
    registry = tmp_path / "models"
    copy_version(registry, demo_data.model.path, "v1")
    set_current(registry, "v1")
    # A complete artifact outside the registry: only the containment check can refuse it.
    copy_version(tmp_path, demo_data.model.path, "elsewhere")
    readings = interleave(demo_data.anomalous.readings)
    messages = encode_messages(readings)
    half = len(messages) // 2
    daemon = start_daemon(
        DETECTOR_MODEL__PATH=str(registry),
        DETECTOR_MODEL__RELOAD_INTERVAL_S="0.2",
        DETECTOR_KAFKA__MAX_POLL_INTERVAL_MS=SWAP_POLL_INTERVAL_MS,
    )
    produce(topics.bootstrap, topics.readings, messages[:half])
    wait_until(lambda: daemon.metric("detector_records_consumed_total") == half, 60, "first half")

    pointer = registry / CURRENT_POINTER
    outcomes = {}
    for name, (edit, _) in BAD_MODELS.items():
        copy_version(registry, demo_data.model.path, name, edit)
        before = _reloads(daemon, "rejected")
        set_current(registry, name)
        outcomes[name] = _refusal_of(daemon, before)
    for name, value in [
        ("pointer-outside", "../elsewhere"),
        ("pointer-missing", "v404"),
        ("pointer-too-long", "x" * 300),
    ]:
        before = _reloads(daemon, "rejected")
        pointer.write_text(value + "\n")
        outcomes[name] = _refusal_of(daemon, before)
    FIGURES.info(f"hot reload of bad versions: {outcomes}")
    assert outcomes == dict.fromkeys(outcomes, "ok")

    # The last bad pointer stays while the second half streams in: many polls, no new refusal.
    produce(topics.bootstrap, topics.readings, messages[half:])
    rows = len(readings)
    wait_until(
        lambda: daemon.metric("detector_windows_scored_total") == rows - 3 * (WINDOW - 1),
        90,
        "every window scored by the running model",
    )
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == len(messages),
        30,
        "offsets committed to the end",
    )
    assert daemon.process.poll() is None
    assert _reloads(daemon, "rejected") == len(outcomes)
    assert _reloads(daemon, "success") == 0
    assert _model_version(daemon) == "v1"
    refusals = [line for line in daemon.log().splitlines() if "refused model" in line]
    assert len(refusals) == len(outcomes), refusals
    assert "nan" not in str(daemon.metric("detector_anomaly_score_sum")).lower()
    alerts = read_topic(topics.bootstrap, topics.alerts)
    assert {a["model_version"] for a in alerts} == {"v1"}
    assert streamed_transitions(alerts) == offline_transitions(demo_data.model.path, readings)


@pytest.fixture
def daemon_without_dac_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Daemons started by ``start_daemon`` are subject to file modes (see the module docstring)."""

    def spawn(
        config: Path, env: dict[str, str], log_path: Path, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            return subprocess.Popen(
                without_dac_override(_daemon_command(config)),
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    monkeypatch.setattr("tests.conftest.spawn_daemon", spawn)
    yield


def _retrain(registry: Path, source: Path, version: str, threshold_factor: float) -> None:
    """What ``trainer fit`` writes (through ``save_artifact``), as the trainer's user."""
    artifact = load_artifact(source)
    metadata = artifact.metadata.model_dump(exclude={"weights_file", "weights_sha256"})
    metadata["version"] = version
    metadata["threshold"]["value"] *= threshold_factor
    save_artifact(registry, metadata, artifact.model, make_current=False)
    chown_tree(registry / version)


@pytest.mark.integration
@pytest.mark.fault
def test_retraining_as_another_user_is_picked_up_and_an_unreadable_version_refused(
    tmp_path: Path,
    topics: Topics,
    demo_data: DemoData,
    start_daemon,
    daemon_without_dac_override: None,
) -> None:
    """Item 10: the trainer's files were mode 0600, and a PermissionError killed the daemon."""
    registry = tmp_path / "models"
    _retrain(registry, demo_data.model.path, "v1", 1.0)
    # v1 made readable by hand, so that the daemon starts even where the trainer wrote 0600.
    for item in (registry / "v1").iterdir():
        item.chmod(0o644)
    set_current(registry, "v1")
    chown_tree(registry)
    readings = interleave(demo_data.anomalous.readings)
    messages = encode_messages(readings)
    half = len(messages) // 2
    overrides = {
        "DETECTOR_MODEL__PATH": str(registry),
        "DETECTOR_MODEL__RELOAD_INTERVAL_S": "0.2",
        "DETECTOR_KAFKA__MAX_POLL_INTERVAL_MS": SWAP_POLL_INTERVAL_MS,
    }
    daemon = start_daemon(**overrides)
    produce(topics.bootstrap, topics.readings, messages[:half])
    wait_until(lambda: daemon.metric("detector_records_consumed_total") == half, 60, "first half")

    outcomes = {}
    _retrain(registry, demo_data.model.path, "v2", 0.5)
    set_current(registry, "v2")
    outcomes["retrained-v2"] = _outcome(daemon, lambda: _model_version(daemon) == "v2")
    if daemon.process.poll() is None:
        _retrain(registry, demo_data.model.path, "v3", 1.0)
        (registry / "v3" / WEIGHTS_FILE).chmod(0)
        before = _reloads(daemon, "rejected")
        set_current(registry, "v3")
        outcomes["weights-unreadable"] = _refusal_of(daemon, before)
        before = _reloads(daemon, "rejected")
        staged = registry / ".current.unreadable"
        staged.write_text("v2\n")
        staged.chmod(0)
        staged.replace(registry / CURRENT_POINTER)
        outcomes["pointer-unreadable"] = _refusal_of(daemon, before)
    FIGURES.info(f"retraining as another user: {outcomes}, log tail {daemon.log()[-400:]!r}")
    assert outcomes == dict.fromkeys(
        ["retrained-v2", "weights-unreadable", "pointer-unreadable"], "ok"
    )
    assert "refused model v3, keeping v2" in daemon.log()

    produce(topics.bootstrap, topics.readings, messages[half:])
    rows = len(readings)
    wait_until(
        lambda: daemon.metric("detector_windows_scored_total") == rows - 3 * (WINDOW - 1),
        90,
        "every window scored",
    )
    assert daemon.process.poll() is None
    alerts = read_topic(topics.bootstrap, topics.alerts)
    late = [a for a in alerts if a["window_end"] >= readings["ts"].iloc[half]]
    assert late and {a["model_version"] for a in late} == {"v2"}

    # A restart finds v2 exactly as the trainer wrote it: it loads (it was exit 1 on every start).
    (registry / CURRENT_POINTER).chmod(0o644)
    assert daemon.stop() == 0
    restarted = start_daemon(**overrides)
    wait_until(lambda: _model_version(restarted) == "v2", 60, "restarted on v2")
    assert restarted.stop(signal.SIGTERM) == 0
