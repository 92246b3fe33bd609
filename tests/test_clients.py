"""Both Kafka clients behind the daemon's interface, on the real broker (issue 26 item 1).

The loop sees only :mod:`detector.clients.base`: these tests hold each adapter to what the loop
relies on, the same way for both: records in offset order with what a foreign producer put in
them, assignments reported, commits read back, seeks, acknowledged sends and refusals.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaProducer

from detector.clients import (
    ClientError,
    Consumer,
    Partition,
    Record,
    Refused,
    open_consumer,
    open_producer,
)
from detector.config import KafkaConfig
from detector.kafka_io import MAX_REQUEST_BYTES
from detector_devtools.embedded_broker import create_topics, free_port
from tests.conftest import KAFKA_CLIENTS, read_records
from tests.test_poison_records import RawHeaderKey

pytestmark = pytest.mark.integration

confluent_kafka = pytest.importorskip("confluent_kafka")


@pytest.fixture(params=KAFKA_CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    """Each client in turn."""
    return request.param


def _config(bootstrap: str, client: str, **settings: object) -> KafkaConfig:
    return KafkaConfig.model_validate(
        {
            "client": client,
            "bootstrap_servers": bootstrap.split(","),
            "group_id": f"g-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 2000,
            "max_poll_interval_ms": 10000,
            **settings,
        }
    )


@pytest.fixture
def consumers() -> Iterator[Callable[[KafkaConfig], Consumer]]:
    """Opens consumers and closes them all at teardown."""
    opened: list[Consumer] = []

    def make(config: KafkaConfig) -> Consumer:
        consumer = open_consumer(config)
        opened.append(consumer)
        return consumer

    yield make
    for consumer in opened:
        consumer.close()


def _poll_while(consumer: Consumer, waiting: Callable[[], bool], what: str) -> None:
    """Poll while ``waiting()`` holds, failing after 30 s."""
    deadline = time.monotonic() + 30
    while waiting():
        assert time.monotonic() < deadline, what
        consumer.poll(200)


def _poll_until(
    consumer: Consumer, count: int, timeout_s: float = 30
) -> dict[Partition, list[Record]]:
    """Poll until ``count`` records came, keeping each partition's records in order."""
    got: dict[Partition, list[Record]] = {}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got.values())) < count:
        assert time.monotonic() < deadline, f"{sum(map(len, got.values()))} of {count} records"
        for partition, records in consumer.poll(200).items():
            got.setdefault(partition, []).extend(records)
    return got


def test_records_arrive_in_order_with_what_a_foreign_producer_put_in_them(
    kafka_bootstrap: str, client: str, consumers: Callable[[KafkaConfig], Consumer]
) -> None:
    topic = f"c-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 2})
    foreign = confluent_kafka.Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(20):
        foreign.produce(topic, value=b"v%d" % i, key=b"k", partition=i % 2)
    # What kafka-python never sends: a null header value, a header key that is not UTF-8.
    foreign.produce(topic, value=b"odd", key=None, partition=0, headers=[("h", None)])
    assert foreign.flush(10) == 0
    raw = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    raw.send(topic, value=b"odder", partition=1, headers=[(RawHeaderKey(b"\xff\xfe"), b"x")])
    raw.flush()
    raw.close()
    config = _config(kafka_bootstrap, client, readings_topics=[topic])
    consumer = consumers(config)
    consumer.subscribe([topic], dict)
    got = _poll_until(consumer, 22)
    revoked, assigned = consumer.rebalanced()
    assert (revoked, assigned) == (set(), {Partition(topic, 0), Partition(topic, 1)})
    assert consumer.assignment() == assigned
    for partition, records in got.items():
        assert all(isinstance(r, Record) for r in records)
        assert [r.offset for r in records] == list(range(len(records)))
        assert {(r.topic, r.partition) for r in records} == {partition}
    first = got[Partition(topic, 0)]
    assert [r.value for r in first[:10]] == [b"v%d" % i for i in range(0, 20, 2)]
    assert first[0].key == b"k"
    assert (first[10].key, first[10].value) == (None, b"odd")
    assert list(first[10].headers) == [("h", None)]
    assert got[Partition(topic, 1)][10].value == b"odder"
    assert consumer.highwater(Partition(topic, 0)) == 11
    # Reachable once the coordinator answers this member (a heartbeat, or librdkafka's stats).
    _poll_while(consumer, lambda: not consumer.broker_reachable(10.0), "never reachable")


