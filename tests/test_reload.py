"""Hot reload: a new ``current`` version is swapped in between batches; a bad one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.core.artifact import (
    CURRENT_POINTER,
    WEIGHTS_FILE,
    ArtifactError,
    set_current,
)
from detector.reload import ModelWatcher
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
