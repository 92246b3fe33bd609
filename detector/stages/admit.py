"""Admit: a lane's readings into their devices' windows, in order, each device's in time order.

Admission (:class:`~detector.core.admission.Admitter`) decides duplicates, late and future
readings, gaps and imputation per reading. Most readings need no decision: a device whose
readings in this batch are all *plain* (complete, newer than its newest, not in the future,
within ``max_gap_s``) has them appended in array operations
(:meth:`~detector.core.windows.WindowStore.append_many`); every other device's readings go
through the admitter one by one, so each device's readings keep their order either way. A reading
that completes a window has it copied into the lane's pending batch (:mod:`detector.stages.window`).
"""

from __future__ import annotations

import time
from collections.abc import Hashable

import numpy as np

from detector.core.admission import Placement
from detector.core.readings import Rejection, RejectReason
from detector.lane import Lane
from detector.logs import RateLimitedLog
from detector.stages.decode import Readings, reject_internal_error
from detector.stages.route import claimed_elsewhere

__all__ = ["admit"]


def admit(
    lane: Lane,
    lanes: list[Lane],
    partition: Hashable,
    readings: Readings,
    now: float,
    idle_clock: float,
    failed: set[int],
    trace_log: RateLimitedLog,
    columnar: bool = True,
) -> None:
    """Admit ``readings`` (all routed to ``lane``, from ``partition``) at wall-clock ``now``.

    ``idle_clock`` is the loop's clock for device idleness. ``failed`` holds the positions of
    records whose rest an internal error rejected (in any lane; added to here). ``columnar``
    ``False`` admits every reading on its own, which gives the same windows, rejections and
    alerts (the tests compare the two), only slower.
    """
    fast = _admit_plain(lane, lanes, partition, readings, now, idle_clock) if columnar else None
    rows = range(len(readings)) if fast is None else np.flatnonzero(~fast).tolist()
    for row in rows:
        position = readings.positions[row]
        if position in failed:
            continue
        try:
            _admit_one(lane, lanes, partition, readings, row, now, idle_clock)
        except Exception as exc:
            failed.add(position)
            reject_internal_error(readings, position, exc, trace_log)


def _admit_plain(
    lane: Lane,
    lanes: list[Lane],
    partition: Hashable,
    readings: Readings,
    now: float,
    idle_clock: float,
) -> np.ndarray | None:
    """Admit, in array operations, the readings of devices whose readings are all plain.

    Returns which readings were admitted; devices with any other reading are left whole to the
    one-by-one path. ``None`` (nothing admitted) when the new devices would reach
    ``max_devices``, choosing whom to replace being a per-reading decision, or when a new device
    is tracked under another profile (rejected reading by reading).
    """
    registry = lane.registry
    store = registry.store
    devices = list(dict.fromkeys(readings.device_ids))
    new = [device_id for device_id in devices if device_id not in store]
    if store.max_devices is not None and len(store) + len(new) > store.max_devices:
        return None
    if any(claimed_elsewhere(lane, lanes, device_id) for device_id in new):
        return None
    slot_of: dict[str, int] = {}
    for device_id in devices:
        slot, _ = registry.slot(device_id, partition, idle_clock)
        if slot is None:  # cannot happen below max_devices; the per-reading path decides
            return None
        slot_of[device_id] = slot
    slots = np.fromiter(map(slot_of.__getitem__, readings.device_ids), np.int64)
    ts = np.asarray(readings.timestamps, dtype=np.float64)
    values = readings.values[:, : store.n_features]
    policy = registry.admitter.policy
    order = np.argsort(slots, kind="stable")
    grouped, grouped_ts = slots[order], ts[order]
    first = np.r_[True, grouped[1:] != grouped[:-1]]
    previous = np.where(first, store.last_timestamps(grouped), np.r_[-np.inf, grouped_ts[:-1]])
    plain = grouped_ts > previous
    if policy.max_gap_s is not None:
        plain &= ~np.isfinite(previous) | (grouped_ts - previous <= policy.max_gap_s)
    plain &= grouped_ts <= now + policy.max_future_skew_s
    plain &= ~np.isnan(values[order]).any(axis=1)
    starts = np.flatnonzero(first)
    device_plain = np.minimum.reduceat(plain.astype(np.int8), starts).astype(bool)
    fast = np.empty(len(slots), dtype=bool)
    fast[order] = np.repeat(device_plain, np.diff(np.r_[starts, len(slots)]))
    if not fast.any():
        return fast
    admitter = registry.admitter
    device_of = {slot: device_id for device_id, slot in slot_of.items()}
    for slot in grouped[starts][device_plain].tolist():
        device_id = device_of[slot]
        admitter.imputed_streak.pop(device_id, None)
        admitter.late_streak.pop(device_id, None)
    chosen = np.flatnonzero(fast)
    ready, windows, spans = store.append_many(slots[chosen], ts[chosen], values[chosen])
    live = np.asarray(readings.live, dtype=bool)[np.asarray(readings.positions, dtype=np.int64)]
    lane.counts.accepted += int(live[chosen].sum())
    rows = chosen[ready]
    lane.pending.extend(
        windows,
        [readings.device_ids[i] for i in rows.tolist()],
        spans,
        live[rows],
        time.monotonic(),
    )
    return fast


def _admit_one(
    lane: Lane,
    lanes: list[Lane],
    partition: Hashable,
    readings: Readings,
    row: int,
    now: float,
    idle_clock: float,
) -> None:
    """Admit the reading at ``row`` on its own (the admitter decides)."""
    registry = lane.registry
    device_id, index = readings.device_ids[row], readings.indices[row]
    position = readings.positions[row]
    live = readings.live[position]
    if device_id not in registry:
        other = claimed_elsewhere(lane, lanes, device_id)
        if other is not None:
            detail = f"{device_id}: tracked as profile {other.name}, reading is for {lane.name}"
            readings.reject(position, Rejection(RejectReason.PROFILE_CONFLICT, detail, index))
            return
    slot, evicted = registry.slot(device_id, partition, idle_clock)
    if evicted is not None:
        lane.sensor.evicted("capacity", 1, evicted.device_id if evicted.firing else None)
        lane.sensor.firing(registry.judge.firing_count())
    if slot is None:
        detail = f"{device_id}: {len(registry)} devices, none idle long enough to replace"
        readings.reject(position, Rejection(RejectReason.TOO_MANY_DEVICES, detail, index))
        return
    values = readings.values[row, : registry.store.n_features]
    admission = registry.admitter.admit(slot, device_id, readings.timestamps[row], values, now)
    counts = lane.counts
    if admission.imputed and live:
        counts.imputed += 1
    if admission.reason is not None:
        readings.reject(position, Rejection(admission.reason, admission.detail, index))
        return
    if live:
        counts.accepted += 1
        placement = admission.placement
        if placement is Placement.RESET or placement is Placement.CLOCK_RESET:
            reason = "gap" if placement is Placement.RESET else "clock"
            counts.resets[reason] = counts.resets.get(reason, 0) + 1
    if admission.ready:
        lane.pending.add(registry.store, slot, device_id, live, time.monotonic())
