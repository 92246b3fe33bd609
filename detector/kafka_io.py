"""What the daemon publishes (alerts, dead letters) and how: every send waited on, any client."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from detector.clients.base import ClientError, Partition, Producer, Record, Refused, SendTimeout
from detector.config import KafkaConfig
from detector.core.alerts import Alert
from detector.core.readings import Rejection, RejectReason

__all__ = [
    "DLQ_HEADER_PREFIX",
    "MAX_REQUEST_BYTES",
    "OutboundMessage",
    "Publisher",
    "alert_message",
    "dead_letter_message",
    "delivery_timeout_s",
    "undecodable_dead_letter",
]

log = logging.getLogger(__name__)


# The producer's request size limit (kafka-python's and the broker's usual default): dead letters
# are cut to fit it.
MAX_REQUEST_BYTES = 1_048_576


def delivery_timeout_s(config: KafkaConfig) -> float:
    """How long the producer may take to report a record sent or failed (the least it allows)."""
    return (config.request_timeout_ms + config.producer_linger_ms) / 1000


@dataclass(frozen=True)
class OutboundMessage:
    """A record to publish: an alert or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    # A dead letter that cannot be sent at all is dropped (logged, counted); an alert never is.
    dead_letter: bool = False


def alert_message(topic: str, alert: Alert) -> OutboundMessage:
    """An alert keyed by its device id."""
    return OutboundMessage(topic, alert.device_id.encode(), alert.model_dump_json().encode())


# Kafka Connect's dead-letter headers (``__connect.errors.*``) under this project's prefix, so
# existing DLQ tooling reads them and nobody confuses the two sources.
DLQ_HEADER_PREFIX = "__detector.errors."
# A dead letter lists at most this many of a record's rejected readings (the count is complete).
_MAX_LISTED_REJECTIONS = 100
_MAX_DETAIL_BYTES = 1000
# Room left for the record's own overhead (offsets, varints, batch header) below the byte budget.
_RECORD_OVERHEAD_BYTES = 1024


def _safe_headers(headers: Sequence[tuple[object, object]] | None) -> list[tuple[str, bytes]]:
    """Headers any producer can send: str keys, bytes values (a null value becomes empty).

    Foreign clients may send what kafka-python never would (null values); the original header
    names are kept so tooling that routes on them still works.
    """
    safe = []
    for key, value in headers or []:
        name = key if isinstance(key, str) else str(key)
        if value is None:
            data = b""
        elif isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
        else:
            data = str(value).encode("utf-8", "replace")
        # A lone surrogate cannot be encoded; such a key would make send() raise.
        safe.append((name.encode("utf-8", "replace").decode("utf-8"), data))
    return safe


def _headers_size(headers: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(key.encode()) + len(value) for key, value in headers)