def test_commits_are_read_back_and_a_seek_rereads(
    kafka_bootstrap: str, client: str, consumers: Callable[[KafkaConfig], Consumer]
) -> None:
    topic = f"c-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 1})
    producer = open_producer(_config(kafka_bootstrap, client))
    deliveries = [producer.send(topic, b"k", b"%d" % i, [("n", b"%d" % i)]) for i in range(10)]
    producer.flush(10)
    assert all(d.done and d.error() is None for d in deliveries)
    producer.close(5)
    config = _config(kafka_bootstrap, client)
    consumer = consumers(config)
    consumer.subscribe([topic], dict)
    _poll_until(consumer, 10)
    partition = Partition(topic, 0)
    assert consumer.committed(partition) is None
    consumer.commit({partition: 7})
    assert consumer.committed(partition) == 7
    assert consumer.beginning_offset(partition) == 0
    consumer.seek(partition, 4)
    reread = _poll_until(consumer, 6)[partition]
    assert [r.offset for r in reread] == [4, 5, 6, 7, 8, 9]
    assert dict(reread[0].headers) == {"n": b"4"}


def test_a_poll_returns_as_soon_as_a_record_is_in(
    kafka_bootstrap: str, client: str, consumers: Callable[[KafkaConfig], Consumer]
) -> None:
    """Not after its timeout: librdkafka's consume(n, timeout) waits for n records or the end."""
    topic = f"c-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 1})
    consumer = consumers(_config(kafka_bootstrap, client))
    consumer.subscribe([topic], dict)
    _poll_while(consumer, lambda: not consumer.assignment(), "never assigned")
    producer = open_producer(_config(kafka_bootstrap, client))
    producer.send(topic, b"k", b"one", [])
    producer.flush(10)
    producer.close(5)
    started = time.monotonic()
    got = consumer.poll(20_000)
    waited = time.monotonic() - started
    assert [r.value for r in got.get(Partition(topic, 0), [])] == [b"one"]
    assert waited < 10, f"poll held a ready record for {waited:.1f} s"


def test_a_revoked_partition_commits_what_the_loop_declared_safe(
    kafka_bootstrap: str, client: str, consumers: Callable[[KafkaConfig], Consumer]
) -> None:
    topic = f"c-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 1})
    config = _config(kafka_bootstrap, client)
    consumer = consumers(config)
    partition = Partition(topic, 0)
    consumer.subscribe([topic], lambda: {partition: 3})
    _poll_while(consumer, lambda: not consumer.assignment(), "never assigned")
    consumer.close()
    other = consumers(config)
    assert other.committed(partition) == 3


def test_an_oversized_message_is_refused_and_a_sent_one_acknowledged(
    kafka_bootstrap: str, client: str
) -> None:
    topic = f"c-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 1})
    producer = open_producer(_config(kafka_bootstrap, client))
    try:
        refused = None
        try:
            big = producer.send(topic, None, b"x" * (2 * MAX_REQUEST_BYTES), [])
            producer.flush(10)
            refused = big.error()
        except Refused as exc:
            refused = exc
        assert refused is not None and not refused.retriable
        assert refused.kind in ("MessageSizeTooLargeError", "MSG_SIZE_TOO_LARGE")
        fine = producer.send(topic, b"k", b"small", [("trace", b"1")])
        producer.flush(10)
        assert fine.done and fine.error() is None
    finally:
        producer.close(5)
    [record] = read_records(kafka_bootstrap, topic)
    assert (record.key, record.value, record.headers) == (b"k", b"small", [("trace", b"1")])


def test_no_broker_is_a_client_error_at_start_up(client: str) -> None:
    config = _config(f"127.0.0.1:{free_port()}", client, bootstrap_timeout_ms=1000)
    with pytest.raises(ClientError):
        open_consumer(config)
    with pytest.raises(ClientError):
        open_producer(config)
