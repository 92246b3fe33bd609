"""Score: a due batch of windows through the profile's model, and its shadow candidate's.

The forward pass gives each window's per-sensor reconstruction errors; the window's score is
their combination the artifact defines (:class:`~detector.core.scoring.Scorer`). The candidate
scored in shadow (while the registry names one) sees the same windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from detector.lane import Lane

__all__ = ["ScoredBatch", "score"]


@dataclass
class ScoredBatch:
    """One batch's windows, scored: row ``i`` of every field is window ``i``."""

    device_ids: list[str]
    spans: list[tuple[float, float]]  # event time of each window's first and last reading
    # The windows' readings (n, length, sensors), unscaled, in the model's feature order: a view
    # of the pending buffer, valid until the next window is added (the batch is judged first).
    windows: np.ndarray
    live: np.ndarray  # bool: new windows (False: replayed to rebuild state, nothing published)
    errors: np.ndarray  # (n, sensors) reconstruction errors
    scores: np.ndarray  # (n,) window scores
    candidate_scores: np.ndarray | None  # the shadow candidate's, when one is scored
    detected_at: float  # wall-clock time the scores were ready
    model_version: str  # the model that scored them

    def __len__(self) -> int:
        return len(self.device_ids)


def score(lane: Lane) -> ScoredBatch:
    """Score the lane's pending windows (at least one) and empty them."""
    windows, device_ids, spans, live, waited = lane.pending.take()
    count = len(device_ids)
    scorer = lane.model.scorer
    started = time.perf_counter()
    errors = scorer.sensor_errors(windows)
    lane.batches_scored += 1
    seconds = time.perf_counter() - started
    scoring = lane.config.scoring
    if scoring.artificial_delay_ms and (
        scoring.artificial_delay_batches is None
        or lane.batches_scored <= scoring.artificial_delay_batches
    ):
        time.sleep(scoring.artificial_delay_ms / 1000)
    lane.sensor.batch(count, time.perf_counter() - started, waited)
    scores = scorer.window_scores(errors)
    lane.sensor.scored(scores[live])
    candidate_scores = None
    candidate = lane.candidate
    if candidate is not None:
        started = time.perf_counter()
        candidate_scores = candidate.scorer.window_scores(candidate.scorer.sensor_errors(windows))
        shadow_seconds = time.perf_counter() - started
        lane.sensor.shadow_batch(shadow_seconds, candidate_scores[live])
        seconds += shadow_seconds
    lane.pending.scored(count, seconds)
    return ScoredBatch(
        device_ids,
        spans,
        windows,
        live,
        errors,
        scores,
        candidate_scores,
        time.time(),
        lane.model.version,
    )
