"""DeviceRegistry: every piece of per-device state is forgotten with its device."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.admission import AdmissionPolicy, Admitter
from detector.core.alerts import AlertRule
from detector.core.devices import DeviceRegistry
from detector.core.judge import Judge
from detector.core.windows import WindowStore

FEATURES = ["a", "b"]


def _registry(max_devices: int | None = None, min_idle_s: float = 10.0) -> DeviceRegistry[int]:
    store = WindowStore(3, len(FEATURES), max_devices=max_devices, initial_capacity=2)
    admitter = Admitter(AdmissionPolicy(max_imputed_readings=5), store, FEATURES)
    judge = Judge(AlertRule(), threshold=1.0)
    return DeviceRegistry(store, admitter, judge, min_idle_s)


def _feed(
    registry: DeviceRegistry[int], device: str, partition: int, ts: float, clock: float
) -> None:
    """One reading; after the first, sensor b is missing (imputed from the last reading)."""
    slot, _ = registry.slot(device, partition, clock)
    assert slot is not None
    values = np.array([ts, np.nan if ts else 1.0])
    admission = registry.admitter.admit(slot, device, ts, values, ts)
    if admission.ready:
        registry.judge.judge(device, 5.0)


def test_forgetting_partitions_leaves_nothing_of_their_devices() -> None:
    registry = _registry()
    for step in range(4):
        _feed(registry, "d0", 0, step, step)
        _feed(registry, "d1", 1, step, step)
    assert registry.judge.firing("d0") and registry.admitter.imputed_streak

    assert registry.forget_partitions({0}) == 1

    assert "d0" not in registry and "d1" in registry
    assert registry.tracked() == {
        "windows": 1,
        "partitions": 1,
        "judgements": 1,
        "imputed_streaks": 1,
        "late_streaks": 0,
    }


def test_a_new_device_replaces_only_one_idle_long_enough() -> None:
    registry = _registry(max_devices=1, min_idle_s=10.0)
    _feed(registry, "old", 0, 0.0, clock=0.0)

    assert registry.slot("new", 0, clock=5.0) == (None, None)
    slot, evicted = registry.slot("new", 0, clock=11.0)
    assert slot is not None and evicted is not None and evicted.device_id == "old"
    assert "old" not in registry and registry.devices_of(0) == ["new"]


def test_idle_devices_are_forgotten_unless_firing() -> None:
    registry = _registry()
    for step in range(3):
        _feed(registry, "firing", 0, step, clock=0.0)
    _feed(registry, "quiet", 0, 0.0, clock=0.0)
    assert registry.forget_idle(before=1.0) == 1
    assert "firing" in registry and "quiet" not in registry


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5), st.integers(0, 2), st.sampled_from(["feed", "forget", "idle"])
        ),
        max_size=80,
    )
)
def test_every_container_tracks_only_devices_with_a_window(
    steps: list[tuple[int, int, str]],
) -> None:
    registry = _registry(max_devices=4, min_idle_s=0.0)
    for clock, (device, partition, action) in enumerate(steps):
        name = f"d{device}"
        if action == "feed":
            slot, _ = registry.slot(name, partition, float(clock))
            if slot is not None:
                values = np.array([float(clock), np.nan if clock % 3 else 1.0])
                admission = registry.admitter.admit(slot, name, float(clock), values, clock)
                if admission.ready:
                    registry.judge.judge(name, float(clock % 7))
        elif action == "forget":
            registry.forget_partitions({partition})
        else:
            registry.forget_idle(before=float(clock - 3))
        registry.tidy()
        tracked = registry.tracked()
        assert max(tracked.values()) <= tracked["windows"] == len(registry)
