"""One device profile's stages after routing: its devices, pending windows, model, drift, shadow.

A :class:`Lane` holds everything that belongs to one profile: the devices routed to it (their
windows, admission and alert state in a :class:`~detector.core.devices.DeviceRegistry`), the
ready windows waiting for a batch (:class:`PendingWindows`), the model that scores them and the
alert rule that judges them, the drift watch over its live scores and, while the profile's
registry names a ``candidate``, the candidate model scored in shadow on the same windows. The
:class:`~detector.pipeline.Pipeline` routes readings into lanes and collects what they publish.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from detector.config import AlertConfig, DetectorConfig
from detector.core.admission import Admitter
from detector.core.alerts import make_alert
from detector.core.artifact import Artifact
from detector.core.devices import DeviceRegistry
from detector.core.drift import DriftMonitor
from detector.core.judge import judge_levels
from detector.core.scoring import Scorer, top_sensor_shares
from detector.core.windows import WindowStore
from detector.kafka_io import OutboundMessage, alert_message
from detector.sensor import Sensor

__all__ = ["Lane", "Model", "PendingWindows", "PollCounts"]

log = logging.getLogger(__name__)

_SMOOTHING = 0.2  # weight of the newest batch in the forward-pass time per window


@dataclass(frozen=True)
class Model:
    """A loaded model version and the scorer that runs it."""

    artifact: Artifact
    scorer: Scorer

    @property
    def version(self) -> str:
        """The artifact's version id."""
        return self.artifact.version


class PendingWindows:
    """Ready windows waiting to be scored together, copied out of the ring buffers.

    ``batch_size`` windows make a batch, but a record is always ingested whole (a gateway batch
    can hold many readings), so the buffer grows past it rather than split a record.
    """

    def __init__(self, batch_size: int, length: int, n_features: int) -> None:
        self.batch_size = batch_size
        self.windows = np.empty((batch_size, length, n_features), dtype=np.float32)
        self.device_ids: list[str] = []
        self.spans: list[tuple[float, float]] = []
        self.live: list[bool] = []  # False while rebuilding: score for state, publish nothing
        self.oldest: float | None = None  # monotonic time the first window was added

    def __len__(self) -> int:
        return len(self.device_ids)

    @property
    def full(self) -> bool:
        """A batch's worth of windows is waiting."""
        return len(self.device_ids) >= self.batch_size

    def add(self, store: WindowStore, slot: int, device_id: str, live: bool, now: float) -> None:
        """Copy the device's current window in (it will change as more readings arrive)."""
        self._reserve(len(self.device_ids) + 1)
        store.window(slot, out=self.windows[len(self.device_ids)])
        self.device_ids.append(device_id)
        self.spans.append(store.window_span(slot))
        self.live.append(live)
        if self.oldest is None:
            self.oldest = now

    def extend(
        self,
        windows: np.ndarray,
        device_ids: list[str],
        spans: np.ndarray,
        live: np.ndarray,
        now: float,
    ) -> None:
        """Add windows cut elsewhere (:meth:`~detector.core.windows.WindowStore.append_many`)."""
        if not device_ids:
            return
        count, needed = len(self.device_ids), len(self.device_ids) + len(device_ids)
        self._reserve(needed)
        self.windows[count:needed] = windows
        self.device_ids.extend(device_ids)
        self.spans.extend(map(tuple, spans.tolist()))
        self.live.extend(live.tolist())
        if self.oldest is None:
            self.oldest = now

    def _reserve(self, needed: int) -> None:
        """Room for ``needed`` windows, doubling the buffer (at least) when it is short."""
        if needed > len(self.windows):
            grown = np.empty(
                (max(needed, 2 * len(self.windows)), *self.windows.shape[1:]), np.float32
            )
            grown[: len(self.device_ids)] = self.windows[: len(self.device_ids)]
            self.windows = grown

    def waited(self) -> float:
        """Seconds the oldest pending window has waited (0 when none is pending)."""
        return 0.0 if self.oldest is None else time.monotonic() - self.oldest

    def clear(self) -> None:
        """Forget everything after scoring."""
        self.device_ids.clear()
        self.spans.clear()
        self.live.clear()
        self.oldest = None


