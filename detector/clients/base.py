"""What the daemon needs of a Kafka client, in the project's own types (no client's types leak).

The loop polls batches of :class:`Record` keyed by :class:`Partition`, commits offsets, rewinds
partitions it was just given, and publishes through a :class:`Producer` whose every send can be
waited on. One adapter per client library implements :class:`Consumer` and :class:`Producer`
(:mod:`detector.clients.kafka_python`, :mod:`detector.clients.confluent`); a client's own
exceptions become :class:`ClientError` there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

__all__ = [
    "ClientError",
    "Consumer",
    "Delivery",
    "Partition",
    "Producer",
    "Record",
    "Refused",
    "SafeOffsets",
    "SendTimeout",
    "Undecodable",
]


class Partition(NamedTuple):
    """A topic partition."""

    topic: str
    partition: int


class Record(NamedTuple):
    """One consumed record: where it was and what it holds."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # As the client read them: a foreign producer can send a null value or a non-UTF-8 key.
    headers: Sequence[tuple[str, bytes | None]]


class ClientError(Exception):
    """A Kafka call failed; ``retriable``: the same call may succeed later (broker away);
    ``kind``: the client's own name for the error (what a dead letter's headers report)."""

    def __init__(self, message: str, retriable: bool = True, kind: str | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.kind = kind or type(self).__name__


class SendTimeout(ClientError):
    """A send could not even start in time (no metadata for its topic: the broker is away)."""


class Refused(ClientError):
    """The client refuses this message for what it is (too large, unsendable headers)."""

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message, retriable=False, kind=kind)


class Undecodable(Exception):
    """The client cannot decode the record at ``offset`` of ``partition`` (it stays stuck there
    until the consumer seeks past it)."""

    def __init__(self, partition: Partition, offset: int, detail: str) -> None:
        super().__init__(f"{partition.topic}[{partition.partition}] offset {offset}: {detail}")
        self.partition = partition
        self.offset = offset
        self.detail = detail


# The offsets the loop declares fully processed (every alert they led to acknowledged): what a
# consumer commits when it gives partitions up in a rebalance.
SafeOffsets = Callable[[], Mapping[Partition, int]]


class Consumer(Protocol):
    """A consumer-group member with manual commits."""

    def subscribe(self, topics: Sequence[str], safe_offsets: SafeOffsets) -> None:
        """Join the group for ``topics``; partitions given up commit their ``safe_offsets``."""
        ...

    def poll(self, timeout_ms: int) -> Mapping[Partition, Sequence[Record]]:
        """The next records of each partition, in offset order (empty after ``timeout_ms``).

        Raises :class:`Undecodable` for a record the client cannot decode, and
        :class:`ClientError` for any other failure.
        """
        ...

    def rebalanced(self) -> tuple[set[Partition], set[Partition]]:
        """The (revoked, assigned) partitions since the last call."""
        ...

    def assignment(self) -> set[Partition]:
        """The partitions this member owns now."""
        ...

    def committed(self, partition: Partition) -> int | None:
        """The group's committed offset of ``partition`` (``None``: never committed)."""
        ...

    def beginning_offset(self, partition: Partition) -> int:
        """The oldest offset the broker still holds for ``partition``."""
        ...

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on at the next :meth:`poll`."""
        ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``offsets`` (the next offset to read) and wait for the answer."""
        ...

    def highwater(self, partition: Partition) -> int | None:
        """The offset after the last record of ``partition``, when known."""
        ...

    def broker_reachable(self, within_s: float) -> bool:
        """Whether the broker answered within ``within_s`` (before the first join: connected)."""
        ...

    def close(self) -> None:
        """Leave the group without committing."""
        ...


class Delivery(Protocol):
    """A message sent and not yet known to be acknowledged."""

    @property
    def done(self) -> bool:
        """Whether the broker answered (or the client gave up)."""
        ...

    def error(self) -> ClientError | None:
        """Why it was not acknowledged (once :attr:`done`), or ``None`` if it was."""
        ...


class Producer(Protocol):
    """An acks=all producer."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
    ) -> Delivery:
        """Queue a message; raises :class:`SendTimeout` or :class:`Refused` when it cannot."""
        ...

    def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every queued message to be answered."""
        ...

    def close(self, timeout_s: float) -> None:
        """Send what is queued (waiting at most ``timeout_s``) and release the client."""
        ...
