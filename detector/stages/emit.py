"""Emit: verdicts into alert messages, and each record's rejections into one dead letter.

The last stage. What it returns is published by the daemon's loop, which commits the offsets
they cover only once the broker has acknowledged them.
"""

from __future__ import annotations

import logging

from detector.core.alerts import make_alert
from detector.core.scoring import top_sensor_shares
from detector.kafka_io import (
    MAX_REQUEST_BYTES,
    OutboundMessage,
    alert_message,
    dead_letter_message,
)
from detector.lane import Lane
from detector.sensor import Sensor
from detector.stages.decode import Readings
from detector.stages.judge import Verdict
from detector.stages.score import ScoredBatch

__all__ = ["alerts", "dead_letters"]

log = logging.getLogger(__name__)


def alerts(lane: Lane, batch: ScoredBatch, verdicts: list[Verdict]) -> list[OutboundMessage]:
    """One alert message per verdict, naming the sensors with the largest share of the error."""
    topic = lane.config.kafka.alerts_topic
    top_count = lane.alerts.top_sensors
    names = lane.feature_names
    messages = []
    for verdict in verdicts:
        row = verdict.row
        device_id, score = batch.device_ids[row], float(batch.scores[row])
        top = top_sensor_shares(batch.errors[row], names, top_count)
        alert = make_alert(
            verdict.transition,
            device_id,
            batch.spans[row],
            score,
            verdict.threshold,
            batch.model_version,
            top,
            batch.detected_at,
            lane.name,
        )
        messages.append(alert_message(topic, alert))
        lane.sensor.alert(verdict.transition)
        log.info(
            "alert %s profile=%s device=%s score=%.4g severity=%.2f top=%s",
            verdict.transition,
            lane.name,
            device_id,
            score,
            alert.severity,
            top[0]["sensor"] if top else "-",
        )
    return messages


def dead_letters(readings: Readings, sensor: Sensor, topic: str | None) -> list[OutboundMessage]:
    """Count every rejection of the records; one dead letter per record with any (to ``topic``)."""
    messages = []
    for record, rejections in zip(readings.records, readings.rejections, strict=True):
        if not rejections:
            continue
        for rejection in rejections:
            sensor.rejected(rejection.reason, rejection.detail)
        if topic:
            messages.append(dead_letter_message(topic, record, rejections, MAX_REQUEST_BYTES))
    return messages
