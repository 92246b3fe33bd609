"""Admission rules: whether a parsed reading enters its device's window, and how.

Pure decisions on timestamps and values (no I/O), applied by the daemon before a reading touches
the ring buffer: duplicates, late and future readings are rejected; a reading a little out of
order is inserted in time order; a long gap resets the window so no window spans it; missing
sensors are filled from the device's previous reading for a limited number of readings. A run of
late readings means the device's clock stepped back (or one reading was stamped ahead of it), so
after a limited number of them the window restarts rather than reject the device's readings until
its clock catches up with the newest one.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Container, Sequence
from dataclasses import dataclass

import numpy as np

from detector.core.readings import RejectReason
from detector.core.windows import WindowStore

__all__ = ["Admission", "AdmissionPolicy", "Admitter", "Placement", "impute_missing"]


class Placement(enum.Enum):
    """Where an admitted reading goes."""

    APPEND = "append"  # newest reading: may complete a window
    INSERT = "insert"  # late but within the grace period: inserted in time order
    RESET = "reset"  # after a gap: the window restarts with this reading
    CLOCK_RESET = "clock_reset"  # after a run of late readings: the window restarts with this one


@dataclass(frozen=True)
class AdmissionPolicy:
    """Limits on timestamps and imputation (seconds are event time, from the readings)."""

    out_of_order_grace_s: float = 0.0
    max_future_skew_s: float = 300.0
    max_gap_s: float | None = None
    max_imputed_readings: int = 0
    max_late_readings: int | None = None

    def place(
        self, ts: float, last_ts: float, now: float, late_streak: int = 0
    ) -> Placement | RejectReason:
        """Decide for a reading at ``ts`` given the device's newest ``last_ts`` and wall-clock ``now``.

        ``late_streak`` counts the device's readings rejected as late just before this one; once
        ``max_late_readings`` of them were rejected the next late one restarts the window, since
        a clock that stepped back would otherwise have every reading refused until it caught up
        (an hour for a one-hour step). Exact duplicates of the newest timestamp are reported here;
        duplicates of older timestamps inside the grace period are the caller's to detect (it
        holds the window).
        """
        if ts > now + self.max_future_skew_s:
            return RejectReason.FUTURE_TIMESTAMP
        if ts == last_ts:
            return RejectReason.DUPLICATE
        if ts > last_ts:
            if (
                self.max_gap_s is not None
                and math.isfinite(last_ts)
                and ts - last_ts > self.max_gap_s
            ):
                return Placement.RESET
            return Placement.APPEND
        if last_ts - ts <= self.out_of_order_grace_s:
            return Placement.INSERT
        if self.max_late_readings is not None and late_streak >= self.max_late_readings:
            return Placement.CLOCK_RESET
        return RejectReason.LATE


def impute_missing(
    values: np.ndarray, previous: np.ndarray | None, streak: int, limit: int
) -> np.ndarray | None:
    """Fill NaN sensors from the device's previous reading, or ``None`` if that is not allowed.

    ``streak`` counts the device's consecutive readings that already needed imputation; past
    ``limit`` of them the reading is rejected, since a sensor that stays silent is a fault to
    surface, not to paper over.
    """
    missing = np.isnan(values)
    if not missing.any():
        return values
    if previous is None or streak >= limit:
        return None
    return np.where(missing, previous, values).astype(values.dtype, copy=False)


@dataclass(frozen=True, slots=True)
class Admission:
    """What became of one reading: rejected (``reason``), or placed and maybe completing a window."""

    reason: RejectReason | None = None
    detail: str = ""
    placement: Placement | None = None
    imputed: bool = False
    ready: bool = False  # the device's window is ready to score after this reading


class Admitter:
    """Admits readings into a :class:`~detector.core.windows.WindowStore` under an :class:`AdmissionPolicy`.

    Holds the per-device admission state (late and imputed streaks); the daemon and ``detector
    evaluate`` both admit through it, so a backtest windows readings exactly as the daemon does.
    """

    def __init__(
        self, policy: AdmissionPolicy, store: WindowStore, feature_names: Sequence[str]
    ) -> None:
        self.policy = policy
        self.store = store
        self.feature_names = list(feature_names)
        self.imputed_streak: dict[str, int] = {}
        self.late_streak: dict[str, int] = {}  # late readings in a row: a clock that stepped?

    def admit(
        self, slot: int, device_id: str, ts: float, values: np.ndarray, now: float
    ) -> Admission:
        """Place one reading of ``device_id`` (whose window is ``slot``) at wall-clock ``now``."""
        store = self.store
        late_streak = self.late_streak.get(device_id, 0)
        placement = self.policy.place(ts, store.last_timestamp(device_id), now, late_streak)
        if placement is RejectReason.LATE:
            self.late_streak[device_id] = late_streak + 1
        elif late_streak:
            del self.late_streak[device_id]
        if isinstance(placement, RejectReason):
            return Admission(placement, f"{device_id} ts {ts}")
        imputed = False
        # Any NaN (a missing sensor) makes the sum NaN; the parser let only finite float32
        # numbers through, whose float64 sum cannot overflow. A Python sum, unlike a numpy
        # reduction, keeps the GIL: a numpy call here let kafka-python's IO thread cut in on
        # every reading (py-spy: 10 % of the pipeline's busy time on this line).
        if math.isnan(sum(values.tolist())):
            streak = self.imputed_streak.get(device_id, 0)
            filled = impute_missing(
                values, store.newest_values(slot), streak, self.policy.max_imputed_readings
            )
            if filled is None:
                missing = [
                    n for n, v in zip(self.feature_names, values, strict=True) if np.isnan(v)
                ]
                return Admission(RejectReason.MISSING_SENSORS, f"{device_id}: {missing}")
            values = filled
            imputed = True
            self.imputed_streak[device_id] = streak + 1
        elif device_id in self.imputed_streak:
            del self.imputed_streak[device_id]
        if placement is Placement.INSERT:
            if not store.insert(slot, ts, values):
                reason = (
                    RejectReason.DUPLICATE if store.holds_timestamp(slot, ts) else RejectReason.LATE
                )
                return Admission(reason, f"{device_id} ts {ts}", imputed=imputed)
            return Admission(placement=placement, imputed=imputed)
        if placement is Placement.RESET or placement is Placement.CLOCK_RESET:
            store.reset(slot)
        ready = store.append(slot, ts, values)
        return Admission(placement=placement, imputed=imputed, ready=ready)

    def forget(self, device_id: str) -> None:
        """Drop the device's admission state (its window slot is the store's to free)."""
        self.imputed_streak.pop(device_id, None)
        self.late_streak.pop(device_id, None)

    def retain(self, keep: Container[str]) -> None:
        """Keep only the devices in ``keep``, in dicts sized to them."""
        self.imputed_streak = {d: n for d, n in self.imputed_streak.items() if d in keep}
        self.late_streak = {d: n for d, n in self.late_streak.items() if d in keep}
