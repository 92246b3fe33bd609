"""Normal data from a Kafka readings topic over a time range, for retraining on what devices sent.

Offsets are looked up by time where the broker supports it; every record is still filtered by
the reading's own ``ts`` (event time), so a broker without time indexes only costs a longer read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from detector.clients.kafka_python import security_kwargs
from detector.config import KafkaConfig
from detector.core.datafiles import DataFileError
from detector.core.episodes import Transition
from detector.core.readings import Reading
from trainer.data import NormalData

__all__ = ["parse_time", "read_alert_transitions", "read_normal_from_kafka"]

log = logging.getLogger(__name__)

# ``-7d``: seven days before now. A CronJob retrains from "the last days of its topic" this way.
_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from epoch seconds, ISO-8601 (naive means UTC), ``now`` or ``-<N><s|m|h|d>``.

    Relative times count back from ``now`` (epoch seconds; the wall clock when not given), so the
    function is pure when it is passed. Raises ``ValueError`` naming the accepted forms.
    """
    text = text.strip()
    reference = time.time() if now is None else now
    if text == "now":
        return reference
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return reference - float(relative[1]) * _UNIT_SECONDS[relative[2]]
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            seconds = math.nan
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            seconds = moment.timestamp()
    if not math.isfinite(seconds):
        raise ValueError(
            f"time {text!r} is not epoch seconds, ISO-8601, now or -<N>s/m/h/d (e.g. -7d)"
        )
    return seconds


def _assign_all(consumer: KafkaConsumer, topic: str, what: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (a :class:`DataFileError` naming ``what`` if none)."""
    partitions = [
        TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
    ]
    if not partitions:
        raise DataFileError(f"{what} {topic!r} does not exist or has no partitions")
    consumer.assign(partitions)
    return partitions


def _records_to_end(
    consumer: KafkaConsumer, ends: dict[TopicPartition, int], what: str, timeout_s: float
) -> Iterator[ConsumerRecord]:
    """Every record from each partition's position up to its end offset in ``ends``.

    Records past the end that arrive in a fetch are yielded too (the caller's filters decide):
    some brokers (Tansu) report the last batch's first offset + 1 as the end, so the rest of
    that batch lies past it. A :class:`DataFileError` when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    remaining = {tp for tp, end in ends.items() if consumer.position(tp) < end}
    while remaining and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            yield from records
        remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
    if remaining:
        raise DataFileError(f"timed out reading {what} after {timeout_s} s")


def _readings(value: bytes | None) -> list[Reading]:
    try:
        document = json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return []
    items = document if isinstance(document, list) else [document]
    readings = []
    for item in items:
        try:
            readings.append(Reading.model_validate(item))
        except ValidationError:
            continue  # the daemon dead-letters bad readings; training just skips them
    return readings


def read_normal_from_kafka(
    kafka: KafkaConfig,
    topic: str,
    since: float,
    until: float,
    sensors: list[str] | None = None,
    timeout_s: float = 60.0,
    profile: str | None = None,
) -> NormalData:
    """Readings with ``since <= ts < until`` from every partition of ``topic`` as training data.

    Columns follow ``sensors`` when given (e.g. the current model's feature order), else the
    sensor names in the order first seen. Malformed records are skipped and counted in the log.
    With ``profile``, readings whose ``profile`` field names another profile are left out; those
    without the field are kept (a topic per profile does not label its readings).
    """
    consumer = KafkaConsumer(enable_auto_commit=False, **security_kwargs(kafka))
    try:
        partitions = _assign_all(consumer, topic, "topic")
        ends = consumer.end_offsets(partitions)
        starts = consumer.offsets_for_times({tp: int(since * 1000) for tp in partitions})
        for tp in partitions:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found is not None else ends[tp])
        rows: list[dict[str, object]] = []
        digest = hashlib.sha256()
        skipped = other_profile = 0
        for record in _records_to_end(consumer, ends, f"{topic!r}", timeout_s):
            readings = _readings(record.value)
            skipped += not readings
            for reading in readings:
                ts = reading.epoch_seconds()
                if not since <= ts < until:
                    continue
                if profile is not None and reading.profile not in (None, profile):
                    other_profile += 1
                    continue
                digest.update(record.value or b"")
                rows.append({"ts": ts, "device_id": reading.device_id, **reading.sensors})
    finally:
        consumer.close()
    if not rows:
        of_profile = f" for profile {profile!r}" if profile is not None else ""
        raise DataFileError(f"no readings{of_profile} in {topic!r} between {since} and {until}")
    table = pd.DataFrame(rows)
    names = sensors or [c for c in table.columns if c not in ("ts", "device_id")]
    for name in names:
        if name not in table.columns:
            table[name] = np.nan
    table = table[["ts", "device_id", *names]].astype({name: np.float64 for name in names})
    log.info(
        "read %d readings from %s (%d records skipped as malformed, %d readings of other "
        "profiles left out)",
        len(table),
        topic,
        skipped,
        other_profile,
    )
    source = f"kafka://{topic}?since={since}&until={until}"
    if profile is not None:
        source += f"&profile={profile}"
    sorted_table = table.sort_values(["device_id", "ts"], kind="stable").reset_index(drop=True)
    return NormalData(sorted_table, [source], digest.hexdigest())


def _transition(value: bytes | None, profile: str | None) -> Transition | None:
    """The alert in a record of the alerts topic (``None``: not one, or another profile's)."""
    try:
        alert = json.loads(value or b"")
        transition = Transition(
            str(alert["device_id"]),
            str(alert["state"]),
            float(alert["window_start"]),
            float(alert["window_end"]),
        )
    except (ValueError, RecursionError, KeyError, TypeError):  # not JSON, or not an alert
        return None
    if transition.state not in ("firing", "resolved"):
        return None
    if profile is not None and alert.get("profile", profile) != profile:
        return None
    return transition


def read_alert_transitions(
    kafka: KafkaConfig, topic: str, timeout_s: float = 60.0, profile: str | None = None
) -> list[Transition]:
    """Every alert on the alerts ``topic`` (all it retains), as episode transitions.

    The whole topic is read: an episode that opened long ago may still be open. With
    ``profile``, only that profile's alerts. Records that are not alerts are skipped.
    """
    consumer = KafkaConsumer(enable_auto_commit=False, **security_kwargs(kafka))
    transitions: list[Transition] = []
    try:
        partitions = _assign_all(consumer, topic, "alerts topic")
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        for record in _records_to_end(consumer, ends, f"alerts topic {topic!r}", timeout_s):
            transition = _transition(record.value, profile)
            if transition is not None:
                transitions.append(transition)
    finally:
        consumer.close()
    log.info("read %d alerts from %s", len(transitions), topic)
    return transitions
