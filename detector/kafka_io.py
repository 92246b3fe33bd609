"""Kafka edges: building the consumer and producer from config, publishing alerts with acks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from detector.alerts import Alert
from detector.config import KafkaConfig

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
        **security_kwargs(config),
    )


def build_producer(config: KafkaConfig) -> KafkaProducer:
    """An acks=all producer for alerts and dead letters."""
    return KafkaProducer(
        acks="all",
        linger_ms=config.producer_linger_ms,
        compression_type=config.producer_compression,
        retries=5,
        **security_kwargs(config),
    )


@dataclass(frozen=True)
class OutboundMessage:
    """A record to publish: an alert or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def alert_message(topic: str, alert: Alert) -> OutboundMessage:
    """An alert keyed by its device id."""
    return OutboundMessage(topic, alert.device_id.encode(), alert.model_dump_json().encode())


# Kafka Connect's dead-letter headers (``__connect.errors.*``) under this project's prefix, so
# existing DLQ tooling reads them and nobody confuses the two sources.
DLQ_HEADER_PREFIX = "__detector.errors."


def dead_letter_message(
    topic: str, record: ConsumerRecord, reason: str, detail: str, index: int | None
) -> OutboundMessage:
    """The original record (bytes and headers) plus headers saying why and where it came from."""
    headers = list(record.headers or [])
    headers += [
        (DLQ_HEADER_PREFIX + "reason", reason.encode()),
        (DLQ_HEADER_PREFIX + "exception.message", detail.encode("utf-8", "replace")[:1000]),
        (DLQ_HEADER_PREFIX + "topic", record.topic.encode()),
        (DLQ_HEADER_PREFIX + "partition", str(record.partition).encode()),
        (DLQ_HEADER_PREFIX + "offset", str(record.offset).encode()),
    ]
    if index is not None:
        headers.append((DLQ_HEADER_PREFIX + "batch.index", str(index).encode()))
    return OutboundMessage(topic, record.key, record.value or b"", headers)


class Publisher:
    """Publishes records and returns only once the broker acknowledged every one of them."""

    def __init__(
        self,
        producer: KafkaProducer,
        on_failure: Callable[[], None] = lambda: None,
        retry_backoff_s: float = 1.0,
        should_stop: Callable[[], bool] = lambda: False,
        on_wait: Callable[[], None] = lambda: None,
    ) -> None:
        self.producer = producer
        self.on_failure = on_failure
        self.retry_backoff_s = retry_backoff_s
        self.should_stop = should_stop
        self.on_wait = on_wait

    def publish(self, messages: Sequence[OutboundMessage]) -> None:
        """Send and wait for acks, retrying failed sends until they succeed.

        Offsets are committed only after this returns, so retrying here (rather than dropping)
        is what keeps delivery at-least-once while the broker is away. ``on_wait`` is called
        between attempts so the health check can tell waiting from hanging.
        """
        pending = list(messages)
        backoff = self.retry_backoff_s
        while pending:
            futures = [
                (m, self.producer.send(m.topic, key=m.key, value=m.value, headers=m.headers))
                for m in pending
            ]
            self.producer.flush()
            failed = []
            for message, future in futures:
                try:
                    future.get(timeout=0)
                except KafkaError as exc:
                    failed.append(message)
                    log.warning("publish to %s not acknowledged (%s); retrying", message.topic, exc)
            if failed:
                self.on_failure()
                if self.should_stop():
                    raise RuntimeError(f"stopping with {len(failed)} messages unpublished")
                self.on_wait()
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            pending = failed


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
