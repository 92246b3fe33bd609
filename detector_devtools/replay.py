"""Replay a sensor table into Kafka as readings: for demos, benchmarks and tests."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
from kafka import KafkaProducer

from detector.core.datafiles import sensor_columns
from detector_devtools.synthetic import PROFILE_COLUMN

__all__ = ["encode_messages", "interleave", "replay"]

log = logging.getLogger(__name__)


def interleave(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in global time order, as a fleet would send them (ties keep device order)."""
    return table.sort_values("ts", kind="stable").reset_index(drop=True)


def encode_messages(table: pd.DataFrame, batch_size: int = 1) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs: one reading per message, or up to ``batch_size`` per device per message.

    Batches group consecutive readings of the same device, since a gateway batch is keyed by one
    device and must keep that device's order. A NaN value leaves its sensor out of the reading, as
    a device that lacks or lost the sensor would (in a mixed-profile table, the columns of the
    other profiles' sensors). With a ``profile`` column each reading carries its ``"profile"``,
    which the daemon's routing can read.
    """
    sensors = [c for c in sensor_columns(table) if c != PROFILE_COLUMN]
    values = table[sensors].to_numpy(dtype=np.float64)
    present = ~np.isnan(values)
    complete = present.all(axis=1)
    devices = table["device_id"].astype(str).tolist()
    stamps = table["ts"].to_numpy(dtype=np.float64)
    profiles = (
        [None if pd.isna(p) else str(p) for p in table[PROFILE_COLUMN]]
        if PROFILE_COLUMN in table.columns
        else None
    )
    messages: list[tuple[bytes, bytes]] = []
    open_batch: dict[str, list[dict[str, object]]] = {}

    def close(device: str) -> None:
        readings = open_batch.pop(device)
        body = readings[0] if batch_size == 1 else readings
        messages.append((device.encode(), json.dumps(body).encode()))

    for i, device in enumerate(devices):
        row = values[i].tolist()
        reading: dict[str, object] = {
            "device_id": device,
            "ts": float(stamps[i]),
            "sensors": (
                dict(zip(sensors, row, strict=True))
                if complete[i]
                else {name: v for name, v, ok in zip(sensors, row, present[i], strict=True) if ok}
            ),
        }
        if profiles is not None and profiles[i] is not None:
            reading["profile"] = profiles[i]
        open_batch.setdefault(device, []).append(reading)
        if len(open_batch[device]) >= batch_size:
            close(device)
    for device in list(open_batch):
        close(device)
    return messages


def replay(
    messages: list[tuple[bytes, bytes]],
    producer: KafkaProducer,
    topic: str,
    rate: float = 0.0,
    readings_per_message: int = 1,
    progress_every: int = 10_000,
) -> int:
    """Send ``messages`` to ``topic``, paced at ``rate`` readings/s (0 = as fast as possible).

    Waits for the broker to acknowledge every message; returns the number of messages sent.
    """
    started = time.monotonic()
    for sent, (key, value) in enumerate(messages, start=1):
        producer.send(topic, key=key, value=value)
        if rate > 0:
            ahead = started + sent * readings_per_message / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        if progress_every and sent % progress_every == 0:
            log.info("replayed %d/%d messages", sent, len(messages))
    producer.flush()
    log.info(
        "replayed %d messages to %s in %.1f s", len(messages), topic, time.monotonic() - started
    )
    return len(messages)
