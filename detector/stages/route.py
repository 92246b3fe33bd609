"""Route: each reading to the lane of its device profile (the one lane, without profiles).

The parser already gave every reading a profile (the router's rules); here a device keeps the
profile it started with, so a reading for another profile than the one tracking its device is
rejected as ``profile_conflict``.
"""

from __future__ import annotations

from collections.abc import Sequence

from detector.core.readings import Rejection, RejectReason
from detector.lane import Lane
from detector.stages.decode import Readings

__all__ = ["claimed_elsewhere", "route"]


def route(readings: Readings, lanes: Sequence[Lane]) -> list[tuple[Lane, Readings]]:
    """The readings of each lane they were routed to (all of them to a single lane).

    A device no lane tracks yet is claimed by the lane of its first reading here, in reading
    order, so that its later readings for another lane are ``profile_conflict`` as they would
    be record by record.
    """
    if len(lanes) == 1:
        return [(lanes[0], readings)]
    rows: dict[int, list[int]] = {}
    claims: dict[str, int] = {}
    for row, (device_id, profile) in enumerate(
        zip(readings.device_ids, readings.profiles, strict=True)
    ):
        claimed = claims.get(device_id)
        if claimed is None:
            # -1: tracked already; the lane's own admission checks which profile holds it.
            tracked = any(device_id in lane.registry for lane in lanes)
            claimed = claims[device_id] = -1 if tracked else profile
        if claimed >= 0 and claimed != profile:
            detail = (
                f"{device_id}: tracked as profile {lanes[claimed].name}, "
                f"reading is for {lanes[profile].name}"
            )
            rejection = Rejection(RejectReason.PROFILE_CONFLICT, detail, readings.indices[row])
            readings.reject(readings.positions[row], rejection)
            continue
        rows.setdefault(profile, []).append(row)
    return [(lanes[profile], readings.select(part)) for profile, part in rows.items()]


def claimed_elsewhere(lane: Lane, lanes: Sequence[Lane], device_id: str) -> Lane | None:
    """The other lane tracking ``device_id``: a device keeps the profile it started with."""
    if len(lanes) == 1:
        return None
    for other in lanes:
        if other is not lane and device_id in other.registry:
            return other
    return None
