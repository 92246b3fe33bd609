"""Judge: each scored window against its device's threshold and alert state.

The profile's :class:`~detector.core.judge.Judge` (threshold, adaptation, likelihood, alert rule)
decides per window whether its device starts or stops firing; the shadow candidate's judge does
the same with its own state, counted and never published. Calm windows (device not firing) feed
the drift watch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.core.alerts import AlertState
from detector.lane import Lane
from detector.stages.score import ScoredBatch

__all__ = ["Verdict", "judge"]


@dataclass(frozen=True)
class Verdict:
    """A new window that changed its device's alert state: what :mod:`~detector.stages.emit` sends."""

    row: int  # the window's row in its ScoredBatch
    transition: AlertState
    threshold: float  # the level the window was judged by


def judge(lane: Lane, batch: ScoredBatch) -> list[Verdict]:
    """Judge the batch's windows in order; returns the transitions of new windows."""
    judge_ = lane.registry.judge
    shadowing = batch.candidate_scores is not None
    verdicts: list[Verdict] = []
    calm = np.zeros(len(batch), dtype=bool)
    live = batch.live.tolist()
    for row, (device_id, score) in enumerate(
        zip(batch.device_ids, batch.scores.tolist(), strict=True)
    ):
        threshold, transition = judge_.judge(device_id, score)
        calm[row] = not judge_.firing(device_id)
        if transition is None or not live[row]:
            continue
        if shadowing:
            lane.sensor.shadow_alert("current", transition)
        verdicts.append(Verdict(row, transition, threshold))
    if shadowing:
        _judge_candidate(lane, batch)
    if lane.drift is not None:
        lane.observe_drift(batch.scores[batch.live & calm])
    lane.sensor.firing(judge_.firing_count())
    return verdicts


def _judge_candidate(lane: Lane, batch: ScoredBatch) -> None:
    """The shadow candidate's judge, on its own scores: what it would have raised is counted."""
    shadow, scores = lane.registry.shadow, batch.candidate_scores
    if shadow is None or scores is None:
        return
    live = batch.live.tolist()
    for row, (device_id, score) in enumerate(zip(batch.device_ids, scores.tolist(), strict=True)):
        _, transition = shadow.judge(device_id, score)
        if transition is not None and live[row]:
            lane.sensor.shadow_alert("candidate", transition)
