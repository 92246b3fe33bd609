"""Windowing: offline sliding windows (training, benchmarks) and per-device ring buffers (daemon).

Both produce windows of shape ``(length, features)`` in time order, oldest first; the tests check
that a ring buffer fed a sequence yields exactly the sliding windows of that sequence.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["WindowStore", "object_bytes", "sliding_windows", "window_end_indices"]


def sliding_windows(values: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """All windows of ``length`` rows taken every ``stride`` rows: ``(n_windows, length, features)``.

    The result is a read-only view; the last window ends on the last row that completes one.
    """
    if length < 1 or stride < 1:
        raise ValueError("length and stride must be >= 1")
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (rows, features), got shape {values.shape}")
    if len(values) < length:
        return np.empty((0, length, values.shape[1]), dtype=values.dtype)
    view = sliding_window_view(values, length, axis=0)  # (n, features, length)
    return view[::stride].transpose(0, 2, 1)


def window_end_indices(n_rows: int, length: int, stride: int = 1) -> np.ndarray:
    """Row index of the last row of each window that :func:`sliding_windows` returns."""
    if n_rows < length:
        return np.empty(0, dtype=np.int64)
    return np.arange(length - 1, n_rows, stride, dtype=np.int64)


class WindowStore:
    """Preallocated ring buffers, one slot per device, growing by doubling.

    ``append`` writes one reading in O(features) with no per-reading allocation of Python objects
    beyond the first sight of a device. A device's window is *ready* when its buffer is full and
    ``stride`` readings have arrived since its last ready window.

    Devices also leave: ``remove`` frees a slot for the next new device, so a fleet that replaces
    its devices reuses memory instead of growing, and ``compact`` shrinks the buffers once the
    fleet has shrunk to a quarter of them. ``touch`` records when a device was last seen, so
    ``idle`` and ``longest_idle`` can say whom to forget.
    """

    def __init__(
        self,
        length: int,
        n_features: int,
        stride: int = 1,
        initial_capacity: int = 256,
        max_devices: int | None = None,
    ) -> None:
        if length < 1 or n_features < 1 or stride < 1 or initial_capacity < 1:
            raise ValueError("length, n_features, stride and initial_capacity must be >= 1")
        self.length = length
        self.n_features = n_features
        self.stride = stride
        self.max_devices = max_devices
        self._initial_capacity = initial_capacity
        self._slots: dict[str, int] = {}
        self._ids: list[str | None] = []  # device of each slot ever handed out; None: free
        self._free: list[int] = []
        self._values = np.zeros((initial_capacity, length, n_features), dtype=np.float32)
        self._timestamps = np.zeros((initial_capacity, length), dtype=np.float64)
        self._next = np.zeros(initial_capacity, dtype=np.int64)  # next write position
        self._count = np.zeros(initial_capacity, dtype=np.int64)  # readings since last reset
        self._last_ts = np.full(initial_capacity, -np.inf, dtype=np.float64)
        # When each device was last seen; +inf (never idle) for free slots and untouched devices.
        self._last_seen = np.full(initial_capacity, np.inf, dtype=np.float64)
        self._idle_order: list[tuple[int, str, float]] = []  # longest-idle first, oldest last

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._slots

    @property
    def device_ids(self) -> list[str]:
        """Devices that have a slot, in first-seen order."""
        return list(self._slots)

    @property
    def capacity(self) -> int:
        """Devices the buffers have room for before they grow."""
        return len(self._next)

    @property
    def slot_bytes(self) -> int:
        """Bytes of buffer each slot holds: its window, timestamps and counters."""
        arrays = (
            self._values,
            self._timestamps,
            self._next,
            self._count,
            self._last_ts,
            self._last_seen,
        )
        return sum(array[0].nbytes for array in arrays)

    @property
    def slot_index(self) -> Mapping[str, int]:
        """Device id to slot (read it, never change it)."""
        return self._slots

    def slot(self, device_id: str) -> int:
        """The slot of ``device_id``, allocated on first sight (a freed one if there is one)."""
        slot = self._slots.get(device_id)
        if slot is None:
            if self.max_devices is not None and len(self._slots) >= self.max_devices:
                raise OverflowError(f"more than {self.max_devices} devices")
            if self._free:
                slot = self._free.pop()
                self._ids[slot] = device_id
            else:
                slot = len(self._ids)
                if slot == len(self._next):
                    self._grow()
                self._ids.append(device_id)
            self._slots[device_id] = slot
        return slot

    def remove(self, device_id: str) -> None:
        """Forget a device entirely; its slot goes to the next new device (unknown: no-op)."""
        slot = self._slots.pop(device_id, None)
        if slot is None:
            return
        self.reset(slot)
        self._last_seen[slot] = np.inf
        self._ids[slot] = None
        self._free.append(slot)

    def touch(self, slot: int, seen: float) -> None:
        """Record that the device in ``slot`` was seen at time ``seen`` (one array write)."""
        self._last_seen[slot] = seen

    def idle(self, before: float) -> list[str]:
        """Devices last seen before ``before`` (devices never touched are never idle)."""
        slots = np.flatnonzero(self._last_seen[: len(self._ids)] < before).tolist()
        return [device_id for slot in slots if (device_id := self._ids[slot]) is not None]

    def longest_idle(self) -> tuple[str, float] | None:
        """The device seen longest ago and when, ``None`` if no device was ever touched.

        Candidates are ranked a batch (1 % of the devices) at a time, so that a stream of new
        devices arriving at ``max_devices``, each replacing the longest-idle one, costs one
        partial sort per batch rather than a scan of every slot per device. The answer is exact
        while touch times never decrease (the daemon's idle clock): a device outside the batch
        was seen no earlier than every device in it.
        """
        while True:
            while self._idle_order:
                slot, device_id, seen = self._idle_order[-1]
                # Still in its slot (a freed slot can hold a newer device seen in the same tick)
                # and not seen again since it was ranked.
                if self._ids[slot] == device_id and self._last_seen[slot] == seen:
                    return device_id, seen
                self._idle_order.pop()
            seen_at = self._last_seen[: len(self._ids)]
            touched = np.flatnonzero(seen_at < np.inf)
            if len(touched) == 0:
                return None
            batch = min(len(touched), max(1, len(self._slots) // 100))
            ranked = touched[np.argpartition(seen_at[touched], batch - 1)[:batch]]
            ranked = ranked[np.argsort(-seen_at[ranked], kind="stable")]
            self._idle_order = [
                (slot, device_id, float(seen_at[slot]))
                for slot in ranked.tolist()
                if (device_id := self._ids[slot]) is not None
            ]

    def compact(self) -> bool:
        """Shrink the buffers to twice the devices left once they hold under a quarter of them.

        Returns whether it shrank. Slots are renumbered, so no slot number obtained before may
        be used after; the devices' windows, timestamps and last-seen times are kept.
        """
        capacity = len(self._next)
        if capacity <= self._initial_capacity or 4 * len(self._slots) > capacity:
            return False
        keep = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        size = max(self._initial_capacity, 2 * len(keep))

        def shrink(array: np.ndarray, fill: float) -> np.ndarray:
            shrunk = _buffer((size, *array.shape[1:]), array.dtype, fill)
            shrunk[: len(keep)] = array[keep]
            return shrunk

        self._values = shrink(self._values, 0.0)
        self._timestamps = shrink(self._timestamps, 0.0)
        self._next = shrink(self._next, 0)
        self._count = shrink(self._count, 0)
        self._last_ts = shrink(self._last_ts, -np.inf)
        self._last_seen = shrink(self._last_seen, np.inf)
        self._slots = {device_id: slot for slot, device_id in enumerate(self._slots)}
        self._ids = list(self._slots)
        self._free = []
        self._idle_order = []
        return True

    def last_timestamp(self, device_id: str) -> float:
        """Timestamp of the device's newest reading, ``-inf`` if none."""
        slot = self._slots.get(device_id)
        return -np.inf if slot is None else float(self._last_ts[slot])

    def append(self, slot: int, ts: float, values: np.ndarray) -> bool:
        """Write one reading into ``slot``; returns whether a window is ready to score."""
        position = self._next[slot]
        self._values[slot, position] = values
        self._timestamps[slot, position] = ts
        self._next[slot] = (position + 1) % self.length
        self._last_ts[slot] = ts
        count = self._count[slot] + 1
        self._count[slot] = count
        return count >= self.length and (count - self.length) % self.stride == 0

    def last_timestamps(self, slots: np.ndarray) -> np.ndarray:
        """Timestamp of each slot's newest reading (``-inf``: none since its last reset)."""
        return self._last_ts[slots]

    def append_many(
        self, slots: np.ndarray, ts: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append readings of many devices at once, as :meth:`append` one by one would.

        ``slots`` ``(n,)``, ``ts`` ``(n,)`` and ``values`` ``(n, features)``: each device's
        readings in time order, each newer than everything its window holds (the caller checked);
        devices may interleave. Returns ``(ready, windows, spans)``: the indices of the readings
        after which a window was ready, grouped by device and in time order within a device,
        those windows ``(ready, length, features)`` and their first and last timestamps
        ``(ready, 2)``. A device may get more readings than its window holds: every window is
        cut from the device's history and the new readings before the buffer is overwritten.
        """
        length = self.length
        if len(slots) == 0:
            return (
                np.empty(0, np.int64),
                np.empty((0, length, self.n_features), np.float32),
                (np.empty((0, 2))),
            )
        order = np.argsort(slots, kind="stable")
        grouped = slots[order]
        firsts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        sizes = np.diff(np.r_[firsts, len(grouped)])
        devices = grouped[firsts]
        rank = np.arange(len(grouped)) - np.repeat(firsts, sizes)  # position within the device
        before = self._count[devices]
        held = np.repeat(np.minimum(before, length), sizes)  # readings the buffer holds already
        total = np.repeat(before, sizes) + rank + 1
        ready = np.flatnonzero((total >= length) & ((total - length) % self.stride == 0))
        # Window k of a ready reading: position held + rank + 1 - length + k of the device's
        # timeline, whose first ``held`` positions are in the buffer, the rest new readings.
        timeline = (held + rank + 1 - length)[ready, None] + np.arange(length)
        stored = timeline < held[ready, None]
        owner = np.broadcast_to(grouped[ready, None], timeline.shape)
        next_of = np.repeat(self._next[devices], sizes)[ready, None]
        buffer_row = (next_of - held[ready, None] + timeline) % length
        group_start = (ready - rank[ready])[:, None]
        new_index = order[np.where(stored, 0, group_start + timeline - held[ready, None])]
        windows = np.empty((len(ready), length, self.n_features), dtype=np.float32)
        stamps = np.empty((len(ready), length), dtype=np.float64)
        windows[stored] = self._values[owner[stored], buffer_row[stored]]
        stamps[stored] = self._timestamps[owner[stored], buffer_row[stored]]
        windows[~stored] = values[new_index[~stored]]
        stamps[~stored] = ts[new_index[~stored]]
        # Only each device's last ``length`` readings survive in its buffer.
        kept = rank >= np.repeat(sizes, sizes) - length
        position = (np.repeat(self._next[devices], sizes) + rank) % length
        self._values[grouped[kept], position[kept]] = values[order[kept]]
        self._timestamps[grouped[kept], position[kept]] = ts[order[kept]]
        self._next[devices] = (self._next[devices] + sizes) % length
        self._count[devices] = before + sizes
        self._last_ts[devices] = ts[order[firsts + sizes - 1]]
        spans = np.stack([stamps[:, 0], stamps[:, -1]], axis=1)
        return order[ready], windows, spans

    def insert(self, slot: int, ts: float, values: np.ndarray) -> bool:
        """Insert a reading older than the device's newest one at its place in time.

        Returns ``False`` (nothing written) when it is older than everything the window holds
        or its timestamp is already there; an insert never makes a window ready by itself.
        """
        filled = int(min(self._count[slot], self.length))
        order = (self._next[slot] - filled + np.arange(filled)) % self.length
        stamps = self._timestamps[slot, order]
        newer = int(np.count_nonzero(stamps > ts))
        if (stamps == ts).any() or (newer == filled and filled == self.length) or newer == 0:
            return False
        moving = order[filled - newer :]
        self._values[slot, (moving + 1) % self.length] = self._values[slot, moving]
        self._timestamps[slot, (moving + 1) % self.length] = self._timestamps[slot, moving]
        self._values[slot, moving[0]] = values
        self._timestamps[slot, moving[0]] = ts
        self._next[slot] = (self._next[slot] + 1) % self.length
        self._count[slot] += 1
        return True

    def holds_timestamp(self, slot: int, ts: float) -> bool:
        """Whether the device's current window already has a reading at ``ts``."""
        filled = int(min(self._count[slot], self.length))
        order = (self._next[slot] - filled + np.arange(filled)) % self.length
        return bool((self._timestamps[slot, order] == ts).any())

    def newest_values(self, slot: int) -> np.ndarray | None:
        """The device's newest reading (for imputing missing sensors), ``None`` if it has none."""
        if self._count[slot] == 0:
            return None
        return self._values[slot, (self._next[slot] - 1) % self.length]

    def reset(self, slot: int) -> None:
        """Forget a device's history (a gap, a handed-over partition): it must refill to score."""
        self._count[slot] = 0
        self._next[slot] = 0
        self._last_ts[slot] = -np.inf

    def window(self, slot: int, out: np.ndarray | None = None) -> np.ndarray:
        """The device's current window ``(length, features)`` oldest first, copied into ``out``."""
        buffer = self._values[slot]
        if out is None:
            out = np.empty_like(buffer)
        # Two slice copies around the write position: cheaper than a fancy-indexed take.
        split = int(self._next[slot])
        out[: self.length - split] = buffer[split:]
        out[self.length - split :] = buffer[:split]
        return out

    def window_span(self, slot: int) -> tuple[float, float]:
        """Timestamps of the first and last reading of the device's current window."""
        start = self._next[slot]
        end = (start - 1) % self.length
        return float(self._timestamps[slot, start]), float(self._timestamps[slot, end])

    def _grow(self) -> None:
        capacity = len(self._next) * 2
        if self.max_devices is not None:
            capacity = max(min(capacity, self.max_devices), len(self._next) + 1)

        def extend(array: np.ndarray, fill: float) -> np.ndarray:
            grown = _buffer((capacity, *array.shape[1:]), array.dtype, fill)
            grown[: len(array)] = array
            return grown

        self._values = extend(self._values, 0.0)
        self._timestamps = extend(self._timestamps, 0.0)
        self._next = extend(self._next, 0)
        self._count = extend(self._count, 0)
        self._last_ts = extend(self._last_ts, -np.inf)
        self._last_seen = extend(self._last_seen, np.inf)


def object_bytes(containers: Sequence[Mapping[Any, Any]]) -> int:
    """Bytes of dicts, their keys and values (and those values' attribute dicts), each once."""
    seen: set[int] = set()
    total = 0
    for container in containers:
        for item in (container, *container.keys(), *container.values()):
            for part in (item, getattr(item, "__dict__", None)):
                if part is not None and id(part) not in seen:
                    seen.add(id(part))
                    total += sys.getsizeof(part)
    return total


def _buffer(shape: tuple[int, ...], dtype: np.dtype, fill: float) -> np.ndarray:
    # Zeroed memory becomes resident only when written, so the unused part of a grown or shrunk
    # buffer costs address space, not RSS.
    return np.zeros(shape, dtype) if fill == 0 else np.full(shape, fill, dtype)
