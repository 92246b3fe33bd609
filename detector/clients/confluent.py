"""The confluent-kafka adapter (librdkafka): fetching and decompression in native threads.

librdkafka serves its callbacks (rebalances, errors, statistics, deliveries) inside ``consume``,
``poll`` and ``flush`` on the calling thread, so a revocation can commit synchronously there.
It skips a record it cannot decode and reports it as an error event; the adapter drops what
followed it on that partition in the same batch and raises :class:`Undecodable` at the next
poll, so the loop dead-letters the position and seeks past it exactly as with kafka-python.
"""

from __future__ import annotations

import json
import logging
import operator
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer as _Consumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka import Producer as _Producer

from detector.clients.base import (
    ClientError,
    Partition,
    Record,
    Refused,
    SafeOffsets,
    SendTimeout,
    Undecodable,
)
from detector.config import KafkaConfig
from detector.kafka_io import MAX_REQUEST_BYTES
from detector.logs import RateLimitedLog

__all__ = ["ConfluentConsumer", "ConfluentProducer", "client_settings"]

log = logging.getLogger(__name__)
# librdkafka's own log lines, under the logger start-up holds back while it bootstraps.
_LIBRDKAFKA_LOG = logging.getLogger("kafka.librdkafka")
# Its error callback repeats every reconnect attempt while a broker is away: once a minute each.
_ERRORS = RateLimitedLog(_LIBRDKAFKA_LOG)

# Errors about reaching the cluster, which a later call may get past.
_TRANSIENT = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE,
}
# How a record that cannot be read is reported (a corrupt batch, a bad CRC).
_UNDECODABLE = {KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION, KafkaError.INVALID_MSG}
_STATISTICS_INTERVAL_MS = 1000


def client_settings(config: KafkaConfig) -> dict[str, Any]:
    """librdkafka's connection and security settings for ``config``."""
    settings: dict[str, Any] = {
        "bootstrap.servers": ",".join(config.bootstrap_servers),
        "client.id": config.client_id,
        "security.protocol": config.security_protocol.lower(),
        "socket.timeout.ms": config.request_timeout_ms,
        "logger": _LIBRDKAFKA_LOG,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        for key, path in (
            ("ssl.ca.location", config.ssl_cafile),
            ("ssl.certificate.location", config.ssl_certfile),
            ("ssl.key.location", config.ssl_keyfile),
        ):
            if path is not None:
                settings[key] = str(path)
        settings["ssl.endpoint.identification.algorithm"] = (
            "https" if config.ssl_check_hostname else "none"
        )
    if config.security_protocol.startswith("SASL"):
        settings["sasl.mechanism"] = config.sasl_mechanism
        settings["sasl.username"] = config.sasl_username
        if config.sasl_password is not None:
            settings["sasl.password"] = config.sasl_password.get_secret_value()
    return settings


def _client_error(error: KafkaError) -> ClientError:
    retriable = bool(error.retriable()) or error.code() in _TRANSIENT
    return ClientError(f"{error.name()}: {error.str()}", retriable=retriable, kind=error.name())


def _from_exception(exc: KafkaException) -> ClientError:
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError):
        return _client_error(error)
    return ClientError(str(exc))


def _require_cluster(client: Any, config: KafkaConfig) -> None:
    """Ask for the cluster's metadata: librdkafka connects lazily, and start-up must know now."""
    try:
        client.list_topics(timeout=config.bootstrap_timeout_ms / 1000)
    except KafkaException as exc:
        raise _from_exception(exc) from None


