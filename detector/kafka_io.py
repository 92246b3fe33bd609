"""Kafka edges: building the consumer and producer from config, publishing alerts with acks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
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
    """A consumer-group member with manual commits, subscribed to the readings topics."""
    consumer = KafkaConsumer(
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
    consumer.subscribe(config.readings_topics)
    return consumer


def build_producer(config: KafkaConfig) -> KafkaProducer:
    """An acks=all producer for alerts (and, later, dead letters)."""
    return KafkaProducer(
        acks="all",
        linger_ms=config.producer_linger_ms,
        compression_type=config.producer_compression,
        retries=5,
        **security_kwargs(config),
    )


class AlertPublisher:
    """Publishes alerts keyed by device id and returns only once the broker acknowledged all."""

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        on_failure: Callable[[], None] = lambda: None,
        retry_backoff_s: float = 1.0,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.on_failure = on_failure
        self.retry_backoff_s = retry_backoff_s
        self.should_stop = should_stop

    def publish(self, alerts: Sequence[Alert]) -> None:
        """Send and wait for acks, retrying failed sends until they succeed.

        Offsets are committed only after this returns, so retrying here (rather than dropping)
        is what keeps delivery at-least-once while the broker is away.
        """
        pending = list(alerts)
        backoff = self.retry_backoff_s
        while pending:
            futures = [
                (
                    alert,
                    self.producer.send(
                        self.topic,
                        key=alert.device_id.encode(),
                        value=alert.model_dump_json().encode(),
                    ),
                )
                for alert in pending
            ]
            self.producer.flush()
            failed = []
            for alert, future in futures:
                try:
                    future.get(timeout=0)
                except KafkaError as exc:
                    failed.append(alert)
                    log.warning("alert %s not acknowledged (%s); retrying", alert.alert_id, exc)
            if failed:
                self.on_failure()
                if self.should_stop():
                    raise RuntimeError(f"stopping with {len(failed)} alerts unpublished")
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            pending = failed
