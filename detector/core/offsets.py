"""Per-partition offsets and what may be committed: processed, safe, committed, rebuilding.

One tracker holds every offset fact the loop needs, so that a handover or a commit changes it in
one place. Offsets are "next to read" (Kafka's commit convention). ``safe`` is replaced, never
mutated, so kafka-python's IO thread (the rebalance listener) always reads a consistent mapping.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import Generic, TypeVar

__all__ = ["OffsetTracker"]

P = TypeVar("P", bound=Hashable)  # a partition (kafka's TopicPartition in the daemon)


class OffsetTracker(Generic[P]):
    """Offsets per partition: ingested, safe to commit, committed, and where rebuilding ends.

    A partition rewound for a rebuild replays records below its ``resume`` offset (those were
    processed before the handover): they rebuild state and publish nothing, and the partition
    is not committed until the replay is done.
    """

    def __init__(self) -> None:
        self._processed: dict[P, int] = {}
        self._committed: dict[P, int] = {}
        self._resume_at: dict[P, int] = {}
        self._partial: set[P] = set()  # the replay starts after the start of the log
        self._safe: Mapping[P, int] = {}

    def live(self, partition: P, offset: int) -> bool:
        """Whether the record at ``offset`` is new (published from) rather than a replay."""
        resume = self._resume_at.get(partition)
        return resume is None or offset >= resume

    def rebuilding(self, partition: P) -> bool:
        """Whether the partition is still replaying records processed before its handover."""
        return partition in self._resume_at

    def processed(self, partition: P, next_offset: int) -> None:
        """Everything below ``next_offset`` of the partition has been ingested."""
        self._processed[partition] = next_offset

    def position(self, partition: P) -> int | None:
        """The next offset to ingest, ``None`` before the first record."""
        return self._processed.get(partition)

    def rewound(self, partition: P, start: int, committed: int, beginning: int) -> None:
        """The partition was sought to ``start`` to rebuild up to its ``committed`` offset."""
        self._committed[partition] = committed
        if start < committed:
            self._resume_at[partition] = committed
        if start > beginning:
            self._partial.add(partition)

    def finish_rebuild(self, partition: P) -> int | None:
        """End the partition's rebuild if its replay is done; returns where it resumed."""
        resume = self._resume_at.get(partition)
        if resume is None or self._processed.get(partition, 0) < resume:
            return None
        del self._resume_at[partition]
        return resume

    def take_partial(self, partition: P) -> bool:
        """Whether the partition's last rebuild replayed less than its whole log (asked once)."""
        if partition not in self._partial:
            return False
        self._partial.discard(partition)
        return True

    def forget(self, partitions: Collection[P]) -> None:
        """Drop every offset of partitions that were revoked or (re)assigned."""
        for partition in partitions:
            self._processed.pop(partition, None)
            self._committed.pop(partition, None)
            self._resume_at.pop(partition, None)
            self._partial.discard(partition)
        self._safe = {p: o for p, o in self._safe.items() if p not in partitions}

    def safe_point(self) -> dict[P, int]:
        """What is ingested now, outside rebuilds: safe once what it produced is published."""
        return {p: o for p, o in self._processed.items() if p not in self._resume_at}

    def mark_safe(self, offsets: Mapping[P, int]) -> None:
        """Declare ``offsets`` (a :meth:`safe_point` whose output is acknowledged) committable."""
        self._safe = {**self._safe, **offsets}

    @property
    def safe(self) -> Mapping[P, int]:
        """Committable offsets; the rebalance listener commits these on revocation."""
        return self._safe

    def uncommitted(self, assigned: Collection[P]) -> dict[P, int]:
        """Safe offsets of assigned partitions that are not committed yet."""
        return {
            p: o
            for p, o in self._safe.items()
            if p in assigned and self._committed.get(p) != o and p not in self._resume_at
        }

    def committed(self, offsets: Mapping[P, int]) -> None:
        """The broker accepted a commit of ``offsets``."""
        self._committed.update(offsets)

    @property
    def committed_offsets(self) -> Mapping[P, int]:
        """The last committed offset of each partition."""
        return dict(self._committed)
