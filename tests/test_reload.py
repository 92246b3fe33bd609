"""Hot reload: a new ``current`` version is swapped in between batches; a bad one is refused.

Versions load and warm up on a worker thread while the loop goes on polling.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import torch

from detector.config import ScoringConfig
from detector.core.artifact import (
    CURRENT_POINTER,
    WEIGHTS_FILE,
    ArtifactError,
    read_metadata,
    save_artifact,
    set_current,
)
from detector.core.model import LSTMAutoencoder, ModelSpec
from detector.reload import BackgroundLoader, FinishedLoad, ModelWatcher, load_compatible
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    WINDOW,
    DemoData,
    Topics,
    copy_version,
    produce,
    read_topic,
    wait_until,
)

CPU = ScoringConfig(device="cpu")


@pytest.fixture(scope="module")
def large_model(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> Path:
    """The demo model's features and window with a far larger network: seconds to warm up.

    Its weights are random, so its scores mean nothing; what matters is a version that fits the
    demo model's windows and takes long to load (about 5 s on 2 cores, the demo model 0.3 s).
    """
    metadata = read_metadata(demo_data.model.path).model_dump(
        mode="json", exclude={"weights_file", "weights_sha256"}
    )
    metadata["version"] = "large"
    metadata["model"] = {**metadata["model"], "hidden_size": 256, "num_layers": 2}
    torch.manual_seed(0)
    network = LSTMAutoencoder(ModelSpec.model_validate(metadata["model"]))
    return save_artifact(tmp_path_factory.mktemp("large"), metadata, network, make_current=False)


def test_watcher_offers_each_new_version_once(tmp_path: Path, demo_data: DemoData) -> None:
    registry = tmp_path / "models"
    first = copy_version(registry, demo_data.model.path, "v1", 1.0)
    set_current(registry, "v1")
    now = [0.0]
    watcher = ModelWatcher(registry, first, interval_s=5, clock=lambda: now[0])
    now[0] = 10
    assert watcher.candidate() is None
    second = copy_version(registry, demo_data.model.path, "v2", 1.0)
    set_current(registry, "v2")
    assert watcher.candidate() is None  # not due yet
    now[0] = 16
    assert watcher.candidate() == second.resolve()
    now[0] = 22
    assert watcher.candidate() is None  # offered already


def _collect(loader: BackgroundLoader, until: Path, timeout_s: float) -> list[tuple[str, ...]]:
    """(profile, role, version) of each load ``loader`` finishes, until the one of ``until``."""
    got: list[FinishedLoad] = []

    def arrived() -> bool:
        got.extend(loader.finished())
        return any(done.path == until for done in got)

    wait_until(arrived, timeout_s, f"{until.name} loaded")
    assert all(done.error is None for done in got), [done.error for done in got]
    return [(done.profile, done.role, done.path.name) for done in got]


def test_a_newer_pointer_supersedes_a_load_in_flight(
    tmp_path: Path, demo_data: DemoData, large_model: Path
) -> None:
    """Only the newest version of a profile's model (or candidate) is handed back."""
    registry = tmp_path / "models"
    current = read_metadata(copy_version(registry, demo_data.model.path, "v1", 1.0))
    slow = copy_version(registry, large_model, "v2", 1.0)
    newer = copy_version(registry, demo_data.model.path, "v3", 0.5)
    last = copy_version(registry, demo_data.model.path, "v4", 0.5)
    loader = BackgroundLoader(CPU)
    try:
        assert loader.submit("pump", "model", current, slow) is None
        assert loader.submit("pump", "model", current, newer) == slow
        assert loader.submit("pump", "candidate", current, slow) is None
        assert loader.discard("pump", "candidate") == slow  # the pointer was removed
        # One worker, first in first out: once the last is back, everything before it is done.
        assert loader.submit("fan", "candidate", current, last) is None
        assert _collect(loader, last, 60) == [("pump", "model", "v3"), ("fan", "candidate", "v4")]
        assert loader.finished() == []
    finally:
        loader.close()


