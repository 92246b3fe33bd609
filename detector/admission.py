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
from dataclasses import dataclass

import numpy as np

from detector.readings import RejectReason


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
