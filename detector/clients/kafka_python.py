"""The kafka-python adapter (the default client): its consumer and producer behind our types.

kafka-python runs rebalance listeners on its IO thread, where blocking consumer calls raise, so
the listener only commits (awaiting the non-blocking commit) what the loop declared safe and
queues the changes for the loop. Two of its behaviours need its internals, kept here and
nowhere else: header keys that are not UTF-8 (:mod:`detector.kafka_compat`), and whether the
group coordinator still answers heartbeats (its public metric counts heartbeats *sent*).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

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
from detector.kafka_compat import install_lenient_header_keys, undecodable_position
from detector.kafka_io import MAX_REQUEST_BYTES

__all__ = [
    "KafkaPythonConsumer",
    "KafkaPythonProducer",
    "RebalanceListener",
    "build_consumer",
    "build_producer",
    "explain_error",
    "security_kwargs",
]

log = logging.getLogger(__name__)


# kafka-python reads a SCRAM server's error reply ("e=unknown-user", RFC 5802) as a final message
# without its "v" attribute, and all it logs is this.
_SCRAM_REFUSED = "Abort ('v')"


def explain_error(message: str) -> str:
    """An error kafka-python logged, with what it means where the message does not say."""
    if message.endswith(_SCRAM_REFUSED):
        return f"the broker refused the SCRAM login ({message})"
    return message


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


def _client_error(exc: KafkaError) -> ClientError:
    kind = type(exc).__name__
    return ClientError(f"{kind}: {exc}", retriable=bool(exc.retriable), kind=kind)


def _ours(tp: TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _theirs(partition: Partition) -> TopicPartition:
    return TopicPartition(partition.topic, partition.partition)


class RebalanceListener(AsyncConsumerRebalanceListener):
    """Hands partition changes from kafka-python's IO thread to the main loop."""

    def __init__(self, consumer: KafkaConsumer, safe_offsets: SafeOffsets) -> None:
        self.consumer = consumer
        self.safe_offsets = safe_offsets
        self._lock = threading.Lock()
        self._assigned: set[Partition] = set()
        self._revoked: set[Partition] = set()
        self.joined = False

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is fully processed on the partitions being given up."""
        gone = {_ours(tp) for tp in revoked}
        offsets = {
            _theirs(p): OffsetAndMetadata(offset, "", -1)
            for p, offset in self.safe_offsets().items()
            if p in gone
        }
        if offsets:
            try:
                await self.consumer.commit_async(offsets)
            except KafkaError as exc:
                log.warning("commit on revocation failed (%s); the new owner re-reads", exc)
        with self._lock:
            self._revoked |= gone
            self._assigned -= gone

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Queue the new partitions; the main loop rebuilds their devices' windows."""
        with self._lock:
            self._assigned |= {_ours(tp) for tp in assigned}
            self.joined = True

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Membership was lost: nothing may be committed, only forgotten."""
        gone = {_ours(tp) for tp in lost}
        with self._lock:
            self._revoked |= gone
            self._assigned -= gone

    def take(self) -> tuple[set[Partition], set[Partition]]:
        """The (revoked, assigned) partitions since the last call."""
        with self._lock:
            revoked, assigned = self._revoked, self._assigned
            self._revoked, self._assigned = set(), set()
        return revoked, assigned


def build_consumer(config: KafkaConfig) -> KafkaConsumer:
    """kafka-python's group consumer with manual commits (the throughput bench uses it bare)."""
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