def test_close_stops_a_warm_up_in_progress(
    tmp_path: Path, demo_data: DemoData, large_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping the daemon waits for one warm-up step of a load, not for the whole load."""
    current = read_metadata(demo_data.model.path)
    started = time.monotonic()
    load_compatible(current, large_model, CPU)
    whole = time.monotonic() - started
    loader = BackgroundLoader(CPU)
    with caplog.at_level(logging.INFO, logger="detector.reload"):
        loader.submit("default", "model", current, large_model)
        wait_until(lambda: "loading model large" in caplog.text, 30, "the load started")
        started = time.monotonic()
        loader.close()
        closing = time.monotonic() - started
    assert closing < whole / 3, f"close took {closing:.2f} s, a whole load {whole:.2f} s"
    assert not [t for t in threading.enumerate() if t.name.startswith("model-loader")]


def test_watcher_reports_each_bad_pointer_once(tmp_path: Path, demo_data: DemoData) -> None:
    """Item 11: a pointer that cannot be followed is refused visibly, once per distinct value."""
    registry = tmp_path / "models"
    first = copy_version(registry, demo_data.model.path, "v1", 1.0)
    set_current(registry, "v1")
    now = [0.0]
    watcher = ModelWatcher(registry, first, interval_s=1, clock=lambda: now[0])

    def poll() -> Path | None:
        now[0] += 1
        return watcher.candidate()

    pointer = registry / CURRENT_POINTER
    for value, reason in [
        (b"../elsewhere\n", "outside"),
        (b"v9\n", "v9"),
        (b"x" * 300 + b"\n", "x" * 20),  # too long for a file name: was an uncaught OSError
        (b"\xff\xfe\n", "UTF-8"),  # was an uncaught UnicodeDecodeError
    ]:
        pointer.write_bytes(value)
        with pytest.raises(ArtifactError, match=reason):
            poll()
        assert poll() is None  # the same bad value again: no second report
    second = copy_version(registry, demo_data.model.path, "v2", 1.0)
    set_current(registry, "v2")
    assert poll() == second.resolve()
    pointer.write_bytes(b"v9\n")  # bad again after a good version: reported again
    with pytest.raises(ArtifactError, match="v9"):
        poll()


@pytest.mark.integration
def test_new_version_is_swapped_in_and_a_bad_one_refused(
    tmp_path: Path, topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    registry = tmp_path / "models"
    copy_version(registry, demo_data.model.path, "v1", 1.0)
    set_current(registry, "v1")
    readings = interleave(demo_data.anomalous.readings)
    messages = encode_messages(readings)
    half = len(messages) // 2
    daemon = start_daemon(
        DETECTOR_MODEL__PATH=str(registry), DETECTOR_MODEL__RELOAD_INTERVAL_S="0.2"
    )
    produce(topics.bootstrap, topics.readings, messages[:half])
    wait_until(lambda: daemon.metric("detector_records_consumed_total") == half, 60, "first half")

    # A lower threshold makes the new version visibly different in the alerts it sends.
    copy_version(registry, demo_data.model.path, "v2", 0.5)
    set_current(registry, "v2")
    wait_until(
        lambda: daemon.metric('detector_model_reloads_total{result="success"}') == 1, 30, "swap"
    )
    info = [k for k, v in daemon.metrics().items() if k.startswith("detector_model_info") and v]
    assert len(info) == 1 and 'version="v2"' in info[0]

    broken = copy_version(registry, demo_data.model.path, "v3", 1.0)
    weights = bytearray((broken / WEIGHTS_FILE).read_bytes())
    weights[-1] ^= 0xFF
    (broken / WEIGHTS_FILE).write_bytes(bytes(weights))
    set_current(registry, "v3")
    wait_until(
        lambda: daemon.metric('detector_model_reloads_total{result="rejected"}') == 1, 30, "refusal"
    )
    assert "refused model v3, keeping v2" in daemon.log()

    produce(topics.bootstrap, topics.readings, messages[half:])
    rows = len(readings)
    wait_until(
        lambda: daemon.metric("detector_windows_scored_total") == rows - 3 * (WINDOW - 1),
        60,
        "every window scored exactly once across the swaps",
    )
    assert daemon.process.poll() is None
    alerts = read_topic(topics.bootstrap, topics.alerts)
    second_half_start = readings["ts"].iloc[half]
    late = [a for a in alerts if a["window_end"] >= second_half_start]
    assert late, "the second half produced alerts"
    assert {a["model_version"] for a in late} == {"v2"}
    assert {
        a["model_version"] for a in alerts if a["window_end"] < readings["ts"].iloc[half - 3]
    } <= {"v1"}


@pytest.mark.integration
def test_the_loop_keeps_polling_while_a_large_version_loads(
    tmp_path: Path, topics: Topics, demo_data: DemoData, large_model: Path, start_daemon
) -> None:
    """Records that arrive while a new version warms up are consumed before it is swapped in."""
    registry = tmp_path / "models"
    copy_version(registry, demo_data.model.path, "v1", 1.0)
    set_current(registry, "v1")
    copy_version(registry, large_model, "v2", 1.0)
    messages = encode_messages(interleave(demo_data.normal.readings))[:900]
    daemon = start_daemon(
        DETECTOR_MODEL__PATH=str(registry), DETECTOR_MODEL__RELOAD_INTERVAL_S="0.2"
    )
    produce(topics.bootstrap, topics.readings, messages[:300])
    wait_until(lambda: daemon.metric("detector_records_consumed_total") == 300, 60, "first part")

    set_current(registry, "v2")
    wait_until(lambda: "loading model v2" in daemon.log(), 30, "the load started")
    produce(topics.bootstrap, topics.readings, messages[300:600])
    swapped = 'detector_model_reloads_total{result="success"}'
    samples: list[dict[str, float]] = []

    def swapped_in() -> bool:
        samples.append(daemon.metrics())
        return samples[-1].get(swapped, 0) == 1

    wait_until(swapped_in, 120, "v2 swapped in")
    loading = [s for s in samples if s.get(swapped, 0) == 0]
    progress = {s["detector_last_progress_timestamp_seconds"] for s in loading}
    assert len(progress) >= 3, f"the loop progressed {len(progress)} times while v2 loaded"
    consumed = max(s["detector_records_consumed_total"] for s in loading)
    assert consumed == 600, "the records produced during the load were consumed before the swap"

    produce(topics.bootstrap, topics.readings, messages[600:])
    wait_until(lambda: daemon.metric("detector_records_consumed_total") == 900, 60, "last part")
    info = [k for k, v in daemon.metrics().items() if k.startswith("detector_model_info") and v]
    assert len(info) == 1 and 'version="v2"' in info[0]
    assert daemon.process.poll() is None
