"""Judge: each scored window against its device's threshold and alert state.

The profile's :class:`~detector.core.judge.Judge` (its chain of level rules, then the alert rule)
decides per window whether its device starts or stops firing; the shadow candidate's judge does
the same with its own state, counted and never published. Calm windows (device not firing) feed
the drift watch.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    judged = judge_.judge_many(
        batch.device_ids, batch.scores, spans=batch.spans, inputs=batch.windows
    )
    verdicts: list[Verdict] = []
    if judged.transitions:
        live = batch.live.tolist()
        thresholds = judged.thresholds.tolist()
        for row, transition in judged.transitions:
            if not live[row]:
                continue
            if shadowing:
                lane.sensor.shadow_alert("current", transition)
            verdicts.append(Verdict(row, transition, thresholds[row]))
    lane.sensor.judged(
        batch.device_ids, batch.spans, batch.scores, judged.thresholds, judged.firing, batch.live
    )
    if shadowing:
        _judge_candidate(lane, batch)
    if lane.drift is not None:
        # Calm: the device is not firing once the window is judged.
        lane.observe_drift(batch.scores[batch.live & ~judged.firing])
    lane.sensor.firing(judge_.firing_count())
    return verdicts


def _judge_candidate(lane: Lane, batch: ScoredBatch) -> None:
    """The shadow candidate's judge, on its own scores: what it would have raised is counted."""
    shadow, scores = lane.registry.shadow, batch.candidate_scores
    if shadow is None or scores is None:
        return
    live = batch.live.tolist()
    judged = shadow.judge_many(batch.device_ids, scores, spans=batch.spans, inputs=batch.windows)
    for row, transition in judged.transitions:
        if live[row]:
            lane.sensor.shadow_alert("candidate", transition)