class KafkaPythonConsumer:
    """:class:`~detector.clients.base.Consumer` on kafka-python's ``KafkaConsumer``."""

    # What subscribe() listens with (the throughput bench times the first assignment with it).
    listener_type: type[RebalanceListener] = RebalanceListener

    def __init__(self, config: KafkaConfig) -> None:
        """Connects to the bootstrap servers; raises :class:`ClientError` when none answers."""
        try:
            self._consumer = build_consumer(config)
        except KafkaError as exc:
            raise _client_error(exc) from None
        self._rebalance: RebalanceListener | None = None

    def subscribe(self, topics: Sequence[str], safe_offsets: SafeOffsets) -> None:
        """Join the group; partitions given up commit their ``safe_offsets`` first."""
        self._rebalance = self.listener_type(self._consumer, safe_offsets)
        self._consumer.subscribe(list(topics), listener=self._rebalance)

    def poll(self, timeout_ms: int) -> dict[Partition, list[Record]]:
        """The next records per partition (see the protocol)."""
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms)
        except CorruptRecordError as exc:
            found = undecodable_position(self._consumer)
            if found is None:  # nowhere known to seek to: a restart is the only way on
                raise ClientError(
                    f"undecodable record at an unknown position: {exc}", False
                ) from exc
            tp, offset = found
            raise Undecodable(_ours(tp), offset, str(exc)) from None
        except KafkaError as exc:
            raise _client_error(exc) from None
        return {
            Partition(tp.topic, tp.partition): [
                Record(r.topic, r.partition, r.offset, r.key, r.value, r.headers) for r in batch
            ]
            for tp, batch in polled.items()
        }

    def rebalanced(self) -> tuple[set[Partition], set[Partition]]:
        """The (revoked, assigned) partitions since the last call."""
        return (set(), set()) if self._rebalance is None else self._rebalance.take()

    def assignment(self) -> set[Partition]:
        """The partitions this member owns now."""
        return {_ours(tp) for tp in self._consumer.assignment()}

    def committed(self, partition: Partition) -> int | None:
        """The group's committed offset (``None``: never committed)."""
        try:
            return self._consumer.committed(_theirs(partition))
        except KafkaError as exc:
            raise _client_error(exc) from None

    def beginning_offset(self, partition: Partition) -> int:
        """The oldest offset the broker holds."""
        tp = _theirs(partition)
        try:
            return int(self._consumer.beginning_offsets([tp])[tp])
        except KafkaError as exc:
            raise _client_error(exc) from None

    def seek(self, partition: Partition, offset: int) -> None:
        """Read from ``offset`` on at the next poll."""
        self._consumer.seek(_theirs(partition), offset)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit and wait for the answer."""
        try:
            self._consumer.commit(
                {_theirs(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
            )
        except KafkaError as exc:
            raise _client_error(exc) from None

    def highwater(self, partition: Partition) -> int | None:
        """The last fetch's high watermark."""
        return self._consumer.highwater(_theirs(partition))

    def broker_reachable(self, within_s: float) -> bool:
        """A connection is open and, once joined, the coordinator answered within ``within_s``.

        A connection still being retried counts as open, hence the heartbeat answer; an outage
        can also empty the assignment, so an empty one is no excuse after the first join.
        """
        metrics = self._consumer.metrics() or {}  # None once the consumer is closed
        connections = metrics.get("consumer-metrics", {}).get("connection-count", 0)
        joined = self._rebalance is not None and self._rebalance.joined
        return connections > 0 and (not joined or self._heartbeat_answer_age() < within_s)

    def _heartbeat_answer_age(self) -> float:
        """Seconds since the group coordinator last answered a heartbeat (``inf``: never).

        Only kafka-python's heartbeat object (not public API) records answers; its
        ``last-heartbeat-seconds-ago`` metric, the fallback, counts heartbeats sent.
        """
        heartbeat = getattr(getattr(self._consumer, "_coordinator", None), "heartbeat", None)
        answered = getattr(heartbeat, "last_receive", None)
        if isinstance(answered, float):
            return time.monotonic() - answered
        coordinator = (self._consumer.metrics() or {}).get("consumer-coordinator-metrics", {})
        return float(coordinator.get("last-heartbeat-seconds-ago", math.inf))

    def close(self) -> None:
        """Leave the group without committing."""
        self._consumer.close(autocommit=False)


class _Delivery:
    """A kafka-python send future as a :class:`~detector.clients.base.Delivery`."""

    __slots__ = ("_future",)

    def __init__(self, future: FutureRecordMetadata) -> None:
        self._future = future

    @property
    def done(self) -> bool:
        return bool(self._future.is_done)

    def error(self) -> ClientError | None:
        exc = self._future.exception
        if exc is None:
            return None
        if isinstance(exc, KafkaError):
            return _client_error(exc)
        return ClientError(f"{type(exc).__name__}: {exc}", False, type(exc).__name__)


def build_producer(config: KafkaConfig, delivery_timeout_s: float) -> KafkaProducer:
    """kafka-python's acks=all producer, every wait bounded (``detector replay`` uses it bare).

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
        delivery_timeout_ms=int(delivery_timeout_s * 1000),
        **security_kwargs(config),
    )


class KafkaPythonProducer:
    """:class:`~detector.clients.base.Producer` on kafka-python's ``KafkaProducer``."""

    def __init__(self, config: KafkaConfig, delivery_timeout_s: float) -> None:
        """Connects to the bootstrap servers; raises :class:`ClientError` when none answers."""
        try:
            self._producer = build_producer(config, delivery_timeout_s)
        except KafkaError as exc:
            raise _client_error(exc) from None

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> _Delivery:
        """Queue a message (see the protocol)."""
        try:
            future = self._producer.send(topic, key=key, value=value, headers=list(headers))
        except KafkaTimeoutError as exc:  # no metadata within max_block_ms: broker away
            raise SendTimeout(str(exc), kind=type(exc).__name__) from None
        except (KafkaError, TypeError, ValueError) as exc:  # refused before it was sent
            raise Refused(f"{type(exc).__name__}: {exc}", type(exc).__name__) from None
        return _Delivery(future)

    def flush(self, timeout_s: float) -> None:
        """Wait for every queued message's answer, at most ``timeout_s``."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            log.warning("producer did not finish sending in %.0f s", timeout_s)

    def close(self, timeout_s: float) -> None:
        """Close, waiting at most ``timeout_s`` for what it still holds."""
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("producer closed with records unsent (%s)", exc)
