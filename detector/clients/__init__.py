"""Kafka clients behind one interface (:mod:`detector.clients.base`), chosen by ``kafka.client``.

kafka-python is the default; confluent-kafka (librdkafka: fetching and decompression in native
threads) is the ``confluent`` extra. Only the adapters import a client library.
"""

from __future__ import annotations

from detector.clients.base import (
    ClientError,
    Consumer,
    Delivery,
    Partition,
    Producer,
    Record,
    Refused,
    SafeOffsets,
    SendTimeout,
    Undecodable,
)
from detector.config import KafkaConfig

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
    "open_consumer",
    "open_producer",
]


def open_consumer(config: KafkaConfig) -> Consumer:
    """The configured client's group consumer; raises :class:`ClientError` when no bootstrap
    server answers."""
    if config.client == "confluent-kafka":
        from detector.clients.confluent import ConfluentConsumer

        return ConfluentConsumer(config)
    from detector.clients.kafka_python import KafkaPythonConsumer

    return KafkaPythonConsumer(config)


def open_producer(config: KafkaConfig) -> Producer:
    """The configured client's acks=all producer; raises :class:`ClientError` when no bootstrap
    server answers."""
    from detector.kafka_io import delivery_timeout_s

    if config.client == "confluent-kafka":
        from detector.clients.confluent import ConfluentProducer

        return ConfluentProducer(config, delivery_timeout_s(config))
    from detector.clients.kafka_python import KafkaPythonProducer

    return KafkaPythonProducer(config, delivery_timeout_s(config))
