"""Work-arounds for kafka-python behaviour that would let one foreign record stop a partition.

kafka-python decodes record header keys as strict UTF-8. A producer built on librdkafka can
send any bytes there; the decode error then surfaces from ``poll()`` as ``CorruptRecordError``
for every record of that batch, and the next ``poll()`` spins on the dead batch for good. Header
keys mean nothing to the detector, so :func:`install_lenient_header_keys` makes the decode
replace invalid bytes (U+FFFD) and the record is consumed like any other.

For a record that still cannot be decoded (a CRC mismatch, a broken structure),
:func:`undecodable_position` names the partition and offset the consumer is stuck on so the
loop can dead-letter its position and seek past it. Both reach into kafka-python internals
(checked for 3.0.x); if those change, the patch is not installed and the lookup returns
``None``, and the daemon says so instead of guessing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.record import default_records

__all__ = ["install_lenient_header_keys", "undecodable_position"]

log = logging.getLogger(__name__)


class _LenientBytes(bytes):
    """Bytes whose ``decode`` replaces what is not valid in the codec instead of raising."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return super().decode(encoding, "replace")


class _LenientBuffer:
    """A record buffer whose slices decode leniently; indexing and ``bytes()`` are unchanged."""

    def __init__(self, buffer: Any) -> None:
        self._buffer = buffer

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            return _LenientBytes(self._buffer[item])
        return self._buffer[item]

    def __len__(self) -> int:
        return len(self._buffer)


def install_lenient_header_keys() -> bool:
    """Make kafka-python read records with non-UTF-8 header keys; returns whether it is in place.

    A record is first read as kafka-python reads it; only when that raises
    ``UnicodeDecodeError`` is it read again through a buffer whose header keys decode with
    replacement characters. Idempotent.
    """
    batch = getattr(default_records, "DefaultRecordBatch", None)
    original: Callable[..., Any] | None = getattr(batch, "_read_msg", None)
    if batch is None or original is None:
        log.warning("kafka-python internals changed: non-UTF-8 header keys will stall a partition")
        return False
    if getattr(original, "_lenient", False):
        return True

    def read_msg(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except UnicodeDecodeError:
            strict = self._buffer
            self._buffer = _LenientBuffer(strict)
            try:
                return original(self, *args, **kwargs)
            finally:
                self._buffer = strict

    read_msg._lenient = True  # type: ignore[attr-defined]
    batch._read_msg = read_msg
    return True


def undecodable_position(consumer: KafkaConsumer) -> tuple[TopicPartition, int] | None:
    """The partition and offset whose record the last ``poll()`` failed to decode, if known.

    kafka-python keeps the failed batch as the next one in line (or parks the error for the
    next call when records came before it); the partition is not in the exception itself.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_next_in_line_exception_metadata", None)
    partition = getattr(parked, "partition", None)
    if partition is None:
        partition = getattr(
            getattr(fetcher, "_next_partition_records", None), "topic_partition", None
        )
    if not isinstance(partition, TopicPartition) or partition not in consumer.assignment():
        return None
    return partition, consumer.position(partition)
