"""Kafka edges: building the consumer and producer from config, publishing alerts with acks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, KafkaTimeoutError

from detector.config import KafkaConfig
from detector.core.alerts import Alert
from detector.core.readings import Rejection, RejectReason
from detector.kafka_compat import install_lenient_header_keys

__all__ = [
    "DLQ_HEADER_PREFIX",
    "MAX_REQUEST_BYTES",
    "OutboundMessage",
    "Publisher",
    "RebalanceEvents",
    "alert_message",
    "build_consumer",
    "build_producer",
    "dead_letter_message",
    "delivery_timeout_s",
    "security_kwargs",
    "undecodable_dead_letter",
]

log = logging.getLogger(__name__)


def security_kwargs(config: KafkaConfig) -> dict[str, Any]:
    """Connection and security settings shared by consumers, producers and admin clients."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "request_timeout_ms": config.request_timeout_ms,
        "bootstrap_timeout_ms": config.bootstrap_timeout_ms,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        kwargs.update(
            ssl_cafile=str(config.ssl_cafile) if config.ssl_cafile else None,
            ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
            ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
            ssl_check_hostname=config.ssl_check_hostname,
        )
    if config.security_protocol.startswith("SASL"):
        kwargs.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_username,
            sasl_plain_password=config.sasl_password.get_secret_value()
            if config.sasl_password
            else None,
        )
    return kwargs


def build_consumer(config: KafkaConfig) -> KafkaConsumer:
    """A consumer-group member with manual commits (subscribe it with a listener)."""
    install_lenient_header_keys()
    return KafkaConsumer(
        group_id=config.group_id,
        enable_auto_commit=False,
        auto_offset_reset=config.auto_offset_reset,
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        max_poll_interval_ms=config.max_poll_interval_ms,
        max_poll_records=config.max_poll_records,
        fetch_max_bytes=config.fetch_max_bytes,
        max_partition_fetch_bytes=config.max_partition_fetch_bytes,
        fetch_max_wait_ms=config.fetch_max_wait_ms,
        **security_kwargs(config),
    )


# The producer's request size limit (kafka-python's and the broker's usual default): dead letters
# are cut to fit it.
MAX_REQUEST_BYTES = 1_048_576


def delivery_timeout_s(config: KafkaConfig) -> float:
    """How long the producer may take to report a record sent or failed (the least it allows)."""
    return (config.request_timeout_ms + config.producer_linger_ms) / 1000


def build_producer(config: KafkaConfig) -> KafkaProducer:
    """An acks=all producer for alerts and dead letters whose every wait is bounded.

    kafka-python's defaults let a send wait 60 s for metadata and a record 120 s for delivery;
    here both follow ``request_timeout_ms`` so a publish attempt fails within one timeout.
    """
    return KafkaProducer(
        acks="all",
        linger_ms=config.producer_linger_ms,
        compression_type=config.producer_compression,
        retries=5,
        max_request_size=MAX_REQUEST_BYTES,
        max_block_ms=config.request_timeout_ms,
        delivery_timeout_ms=int(delivery_timeout_s(config) * 1000),
        **security_kwargs(config),
    )


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
    record: ConsumerRecord,
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
    topic: str, source: TopicPartition, offset: int, detail: str
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
        producer_factory: Callable[[], KafkaProducer],
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
        self._producer: KafkaProducer | None = producer_factory()

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
            try:
                producer.close(timeout=timeout_s)
            except KafkaError as exc:
                log.warning("producer closed with records unsent (%s)", exc)

    def _attempt(self, messages: Sequence[OutboundMessage]) -> tuple[list[OutboundMessage], bool]:
        """One bounded send: the messages to send again, and whether the producer failed."""
        producer = self._producer
        if producer is None:
            return list(messages), True  # the last replacement failed: build one again
        failed: list[OutboundMessage] = []
        futures = []
        for message in messages:
            try:
                future = producer.send(
                    message.topic, key=message.key, value=message.value, headers=message.headers
                )
            except KafkaTimeoutError as exc:  # no metadata within max_block_ms: broker away
                log.warning("publish to %s timed out (%s); retrying", message.topic, exc)
                failed.append(message)
            except (KafkaError, TypeError, ValueError) as exc:  # refused before it was sent
                failed.extend(self._refused(message, exc))
            else:
                futures.append((message, future))
        broken = bool(failed)
        try:
            producer.flush(timeout=self.timeout_s)
        except KafkaTimeoutError:
            log.warning("producer did not finish sending in %.0f s", self.timeout_s)
        for message, future in futures:
            if not future.is_done:
                failed.append(message)
                broken = True
                continue
            try:
                future.get(timeout=0)
            except KafkaError as exc:
                if exc.retriable or not message.dead_letter:
                    log.warning("publish to %s not acknowledged (%s); retrying", message.topic, exc)
                    failed.append(message)
                    broken = True
                else:
                    failed.extend(self._refused(message, exc))
        return failed, broken

    def _refused(self, message: OutboundMessage, exc: Exception) -> list[OutboundMessage]:
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
                (DLQ_HEADER_PREFIX + "value.dropped", type(exc).__name__.encode()),
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
            # kafka-python's close() only stops its sender once every batch is done, and a batch
            # is done at the latest when its delivery timeout expires: close in the background.
            threading.Thread(
                target=self._close_quietly, args=(old, self.timeout_s), daemon=True
            ).start()
        try:
            self._producer = self.producer_factory()
        except KafkaError as exc:
            log.warning("cannot create a new producer yet (%s); will retry", exc)
            return
        self.on_producer_replaced()

    @staticmethod
    def _close_quietly(producer: KafkaProducer, timeout_s: float) -> None:
        try:
            producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.info("replaced producer closed with records unsent (%s)", exc)


class RebalanceEvents(AsyncConsumerRebalanceListener):
    """Hands partition changes from kafka-python's IO thread to the main loop.

    kafka-python 3.x calls listeners on its IO thread, where blocking consumer calls raise; so
    the listener only commits (awaiting the non-blocking commit) the offsets the main loop
    declared safe, and queues the changes for the main loop to act on after ``poll`` returns.
    """

    def __init__(self, consumer: KafkaConsumer, safe_offsets: Callable[[], dict]) -> None:
        self.consumer = consumer
        self.safe_offsets = safe_offsets
        self._lock = threading.Lock()
        self._assigned: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()
        self.joined = False  # a group join has completed at least once

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is fully processed on the partitions being given up."""
        offsets = {tp: meta for tp, meta in self.safe_offsets().items() if tp in revoked}
        if offsets:
            try:
                await self.consumer.commit_async(offsets)
            except KafkaError as exc:
                log.warning("commit on revocation failed (%s); the new owner re-reads", exc)
        with self._lock:
            self._revoked |= set(revoked)
            self._assigned -= set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Queue the new partitions; the main loop rebuilds their devices' windows."""
        with self._lock:
            self._assigned |= set(assigned)
            self.joined = True

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Membership was lost: nothing may be committed, only forgotten."""
        with self._lock:
            self._revoked |= set(lost)
            self._assigned -= set(lost)

    def take(self) -> tuple[set[TopicPartition], set[TopicPartition]]:
        """The (revoked, assigned) partitions since the last call."""
        with self._lock:
            revoked, assigned = self._revoked, self._assigned
            self._revoked, self._assigned = set(), set()
        return revoked, assigned
