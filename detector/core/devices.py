"""Every piece of per-device state in one place, forgotten together.

A device's window (:class:`~detector.core.windows.WindowStore`), admission streaks
(:class:`~detector.core.admission.Admitter`), alert, calibration and adaptation state
(:class:`~detector.core.judge.Judge`, and the shadow candidate's judge while one is scored) and the
partition it arrives on are registered here; forgetting a
device, a partition's devices or idle devices goes through :class:`DeviceRegistry`, so no state
outlives its device. New per-device state registers here too.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from detector.core.admission import Admitter
from detector.core.judge import Judge
from detector.core.windows import WindowStore, object_bytes

__all__ = ["DeviceRegistry", "Eviction"]

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True)
class Eviction:
    """A device forgotten to make room for a new one at ``max_devices``."""

    device_id: str
    firing: bool  # its open episode will get no resolved alert


class DeviceRegistry(Generic[P]):
    """The fleet's per-device state: windows, admission, judgement and partition."""

    def __init__(
        self, store: WindowStore, admitter: Admitter, judge: Judge, capacity_min_idle_s: float
    ) -> None:
        self.store = store
        self.admitter = admitter
        self.judge = judge
        self.capacity_min_idle_s = capacity_min_idle_s
        self.shadow: Judge | None = None  # the candidate model's judgements, while shadowing
        self._partition: dict[str, P] = {}

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self.store

    def slot(
        self, device_id: str, partition: P, clock: float
    ) -> tuple[int | None, Eviction | None]:
        """The device's window slot, touched at ``clock`` (the idle clock); ``None``: refused.

        At ``max_devices`` a new device takes the slot of the longest-idle one, and only of one
        silent for ``capacity_min_idle_s``: a fleet larger than the limit whose devices all
        report would have each device replaced just before its next reading, and none would
        fill a window.
        """
        store = self.store
        evicted = None
        try:
            slot = store.slot(device_id)
        except OverflowError:
            oldest = store.longest_idle()
            if oldest is None or clock - oldest[1] < self.capacity_min_idle_s:
                return None, None
            evicted = Eviction(oldest[0], self.forget(oldest[0]))
            slot = store.slot(device_id)
        if self._partition.get(device_id) != partition:
            self._partition[device_id] = partition
        store.touch(slot, clock)
        return slot, evicted

    def devices_of(self, partition: P) -> list[str]:
        """The devices last seen on ``partition``."""
        return [d for d, p in self._partition.items() if p == partition]

    def forget(self, device_id: str) -> bool:
        """Drop all of a device's state and free its slot; returns whether it was firing."""
        self.store.remove(device_id)
        self.admitter.forget(device_id)
        self._partition.pop(device_id, None)
        if self.shadow is not None:
            self.shadow.forget(device_id)
        return self.judge.forget(device_id)

    def forget_partitions(self, partitions: Collection[P]) -> int:
        """Forget the devices of partitions that moved; returns how many."""
        devices = [d for d, p in self._partition.items() if p in partitions]
        for device_id in devices:
            self.forget(device_id)
        return len(devices)

    def forget_idle(self, before: float) -> int:
        """Forget devices last seen before ``before`` on the idle clock, unless firing.

        A firing device is kept, so that when it reports again its episode resolves (or goes
        on) rather than stay open on the alerts topic; at ``max_devices`` it can be replaced.
        """
        forgotten = 0
        for device_id in self.store.idle(before=before):
            if not self.judge.firing(device_id):
                self.forget(device_id)
                forgotten += 1
        return forgotten

    def tidy(self) -> bool:
        """Drop stray judgements and shrink the containers; returns whether memory was freed."""
        # A device forgotten while its window waited in a batch got a judgement back when the
        # window was scored: every judgement must belong to a tracked device.
        store = self.store
        judges = [self.judge] if self.shadow is None else [self.judge, self.shadow]
        for judge in judges:
            if len(judge.devices) > len(store):
                judge.retain(store)
        if not store.compact():
            return False
        # Deleting keys never shrinks a dict; copies are sized to what is left.
        self._partition = dict(self._partition)
        for judge in judges:
            judge.retain(store)
        self.admitter.retain(store)
        return True

    def object_bytes(self) -> int:
        """Bytes of the per-device Python objects (ids, indexes, judgements), each counted once."""
        admitter = self.admitter
        shadow = [] if self.shadow is None else [self.shadow.devices]
        return object_bytes(
            [
                self.store.slot_index,
                self._partition,
                self.judge.devices,
                admitter.imputed_streak,
                admitter.late_streak,
                *shadow,
            ]
        )

    def tracked(self) -> dict[str, int]:
        """How many entries each per-device container holds (they should all agree)."""
        tracked = {
            "windows": len(self.store),
            "partitions": len(self._partition),
            "judgements": len(self.judge.devices),
            "imputed_streaks": len(self.admitter.imputed_streak),
            "late_streaks": len(self.admitter.late_streak),
        }
        if self.shadow is not None:
            tracked["shadow_judgements"] = len(self.shadow.devices)
        return tracked