@dataclass
class PollCounts:
    """What a lane admitted during one poll, reported once at its end."""

    accepted: int = 0
    imputed: int = 0
    resets: dict[str, int] = field(default_factory=dict)


class Lane:
    """One profile: its devices, pending windows, model, alert rule, drift watch and shadow."""

    def __init__(
        self, name: str, config: DetectorConfig, model: Model, sensor: Sensor | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.alerts: AlertConfig = config.alerts_for(name)
        self.sensor = sensor or Sensor()
        meta = model.artifact.metadata
        windows = config.windows
        store = WindowStore(
            meta.window_length,
            len(meta.feature_names),
            stride=windows.stride,
            max_devices=windows.max_devices,
        )
        self.registry: DeviceRegistry = DeviceRegistry(
            store,
            Admitter(windows.policy(), store, meta.feature_names),
            self.alerts.judge(judge_levels(model.artifact.metadata)),
            windows.capacity_min_idle_s,
        )
        self.pending = PendingWindows(
            config.scoring.max_batch_size, meta.window_length, len(meta.feature_names)
        )
        self.counts = PollCounts()
        self.drift: DriftMonitor | None = None
        self._candidate: Model | None = None
        self._batches_scored = 0
        self._seconds_per_window = 0.0  # forward-pass time per window, smoothed over batches
        self.install(model)

    @property
    def model(self) -> Model:
        """The model whose alerts are published."""
        return self._model

    @property
    def candidate(self) -> Model | None:
        """The model scored in shadow, if any."""
        return self._candidate

    @property
    def feature_names(self) -> list[str]:
        """The model's feature order (what the parser maps this profile's sensors to)."""
        return self._model.artifact.metadata.feature_names

    def install(self, model: Model) -> None:
        """Score every following window with ``model``; call with nothing pending.

        Alert state carries over; thresholds calibrate and adapt again, the drift watch starts
        over (the new model's scores are not comparable with the old one's), and so does the
        shadow comparison.
        """
        self._model = model
        self.registry.judge.install(judge_levels(model.artifact.metadata))
        self.drift = self._drift_monitor(model.artifact)
        self._drift_score = float("nan")
        if self._candidate is not None:
            self.shadow(self._candidate)

    def shadow(self, candidate: Model | None) -> None:
        """Score every following window with ``candidate`` too (``None``: stop); call with nothing pending.

        The candidate judges with its own threshold and alert state, from a clean start; what it
        would have raised is counted (:meth:`Sensor.shadow_alert`), never published.
        """
        self._candidate = candidate
        if candidate is None:
            self.registry.shadow = None
        else:
            self.registry.shadow = self.alerts.judge(judge_levels(candidate.artifact.metadata))
        self.sensor.shadow(self._model.version, None if candidate is None else candidate.version)

    def _drift_monitor(self, artifact: Artifact) -> DriftMonitor | None:
        reference = artifact.metadata.score_distribution
        settings = self.config.drift
        if settings.windows == 0:
            return None
        if reference is None:
            log.warning(
                "model %s of profile %s has no validation score distribution (trained before "
                "drift watch): no drift reported until it is retrained",
                artifact.version,
                self.name,
            )
            return None
        return DriftMonitor(
            reference.edges, reference.shares, settings.windows, settings.min_windows
        )

    def drift_score(self) -> float:
        """The drift watch's PSI (NaN while it has too few scores or the model no reference).

        As of the last scored batch: the metrics thread reads it at each scrape, and a value
        taken while :meth:`score` updates the monitor could be half of each.
        """
        return self._drift_score

    def latency_ms(self) -> float:
        """The oldest pending window's wait so far plus the predicted time to score them all."""
        pending = self.pending
        return 1000 * (pending.waited() + len(pending) * self._seconds_per_window)

    def due(self) -> bool:
        """Whether to score now: a full batch, or ``max_wait_ms`` reached with the scoring time.

        The forward pass is part of the latency ``scoring.max_wait_ms`` bounds, so a batch is
        scored early enough for its predicted scoring time to fit: under load batches stay
        small enough to be scored within the budget instead of growing to ``max_batch_size``.
        """
        pending = self.pending
        if not pending:
            return False
        return pending.full or self.latency_ms() >= self.config.scoring.max_wait_ms

    def wait_ms(self) -> int | None:
        """Milliseconds until the pending windows are due (``None``: nothing is pending)."""
        if not self.pending:
            return None
        return max(int(self.config.scoring.max_wait_ms - self.latency_ms()), 0)

    def score(self, outbox: list[OutboundMessage]) -> None:
        """Score and judge the pending windows; alerts of new windows go to ``outbox``."""
        pending = self.pending
        count = len(pending)
        live = np.asarray(pending.live, dtype=bool)
        waited = pending.waited() if live.any() else None
        scorer = self._model.scorer
        started = time.perf_counter()
        errors = scorer.sensor_errors(pending.windows[:count])
        self._batches_scored += 1
        seconds = time.perf_counter() - started
        scoring = self.config.scoring
        if scoring.artificial_delay_ms and (
            scoring.artificial_delay_batches is None
            or self._batches_scored <= scoring.artificial_delay_batches
        ):
            time.sleep(scoring.artificial_delay_ms / 1000)
        self.sensor.batch(count, time.perf_counter() - started, waited)
        scores = scorer.window_scores(errors)
        self.sensor.scored(scores[live])
        shadowing = self._candidate is not None
        if shadowing:
            seconds += self._score_candidate(count, live)
        # Per window, smoothed: a batch's cost is close to linear in its size on CPU and GPU.
        self._seconds_per_window += _SMOOTHING * (seconds / count - self._seconds_per_window)
        detected_at = time.time()
        topic = self.config.kafka.alerts_topic
        judge = self.registry.judge
        version = self._model.version
        top_count = self.alerts.top_sensors
        names = self.feature_names
        calm = np.zeros(count, dtype=bool)
        for i in range(count):
            score = float(scores[i])
            device_id = pending.device_ids[i]
            threshold, transition = judge.judge(device_id, score)
            calm[i] = not judge.firing(device_id)
            if transition is None or not live[i]:
                continue
            if shadowing:
                self.sensor.shadow_alert("current", transition)
            top = top_sensor_shares(errors[i], names, top_count)
            alert = make_alert(
                transition,
                device_id,
                pending.spans[i],
                score,
                threshold,
                version,
                top,
                detected_at,
                self.name,
            )
            outbox.append(alert_message(topic, alert))
            self.sensor.alert(transition)
            log.info(
                "alert %s profile=%s device=%s score=%.4g severity=%.2f top=%s",
                transition,
                self.name,
                device_id,
                score,
                alert.severity,
                top[0]["sensor"] if top else "-",
            )
        if self.drift is not None:
            self.drift.observe(scores[live & calm])
            self._drift_score = self.drift.psi()
        pending.clear()
        self.sensor.firing(judge.firing_count())

    def _score_candidate(self, count: int, live: np.ndarray) -> float:
        """Score the pending windows with the candidate and judge them; returns the seconds."""
        candidate, judge, pending = self._candidate, self.registry.shadow, self.pending
        if candidate is None or judge is None:
            return 0.0
        started = time.perf_counter()
        scores = candidate.scorer.window_scores(
            candidate.scorer.sensor_errors(pending.windows[:count])
        )
        seconds = time.perf_counter() - started
        self.sensor.shadow_batch(seconds, scores[live])
        for i in range(count):
            _, transition = judge.judge(pending.device_ids[i], float(scores[i]))
            if transition is not None and live[i]:
                self.sensor.shadow_alert("candidate", transition)
        return seconds