def _ours(tp: TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


_read_headers = operator.methodcaller("headers")


def _headers(message: Message) -> Sequence[tuple[str, bytes | None]]:
    """The record's headers; none when a header key is not UTF-8 (the record still counts).

    confluent-kafka 2.16 fails such a key with ``UnicodeDecodeError``, or returns (even
    ``None``) with that error left pending; the interpreter's specialised call of a method does
    not check for that, so a later unrelated call would raise ``SystemError``. Called through
    ``operator.methodcaller``, the result is checked at once and the error raised here.
    """
    try:
        return list(_read_headers(message) or ())
    except (UnicodeDecodeError, SystemError):
        return ()


class ConfluentConsumer:
    """:class:`~detector.clients.base.Consumer` on confluent-kafka's ``Consumer``."""

    def __init__(self, config: KafkaConfig) -> None:
        """Connects to the bootstrap servers; raises :class:`ClientError` when none answers."""
        self._max_records = config.max_poll_records
        self._timeout_s = config.request_timeout_ms / 1000
        self._consumer = _Consumer(
            {
                **client_settings(config),
                "group.id": config.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "auto.offset.reset": config.auto_offset_reset,
                "session.timeout.ms": config.session_timeout_ms,
                "heartbeat.interval.ms": config.heartbeat_interval_ms,
                "max.poll.interval.ms": config.max_poll_interval_ms,
                "fetch.max.bytes": config.fetch_max_bytes,
                "max.partition.fetch.bytes": config.max_partition_fetch_bytes,
                "fetch.wait.max.ms": config.fetch_max_wait_ms,
                "statistics.interval.ms": _STATISTICS_INTERVAL_MS,
                "stats_cb": self._on_statistics,
                "error_cb": self._on_error,
            }
        )
        self._safe_offsets: SafeOffsets = dict
        self._revoked: set[Partition] = set()
        self._assigned: set[Partition] = set()
        # What this member owns, as the rebalance callbacks said: read by the health endpoint's
        # thread, which must not wait on librdkafka while the loop is inside consume().
        self._owned: frozenset[Partition] = frozenset()
        self._joined = False
        self._undecodable: Undecodable | None = None
        # What the last statistics said: a broker up, the group's coordinator up, and when.
        self._brokers_up = False
        self._group_up = False
        self._statistics_at = -1.0
        try:
            _require_cluster(self._consumer, config)
        except ClientError:
            self._consumer.close()
            raise

    def subscribe(self, topics: Sequence[str], safe_offsets: SafeOffsets) -> None:
        """Join the group; partitions given up commit their ``safe_offsets`` first."""
        self._safe_offsets = safe_offsets
        self._consumer.subscribe(
            list(topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def poll(self, timeout_ms: int) -> dict[Partition, list[Record]]:
        """The next records per partition (see the protocol)."""
        if self._undecodable is not None:
            undecodable, self._undecodable = self._undecodable, None
            raise undecodable
        try:
            messages = self._take(timeout_ms / 1000)
        except KafkaException as exc:
            raise _from_exception(exc) from None
        out: dict[Partition, list[Record]] = {}
        stopped: set[Partition] = set()
        for message in messages:
            error = message.error()
            partition = Partition(message.topic(), message.partition())
            if error is not None:
                self._on_message_error(error, partition, message.offset(), stopped)
            elif partition not in stopped:
                out.setdefault(partition, []).append(
                    Record(
                        partition.topic,
                        partition.partition,
                        message.offset(),
                        message.key(),
                        message.value(),
                        _headers(message),
                    )
                )
        return out

    def _take(self, timeout_s: float) -> list[Message]:
        """What librdkafka has fetched, as soon as there is any (up to ``max_poll_records``).

        ``consume(n, timeout)`` waits until it has ``n`` messages or the timeout is up, so at a
        modest rate every record would wait out the poll timeout; kafka-python's ``poll`` returns
        as soon as records are in. Take what is there now; wait for one only if there is none.
        """
        messages = self._consumer.consume(self._max_records, 0)
        if messages:
            return messages
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        return [first, *self._consumer.consume(self._max_records - 1, 0)]

    def _on_message_error(
        self, error: KafkaError, partition: Partition, offset: int, stopped: set[Partition]
    ) -> None:
        if error.fatal():
            raise _client_error(error)
        if error.code() in _UNDECODABLE and offset >= 0:
            # What followed on this partition is read again once the loop seeks past it.
            stopped.add(partition)
            if self._undecodable is None:
                self._undecodable = Undecodable(partition, offset, error.str())
            return
        log.warning("consumer error on %s: %s", partition, error.str())

    def rebalanced(self) -> tuple[set[Partition], set[Partition]]:
        """The (revoked, assigned) partitions since the last call."""
        revoked, assigned = self._revoked, self._assigned
        self._revoked, self._assigned = set(), set()
        return revoked, assigned

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        given = {_ours(tp) for tp in partitions}
        self._assigned |= given
        self._owned = self._owned | given
        self._joined = True

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        gone = {_ours(tp) for tp in partitions}
        offsets = [
            TopicPartition(p.topic, p.partition, offset)
            for p, offset in self._safe_offsets().items()
            if p in gone
        ]
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revocation failed (%s); the new owner re-reads", exc)
        self._give_up(gone)

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._give_up({_ours(tp) for tp in partitions})

    def _give_up(self, gone: set[Partition]) -> None:
        self._revoked |= gone
        self._assigned -= gone
        self._owned = self._owned - gone

    def assignment(self) -> set[Partition]:
        """The partitions this member owns now."""
        return set(self._owned)

    def committed(self, partition: Partition) -> int | None:
        """The group's committed offset (``None``: never committed)."""
        try:
            [found] = self._consumer.committed(
                [TopicPartition(partition.topic, partition.partition)], timeout=self._timeout_s
            )
        except KafkaException as exc:
            raise _from_exception(exc) from None
        if found.error is not None:
            raise _client_error(found.error)
        return found.offset if found.offset >= 0 else None

    def beginning_offset(self, partition: Partition) -> int:
        """The oldest offset the broker holds."""
        tp = TopicPartition(partition.topic, partition.partition)
        try:
            low, _high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
        except KafkaException as exc:
            raise _from_exception(exc) from None
        return int(low)

    def seek(self, partition: Partition, offset: int) -> None:
        """Read from ``offset`` on at the next poll."""
        try:
            self._consumer.seek(TopicPartition(partition.topic, partition.partition, offset))
        except KafkaException as exc:
            raise _from_exception(exc) from None

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit and wait for the answer."""
        try:
            self._consumer.commit(
                offsets=[TopicPartition(p.topic, p.partition, o) for p, o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            raise _from_exception(exc) from None

    def highwater(self, partition: Partition) -> int | None:
        """The high watermark of the last fetch (``None`` before one)."""
        tp = TopicPartition(partition.topic, partition.partition)
        try:
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
        except (KafkaException, RuntimeError):
            return None
        return int(high) if high >= 0 else None

    def broker_reachable(self, within_s: float) -> bool:
        """The last statistics, at most ``within_s`` old, show a broker (and, once joined, the
        group's coordinator) up. Statistics come with polls: a loop that stopped polling
        (blocked retrying a publish) has no news, which is no evidence of a reachable broker."""
        fresh = time.monotonic() - self._statistics_at < within_s
        return fresh and self._brokers_up and (self._group_up or not self._joined)

    def _on_statistics(self, document: str) -> None:
        statistics = json.loads(document)
        self._brokers_up = any(
            broker.get("state") == "UP" and broker.get("nodeid", -1) >= 0
            for broker in statistics.get("brokers", {}).values()
        )
        self._group_up = statistics.get("cgrp", {}).get("state") == "up"
        self._statistics_at = time.monotonic()

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_up = False
        _ERRORS.warning(error.name(), "%s", error.str())

    def close(self) -> None:
        """Leave the group (a revocation first commits what is safe)."""
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer closed with an error (%s)", exc)


class _Delivery:
    """A produced message's outcome, set by its delivery callback."""

    __slots__ = ("_error", "done")

    def __init__(self) -> None:
        self.done = False
        self._error: ClientError | None = None

    def report(self, error: KafkaError | None, _message: Message) -> None:
        self._error = None if error is None else _client_error(error)
        self.done = True

    def error(self) -> ClientError | None:
        return self._error


class ConfluentProducer:
    """:class:`~detector.clients.base.Producer` on confluent-kafka's ``Producer``."""

    def __init__(self, config: KafkaConfig, delivery_timeout_s: float) -> None:
        """Connects to the bootstrap servers; raises :class:`ClientError` when none answers."""
        self._producer = _Producer(
            {
                **client_settings(config),
                "acks": "all",
                "linger.ms": config.producer_linger_ms,
                "compression.type": config.producer_compression or "none",
                "message.max.bytes": MAX_REQUEST_BYTES,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "error_cb": self._on_error,
            }
        )
        _require_cluster(self._producer, config)

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> _Delivery:
        """Queue a message (see the protocol)."""
        delivery = _Delivery()
        try:
            self._producer.produce(
                topic, value=value, key=key, headers=list(headers), on_delivery=delivery.report
            )
        except BufferError as exc:  # the local queue is full: the broker is not taking them
            raise SendTimeout(str(exc), kind="BufferError") from None
        except KafkaException as exc:
            error = _from_exception(exc)
            if error.retriable:
                raise SendTimeout(str(error), kind=error.kind) from None
            raise Refused(str(error), kind=error.kind) from None
        except (TypeError, ValueError) as exc:
            raise Refused(f"{type(exc).__name__}: {exc}", type(exc).__name__) from None
        return delivery

    def flush(self, timeout_s: float) -> None:
        """Wait for every queued message's answer, at most ``timeout_s``."""
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("producer did not finish sending in %.0f s (%d left)", timeout_s, left)

    def close(self, timeout_s: float) -> None:
        """Send what is queued, waiting at most ``timeout_s``."""
        left = self._producer.flush(timeout_s)
        if left:
            log.warning("producer closed with %d records unsent", left)

    def _on_error(self, error: KafkaError) -> None:
        _ERRORS.warning(error.name(), "%s", error.str())