def dead_letter_message(
    topic: str,
    record: Record,
    rejections: Sequence[Rejection],
    max_bytes: int,
) -> OutboundMessage:
    """One dead letter for a record, however many of its readings were rejected.

    It carries the original key, headers (made safe) and value, plus ``__detector.errors.*``
    headers: the first reason, the offending readings' batch indices and reasons (the first
    hundred; ``rejected.count`` has them all), where the record came from and its size. Key,
    headers and value together stay within ``max_bytes``: the original headers are dropped if
    they alone would not fit, and the value is cut to what is left (``value.truncated``), so a
    dead letter is never refused for its size.
    """
    first = rejections[0]
    listed = [
        {"index": r.index, "reason": r.reason.value, "detail": r.detail[:200]}
        for r in rejections[:_MAX_LISTED_REJECTIONS]
    ]
    value = record.value or b""
    key = record.key[: max_bytes // 4] if record.key else record.key
    ours = [
        (DLQ_HEADER_PREFIX + "reason", first.reason.value.encode()),
        (
            DLQ_HEADER_PREFIX + "exception.message",
            first.detail.encode("utf-8", "replace")[:_MAX_DETAIL_BYTES],
        ),
        (DLQ_HEADER_PREFIX + "topic", record.topic.encode()),
        (DLQ_HEADER_PREFIX + "partition", str(record.partition).encode()),
        (DLQ_HEADER_PREFIX + "offset", str(record.offset).encode()),
        (DLQ_HEADER_PREFIX + "rejected.count", str(len(rejections)).encode()),
        (DLQ_HEADER_PREFIX + "rejections", json.dumps(listed).encode()),
        (DLQ_HEADER_PREFIX + "original.size", str(len(value)).encode()),
    ]
    if first.index is not None:
        ours.append((DLQ_HEADER_PREFIX + "batch.index", str(first.index).encode()))
    budget = max_bytes - _RECORD_OVERHEAD_BYTES - len(key or b"") - _headers_size(ours)
    original = _safe_headers(record.headers)
    if _headers_size(original) > budget // 2:
        ours.append((DLQ_HEADER_PREFIX + "headers.dropped", str(len(original)).encode()))
        original = []
    budget -= _headers_size(original) + 64  # the truncation header below
    if len(value) > budget:
        value = value[: max(budget, 0)]
        ours.append((DLQ_HEADER_PREFIX + "value.truncated", b"true"))
    return OutboundMessage(topic, key, value, original + ours, dead_letter=True)


def undecodable_dead_letter(
    topic: str, source: Partition, offset: int, detail: str
) -> OutboundMessage:
    """A dead letter for a record the Kafka client could not decode: where it was, no content."""
    headers = [
        (DLQ_HEADER_PREFIX + "reason", RejectReason.UNDECODABLE.value.encode()),
        (
            DLQ_HEADER_PREFIX + "exception.message",
            detail.encode("utf-8", "replace")[:_MAX_DETAIL_BYTES],
        ),
        (DLQ_HEADER_PREFIX + "topic", source.topic.encode()),
        (DLQ_HEADER_PREFIX + "partition", str(source.partition).encode()),
        (DLQ_HEADER_PREFIX + "offset", str(offset).encode()),
        (DLQ_HEADER_PREFIX + "rejected.count", b"1"),
    ]
    return OutboundMessage(topic, None, b"", headers, dead_letter=True)


class Publisher:
    """Publishes records and returns only once the broker acknowledged every one of them.

    Every wait is bounded: a send attempt gets ``timeout_s`` to be acknowledged, and after a
    failed attempt the records are sent again through a new producer, since a producer can
    wedge for good (an idempotent producer whose id a restarted broker no longer knows fails
    every batch with ``UnknownProducerIdError``, attempt after attempt). A dead letter the
    producer refuses outright (too large, unsendable headers) is sent once more without its
    content, then dropped if even that is refused; an alert is retried until it is acknowledged.
    """

    def __init__(
        self,
        producer_factory: Callable[[], Producer],
        timeout_s: float = 30.0,
        on_failure: Callable[[], None] = lambda: None,
        retry_backoff_s: float = 1.0,
        should_stop: Callable[[], bool] = lambda: False,
        on_wait: Callable[[], None] = lambda: None,
        on_producer_replaced: Callable[[], None] = lambda: None,
        on_dropped: Callable[[OutboundMessage], None] = lambda message: None,
    ) -> None:
        self.producer_factory = producer_factory
        self.timeout_s = timeout_s
        self.on_failure = on_failure
        self.retry_backoff_s = retry_backoff_s
        self.should_stop = should_stop
        self.on_wait = on_wait
        self.on_producer_replaced = on_producer_replaced
        self.on_dropped = on_dropped
        self._producer: Producer | None = producer_factory()

    def publish(self, messages: Sequence[OutboundMessage]) -> None:
        """Send and wait for acks, retrying failed sends until they succeed.

        Offsets are committed only after this returns, so retrying here (rather than dropping)
        is what keeps delivery at-least-once while the broker is away. ``on_wait`` is called
        between attempts so the health check can tell waiting from hanging.
        """
        pending = list(messages)
        backoff = self.retry_backoff_s
        while pending:
            failed, broken = self._attempt(pending)
            if failed:
                self.on_failure()
                if self.should_stop():
                    raise RuntimeError(f"stopping with {len(failed)} messages unpublished")
                if broken:
                    self._replace_producer()
                self.on_wait()
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            pending = failed

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the producer, waiting at most ``timeout_s`` for what it still holds."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout_s)

    def _attempt(self, messages: Sequence[OutboundMessage]) -> tuple[list[OutboundMessage], bool]:
        """One bounded send: the messages to send again, and whether the producer failed."""
        producer = self._producer
        if producer is None:
            return list(messages), True  # the last replacement failed: build one again
        failed: list[OutboundMessage] = []
        deliveries = []
        for message in messages:
            try:
                delivery = producer.send(message.topic, message.key, message.value, message.headers)
            except SendTimeout as exc:
                log.warning("publish to %s timed out (%s); retrying", message.topic, exc)
                failed.append(message)
            except Refused as exc:
                failed.extend(self._refused(message, exc))
            else:
                deliveries.append((message, delivery))
        broken = bool(failed)
        producer.flush(self.timeout_s)
        for message, delivery in deliveries:
            if not delivery.done:
                failed.append(message)
                broken = True
                continue
            error = delivery.error()
            if error is None:
                continue
            if error.retriable or not message.dead_letter:
                log.warning("publish to %s not acknowledged (%s); retrying", message.topic, error)
                failed.append(message)
                broken = True
            else:
                failed.extend(self._refused(message, error))
        return failed, broken

    def _refused(self, message: OutboundMessage, exc: ClientError) -> list[OutboundMessage]:
        """What to send instead of a message the producer or broker refuses for what it is."""
        if not message.dead_letter:
            log.error("alert to %s refused (%s); retrying", message.topic, exc)
            return [message]
        where = {
            k: v
            for k, v in message.headers
            if isinstance(k, str) and k.startswith(DLQ_HEADER_PREFIX) and isinstance(v, bytes)
        }
        if message.value or message.key:
            log.error("dead letter refused (%s); sending it without key and value", exc)
            ours = [
                *where.items(),
                (DLQ_HEADER_PREFIX + "value.dropped", exc.kind.encode()),
            ]
            return [OutboundMessage(message.topic, None, b"", ours, dead_letter=True)]
        log.error(
            "dead letter for %s[%s] offset %s refused even without content (%s); dropped",
            where.get(DLQ_HEADER_PREFIX + "topic", b"?").decode(errors="replace"),
            where.get(DLQ_HEADER_PREFIX + "partition", b"?").decode(errors="replace"),
            where.get(DLQ_HEADER_PREFIX + "offset", b"?").decode(errors="replace"),
            exc,
        )
        self.on_dropped(message)
        return []

    def _replace_producer(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            # A producer's close() may wait until every batch is done, and a batch is done at
            # the latest when its delivery timeout expires: close it in the background.
            threading.Thread(target=old.close, args=(self.timeout_s,), daemon=True).start()
        try:
            self._producer = self.producer_factory()
        except ClientError as exc:
            log.warning("cannot create a new producer yet (%s); will retry", exc)
            return
        self.on_producer_replaced()
