"""One bad record never stops detection: poison pills from foreign clients, with a dead-letter topic.

Each poison record of issue 10 (items 1-5) sits in the middle of a real stream: the daemon must
stay up, dead-letter it in a bounded, safe form (one dead letter per record), commit past it,
and score every valid reading around it exactly as an offline run does.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from kafka import KafkaProducer

from detector.clients import open_producer
from detector.clients.base import Record
from detector.config import KafkaConfig
from detector.core.readings import Rejection, RejectReason
from detector.kafka_io import (
    DLQ_HEADER_PREFIX,
    MAX_REQUEST_BYTES,
    OutboundMessage,
    Publisher,
    dead_letter_message,
)
from detector_devtools.embedded_broker import create_topics
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import (
    DemoData,
    Topics,
    committed_total,
    offline_transitions,
    read_records,
    read_topic,
    streamed_transitions,
    wait_until,
)

FIGURES = logging.getLogger("fault-figures")


class RawHeaderKey(str):
    """A header key that kafka-python writes as the given raw bytes (not UTF-8).

    librdkafka producers (kcat, any C client) can put any bytes in a header key; confluent-kafka's
    Python API cannot, so the test makes kafka-python's record builder write them instead.
    """

    raw: bytes

    def __new__(cls, raw: bytes) -> RawHeaderKey:
        key = super().__new__(cls, raw.decode("latin-1"))
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def _record(value: bytes, headers: list[tuple[object, object]] | None = None) -> Record:
    return Record("readings", 2, 41, b"dev", value, headers or [])  # type: ignore[arg-type]


def test_dead_letter_of_a_record_with_many_bad_readings_is_one_bounded_message() -> None:
    rejections = [
        Rejection(RejectReason.INVALID_TYPE, "sensors: not a dict", i) for i in range(3000)
    ]
    letter = dead_letter_message("dlq", _record(b"x" * 880_000), rejections, MAX_REQUEST_BYTES)
    headers = dict(letter.headers)
    assert headers[DLQ_HEADER_PREFIX + "rejected.count"] == b"3000"
    listed = json.loads(headers[DLQ_HEADER_PREFIX + "rejections"])
    assert len(listed) == 100
    assert listed[1] == {"index": 1, "reason": "invalid_type", "detail": "sensors: not a dict"}
    assert headers[DLQ_HEADER_PREFIX + "batch.index"] == b"0"
    assert letter.value == b"x" * 880_000  # it fits, so it is kept whole


def test_dead_letter_is_cut_to_what_the_producer_can_send() -> None:
    big = b"y" * (3 * MAX_REQUEST_BYTES)
    headers = [("trace", None), ("blob", b"z" * (2 * MAX_REQUEST_BYTES))]
    rejection = [Rejection(RejectReason.OVERSIZED, f"{len(big)} bytes > 1048576")]
    letter = dead_letter_message("dlq", _record(big, headers), rejection, MAX_REQUEST_BYTES)
    size = len(letter.value) + len(letter.key or b"")
    size += sum(len(k.encode()) + len(v) for k, v in letter.headers)
    assert size < MAX_REQUEST_BYTES
    named = dict(letter.headers)
    assert named[DLQ_HEADER_PREFIX + "value.truncated"] == b"true"
    assert named[DLQ_HEADER_PREFIX + "original.size"] == str(len(big)).encode()
    assert named[DLQ_HEADER_PREFIX + "headers.dropped"] == b"2"
    assert letter.value == big[: len(letter.value)] and len(letter.value) > 900_000


def test_dead_letter_headers_are_made_sendable() -> None:
    headers = [("trace", None), ("\udcffkey", b"v"), ("ok", b"1")]
    letter = dead_letter_message(
        "dlq", _record(b"nope", headers), [Rejection(RejectReason.UNPARSABLE, "x")], 10_000
    )
    original = [(k, v) for k, v in letter.headers if not k.startswith(DLQ_HEADER_PREFIX)]
    assert original == [("trace", b""), ("?key", b"v"), ("ok", b"1")]
    for key, value in letter.headers:
        key.encode("utf-8")
        assert isinstance(value, bytes)


@pytest.mark.integration
@pytest.mark.fault
def test_poison_records_are_dead_lettered_and_the_stream_around_them_is_scored(
    topics: Topics, demo_data: DemoData, start_daemon
) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    dlq = f"{topics.readings}-dlq"
    create_topics(topics.bootstrap, {dlq: 1})
    valid = encode_messages(interleave(demo_data.anomalous.readings))
    half = len(valid) // 2
    # A valid message from the middle of the stream travels under a non-UTF-8 header key: it
    # must be scored like the rest, so offline equality below covers it.
    carried_key, carried_value = valid[half]
    bad_batch = [{"device_id": "poison", "ts": 1.0, "sensors": "all"}] * 3000
    poison: list[tuple[str, bytes, list[tuple[object, object]]]] = [
        ("huge-int", b"[1" + b"0" * 5000 + b"]", []),
        ("null-header", b"not json at all", [("trace-id", None)]),
        ("over-1-mib", b"z" * (1_500_000), [("trace-id", b"abc")]),
        ("bad-readings", json.dumps(bad_batch).encode(), []),
    ]
    daemon = start_daemon(DETECTOR_KAFKA__DEAD_LETTER_TOPIC=dlq)
    baseline_rss = daemon.rss_kib() / 1024

    producer = KafkaProducer(
        bootstrap_servers=topics.bootstrap, acks="all", max_request_size=4 * MAX_REQUEST_BYTES
    )
    for key, value in valid[:half]:
        producer.send(topics.readings, key=key, value=value)
    producer.send(
        topics.readings,
        key=carried_key,
        value=carried_value,
        headers=[(RawHeaderKey(b"\xff\xfe-key"), b"v")],
    )
    producer.flush()
    foreign = confluent_kafka.Producer(
        {"bootstrap.servers": topics.bootstrap, "message.max.bytes": 4 * MAX_REQUEST_BYTES}
    )
    for name, value, headers in poison:
        foreign.produce(topics.readings, key=name.encode(), value=value, headers=headers)
    assert foreign.flush(30) == 0
    for key, value in valid[half + 1 :]:
        producer.send(topics.readings, key=key, value=value)
    producer.flush()
    producer.close()
    total = len(valid) + len(poison)

    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == total,
        120,
        "every record, poison included, committed",
    )
    assert daemon.process.poll() is None, "daemon died"
    peak_rss = daemon.rss_kib() / 1024
    metrics = daemon.metrics()
    assert metrics["detector_records_consumed_total"] == total
    wait_until(
        lambda: daemon.metric("detector_dead_letters_total") == len(poison),
        30,
        "one dead letter per poison record",
    )
    letters = read_records(topics.bootstrap, dlq)
    assert len(letters) == len(poison)
    by_key = {letter.key.decode(): letter for letter in letters}
    assert set(by_key) == {name for name, _, _ in poison}
    for letter in letters:
        size = len(letter.value or b"") + len(letter.key or b"")
        size += sum(len(k.encode()) + len(v or b"") for k, v in letter.headers)
        assert size <= MAX_REQUEST_BYTES
    headers = {name: dict(letter.headers) for name, letter in by_key.items()}
    assert headers["huge-int"][DLQ_HEADER_PREFIX + "reason"] == b"unparsable"
    assert headers["null-header"]["trace-id"] == b""
    assert headers["over-1-mib"][DLQ_HEADER_PREFIX + "reason"] == b"oversized"
    assert headers["over-1-mib"][DLQ_HEADER_PREFIX + "original.size"] == b"1500000"
    assert headers["over-1-mib"][DLQ_HEADER_PREFIX + "value.truncated"] == b"true"
    assert headers["bad-readings"][DLQ_HEADER_PREFIX + "rejected.count"] == b"3000"
    assert metrics['detector_records_rejected_total{reason="invalid_type"}'] == 3000

    alerts = read_topic(topics.bootstrap, topics.alerts)
    expected = offline_transitions(demo_data.model.path, demo_data.anomalous.readings)
    assert streamed_transitions(alerts) == expected
    assert peak_rss - baseline_rss < 200, f"RSS {baseline_rss:.0f} -> {peak_rss:.0f} MiB"
    FIGURES.info(
        f"poison: {len(poison)} records + 1 non-UTF-8 header key among {len(valid)} valid; "
        f"{len(letters)} dead letters, largest "
        f"{max(len(letter.value or b'') for letter in letters)} B; RSS {baseline_rss:.0f} -> "
        f"{peak_rss:.0f} MiB; alerts equal the offline run"
    )


@pytest.mark.integration
def test_publisher_sends_a_refused_dead_letter_without_content_and_drops_what_cannot_go(
    kafka_bootstrap: str,
) -> None:
    topic = f"dlq-{uuid.uuid4().hex[:10]}"
    create_topics(kafka_bootstrap, {topic: 1})
    where = [(DLQ_HEADER_PREFIX + "offset", b"7"), (DLQ_HEADER_PREFIX + "reason", b"oversized")]
    too_big = OutboundMessage(topic, b"k", b"v" * (2 * MAX_REQUEST_BYTES), where, dead_letter=True)
    # A header key that is not a str: kafka-python refuses it before sending, content or not.
    unsendable = OutboundMessage(topic, None, b"", [(b"raw-key", b"v")], dead_letter=True)  # type: ignore[list-item]
    dropped: list[OutboundMessage] = []
    config = KafkaConfig(bootstrap_servers=[kafka_bootstrap])
    publisher = Publisher(lambda: open_producer(config), timeout_s=10, on_dropped=dropped.append)
    try:
        publisher.publish([too_big, unsendable])
    finally:
        publisher.close()
    assert dropped == [unsendable]
    [letter] = read_records(kafka_bootstrap, topic)
    assert letter.value in (b"", None) and letter.key is None
    headers = dict(letter.headers)
    assert headers[DLQ_HEADER_PREFIX + "offset"] == b"7"
    assert headers[DLQ_HEADER_PREFIX + "value.dropped"] == b"MessageSizeTooLargeError"
