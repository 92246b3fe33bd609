"""Backtest: recorded readings through the daemon's own pipeline, in time order, with no broker.

The whole fleet's rows are replayed in time order as the records a consumer hands the daemon
(one reading per record, keyed by its device) through the daemon's
:class:`~detector.pipeline.Pipeline`: decode → route → admit → window → score → judge → emit,
the stages themselves, not copies of them. What comes out is, per reading, the score of the
window it completed, the level that window was judged by and whether the device fires; the alert
messages the daemon would have published (the same ids); and the readings it would have
dead-lettered, by reason.

With ``retrain.every_s`` set (:class:`~detector.config.RetrainConfig`) the backtest also runs
the retrain loop production runs: every ``every_s`` seconds of data (with ``min_new_rows`` new
readings) a candidate is fitted by the trainer's own code
(:class:`trainer.refit.TrainerRefitter`, with the settings the current model recorded) on the
last ``span_s`` seconds of rows the detector has already seen, never a row it has not, less the
rows inside its alert episodes so far, and,
when the trainer's gate promotes it, swapped in as a hot reload swaps a model: pending windows
are scored by the old model, alert state carries over. Models can also be swapped at given
times (:meth:`Backtest.run`'s ``swaps``), as an operator's promotion would.

What differs from a live daemon, by design: ``detected_at`` is the window's end (a backtest has
no wall clock to report); the clock is the data's own (no reading is in the future); devices are
never forgotten for being idle, so past ``max_devices`` a new device is refused
(``too_many_devices``) rather than taking an idle one's place.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import msgspec
import numpy as np
import pandas as pd

from detector.clients.base import Partition, Record
from detector.config import DetectorConfig, ModelConfig, ProfileConfig, RetrainConfig
from detector.core.alerts import Alert
from detector.core.artifact import Artifact
from detector.core.episodes import Transition, episode_spans, rows_in_episodes
from detector.core.routing import DEFAULT_PROFILE
from detector.core.scoring import Scorer
from detector.kafka_io import DLQ_HEADER_PREFIX
from detector.lane import Model
from detector.pipeline import Output, Pipeline
from detector.sensor import Sensor

__all__ = [
    "Backtest",
    "BacktestResult",
    "DeviceEvaluation",
    "ModelSwap",
    "Refit",
    "RefitError",
    "Refitter",
    "evaluate_device",
    "evaluate_table",
    "row_frame",
]

log = logging.getLogger(__name__)

# Where the backtest's records come from and its dead letters go: names no broker ever sees.
_TOPIC = Partition("evaluate", 0)
_DEAD_LETTERS = "evaluate.dead-letters"
_REASON_HEADER = DLQ_HEADER_PREFIX + "reason"
_OFFSET_HEADER = DLQ_HEADER_PREFIX + "offset"
# Records handed to the pipeline at a time, as one poll.
_POLL_RECORDS = 2048


class RefitError(Exception):
    """A model the retrain schedule cannot refit (it does not record how it was trained)."""


@dataclass(frozen=True)
class DeviceEvaluation:
    """One device's backtest: per reading, its window's score and threshold, and the alert state."""

    device_id: str
    ts: np.ndarray  # every row of the device, in time order
    scores: np.ndarray  # the score of the window that ended at the row (NaN: none did)
    thresholds: np.ndarray  # the threshold that window was judged by (NaN: none)
    firing: np.ndarray  # the device is firing after the row (bool)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> readings
    alerts: list[Alert] = field(default_factory=list)


@dataclass(frozen=True)
class Refit:
    """One scheduled refit: what it trained on, what it cost and whether it was swapped in."""

    at: float  # data time: it saw every row before this one, and none after
    rows: int  # rows it was given (the last span_s seconds seen)
    trained_rows: int  # of those, what it trained on: complete and not left out
    seconds: float  # wall-clock time the fit took
    warm: bool  # fine-tuned from the current model's weights
    version: str | None  # the new version (None: the fit failed)
    promoted: bool  # the trainer's gate let it replace the current model
    detail: str = ""  # why it failed, or its gate's figures


@dataclass(frozen=True)
class ModelSwap:
    """A model that began scoring at data time ``at``."""

    at: float
    version: str
    reason: Literal["refit", "swap"]


class Refitter(Protocol):
    """Fits a candidate on the rows seen so far; returns it when it replaces ``current``."""

    def __call__(
        self, current: Artifact, rows: pd.DataFrame, in_episodes: np.ndarray, at: float
    ) -> tuple[Artifact | None, Refit]:
        """``rows``: ``ts``, ``device_id`` and ``current``'s sensors, all before ``at``, in time
        order (NaN: a missing sensor); ``in_episodes``: the rows inside the detector's alert
        episodes (:mod:`detector.core.episodes`, as ``trainer fit --exclude-alerts`` finds them).
        A fit that fails is a :class:`Refit` without a version, never an exception."""
        ...


@dataclass
class BacktestResult:
    """Every device's evaluation, the refits and model swaps, and the rejections by reason."""

    devices: list[DeviceEvaluation]
    refits: list[Refit]
    swaps: list[ModelSwap]

    @property
    def alerts(self) -> list[Alert]:
        """Every alert, device by device."""
        return [alert for device in self.devices for alert in device.alerts]

    @property
    def rejected(self) -> dict[str, int]:
        """Rejected readings of the whole fleet, by reason."""
        totals: dict[str, int] = {}
        for device in self.devices:
            for reason, count in device.rejected.items():
                totals[reason] = totals.get(reason, 0) + count
        return totals


class _JudgedWindows(Sensor):
    """Keeps what the judge stage decided for each new window; reports nothing else."""

    def __init__(self) -> None:
        self.device_ids: list[str] = []
        self.ends: list[float] = []
        self.scores: list[np.ndarray] = []
        self.thresholds: list[np.ndarray] = []
        self.fires: list[np.ndarray] = []

    def judged(
        self,
        device_ids: list[str],
        spans: list[tuple[float, float]],
        scores: np.ndarray,
        thresholds: np.ndarray,
        firing: np.ndarray,
        live: np.ndarray,
    ) -> None:
        rows = np.flatnonzero(live)
        self.device_ids.extend(device_ids[row] for row in rows.tolist())
        self.ends.extend(spans[row][1] for row in rows.tolist())
        self.scores.append(np.asarray(scores)[rows])
        self.thresholds.append(np.asarray(thresholds)[rows])
        self.fires.append(np.asarray(firing)[rows])

    def frame(self) -> pd.DataFrame:
        """One row per judged window: device, window end, score, threshold, firing."""
        return pd.DataFrame(
            {
                "device_id": self.device_ids,
                "end": np.asarray(self.ends, dtype=np.float64),
                "score": np.concatenate([np.empty(0), *self.scores]),
                "threshold": np.concatenate([np.empty(0), *self.thresholds]),
                "firing": np.concatenate([np.empty(0, dtype=bool), *self.fires]),
            }
        )


class _Fleet:
    """The recorded rows in the order the backtest replays them, and as records."""

    def __init__(self, table: pd.DataFrame, features: list[str]) -> None:
        missing = [name for name in features if name not in table.columns]
        if missing:
            raise ValueError(f"the model's sensors are not in the data: {missing}")
        ordered = table.sort_values("ts", kind="stable")
        self.features = features
        self.device_ids = ordered["device_id"].astype(str).to_numpy()
        self.ts = ordered["ts"].to_numpy(dtype=np.float64)
        self.values = ordered[features].to_numpy(dtype=np.float64)
        # Results come back device by device in order of first appearance in the file, which
        # the CLI relies on to line its label column up with the rows.
        self.devices = list(dict.fromkeys(table["device_id"].astype(str)))

    def __len__(self) -> int:
        return len(self.ts)

    def records(self, start: int, stop: int) -> list[Record]:
        """Rows ``start:stop`` as the consumer would hand them over: one reading each.

        A NaN leaves its sensor out of the reading, as a device that lost the sensor would.
        """
        encode = msgspec.json.encode
        names = self.features
        out = []
        for offset in range(start, stop):
            device = str(self.device_ids[offset])
            row = self.values[offset].tolist()
            sensors = {name: v for name, v in zip(names, row, strict=True) if v == v}
            value = encode({"device_id": device, "ts": float(self.ts[offset]), "sensors": sensors})
            key = device.encode()
            out.append(Record(_TOPIC.topic, _TOPIC.partition, offset, key, value, ()))
        return out

    def seen(self, stop: int, since: float) -> pd.DataFrame:
        """The rows before position ``stop`` from time ``since`` on: what a refit reads."""
        start = int(np.searchsorted(self.ts[:stop], since, side="left"))
        frame = pd.DataFrame(self.values[start:stop], columns=self.features)
        frame.insert(0, "device_id", self.device_ids[start:stop])
        frame.insert(0, "ts", self.ts[start:stop])
        return frame


class Backtest:
    """The daemon's pipeline for one model, replayed over recorded data (see the module docs).

    ``config``'s alert settings are the ones judged with (for a profile's own:
    ``config.alerts_for(profile)``, put in ``alerts``); ``profile`` is what the alerts carry.
    ``refitter`` fits scheduled refits (default: the trainer's, :func:`trainer.refit.refit`);
    ``registry`` is where it writes them (default: a temporary directory).
    """

    def __init__(
        self,
        artifact: Artifact,
        config: DetectorConfig,
        scorer: Scorer | None = None,
        profile: str = DEFAULT_PROFILE,
        refitter: Refitter | None = None,
        registry: Path | None = None,
    ) -> None:
        self.artifact = artifact
        self.profile = profile
        self.retrain: RetrainConfig = config.retrain
        model_config = (
            ModelConfig(path=artifact.path)
            if profile == DEFAULT_PROFILE
            else ModelConfig(
                profiles={profile: ProfileConfig(path=artifact.path)}, default_profile=profile
            )
        )
        self.config = config.model_copy(
            update={
                "model": model_config,
                "kafka": config.kafka.model_copy(update={"dead_letter_topic": _DEAD_LETTERS}),
            }
        )
        self.scorer = scorer
        self.refitter = refitter
        self.registry = registry

    def _model(self, artifact: Artifact, scorer: Scorer | None = None) -> Model:
        scoring = self.config.scoring
        if scorer is None:
            scorer = Scorer.from_artifact(
                artifact, scoring.device, scoring.max_batch_size, scoring.threads
            )
        return Model(artifact, scorer)

    def run(
        self,
        table: pd.DataFrame,
        swaps: Sequence[tuple[float, Artifact]] = (),
        progress: Callable[[int], None] | None = None,
    ) -> BacktestResult:
        """Replay ``table`` (``ts``, ``device_id`` and the model's sensors) in time order.

        ``swaps``: ``(time, artifact)`` pairs, each artifact scoring from the first reading at or
        after its time, as a hot reload would swap it in. ``progress`` hears how many readings
        each poll replayed. Raises :class:`RefitError` before replaying anything when refits are
        scheduled for a model that does not record how it was trained.
        """
        if self.retrain.enabled and self.refitter is None:
            _require_refittable(self.artifact)
        if self.retrain.enabled and self.refitter is None and self.registry is None:
            with tempfile.TemporaryDirectory(prefix="refits-") as directory:
                return self._run(table, swaps, progress, self._refitter(Path(directory)))
        refitter = self._refitter(self.registry) if self.retrain.enabled else None
        return self._run(table, swaps, progress, refitter)

    def _refitter(self, registry: Path | None) -> Refitter:
        if self.refitter is not None:
            return self.refitter
        from trainer.refit import TrainerRefitter

        assert registry is not None
        return TrainerRefitter(registry, self.retrain)

    def _run(
        self,
        table: pd.DataFrame,
        swaps: Sequence[tuple[float, Artifact]],
        progress: Callable[[int], None] | None,
        refitter: Refitter | None,
    ) -> BacktestResult:
        fleet = _Fleet(table, self.artifact.metadata.feature_names)
        judged = _JudgedWindows()
        pipeline = Pipeline(
            self.config, {self.profile: self._model(self.artifact, self.scorer)}, judged
        )
        current = self.artifact
        pending_swaps = sorted(swaps, key=lambda swap: swap[0])
        published = _Published(len(fleet))
        refits: list[Refit] = []
        model_swaps: list[ModelSwap] = []
        schedule = _RefitSchedule(self.retrain, fleet.ts) if refitter is not None else None
        position, total = 0, len(fleet)
        while position < total:
            now = float(fleet.ts[position])
            if pending_swaps and pending_swaps[0][0] <= now:
                _, artifact = pending_swaps.pop(0)
                current = self._install(pipeline, published, artifact)
                model_swaps.append(ModelSwap(now, artifact.version, "swap"))
                continue
            if schedule is not None and refitter is not None and schedule.due(position):
                # Everything seen so far is scored and judged by the model that saw it.
                published.append(pipeline.flush())
                rows = fleet.seen(position, now - self.retrain.span_s)
                episodes = episode_spans(published.transitions)
                in_episodes = rows_in_episodes(
                    rows["device_id"].to_numpy(), rows["ts"].to_numpy(), episodes
                )
                fitted, refit = refitter(current, rows, in_episodes, now)
                log.info(
                    "refit at %s on %d rows in %.1f s: %s",
                    now,
                    len(rows),
                    refit.seconds,
                    refit.version if refit.promoted else f"not swapped in ({refit.detail})",
                )
                refits.append(refit)
                schedule.refitted(position)
                if fitted is not None:
                    current = self._install(pipeline, published, fitted)
                    model_swaps.append(ModelSwap(now, fitted.version, "refit"))
            stop = min(position + _POLL_RECORDS, total)
            if pending_swaps:
                stop = min(stop, max(_position(fleet.ts, pending_swaps[0][0]), position + 1))
            if schedule is not None:
                stop = min(stop, max(schedule.next_position(), position + 1))
            records = fleet.records(position, stop)
            published.append(pipeline.process({_TOPIC: records}, now=float(fleet.ts[stop - 1])))
            if progress is not None:
                progress(stop - position)
            position = stop
        published.append(pipeline.flush())
        return BacktestResult(
            _device_evaluations(fleet, judged.frame(), published), refits, model_swaps
        )

    def _install(self, pipeline: Pipeline, published: _Published, artifact: Artifact) -> Artifact:
        """Swap ``artifact`` in as a hot reload does: pending windows scored by the old model."""
        pipeline.install(self.profile, self._model(artifact))
        published.append(pipeline.flush())
        return artifact


class _RefitSchedule:
    """When the next refit is due: ``every_s`` of data and ``min_new_rows`` readings after the last."""

    def __init__(self, settings: RetrainConfig, ts: np.ndarray) -> None:
        self.settings = settings
        self.ts = ts
        self.last_position = 0
        self.next_time = (float(ts[0]) if len(ts) else 0.0) + settings.every_s

    def next_position(self) -> int:
        """The first row position at which a refit is due (past the end: none is).

        Always the first row of a time: rows stamped alike are seen together, so a refit never
        reads a row of its own time, and a swap never splits one.
        """
        by_time = _position(self.ts, self.next_time)
        by_rows = self.last_position + self.settings.min_new_rows
        if by_rows <= by_time or by_rows >= len(self.ts):
            return max(by_time, by_rows)
        return int(np.searchsorted(self.ts, self.ts[by_rows - 1], side="right"))

    def due(self, position: int) -> bool:
        """Whether a refit is due before the row at ``position``."""
        return position >= self.next_position()

    def refitted(self, position: int) -> None:
        """A refit ran before the row at ``position``: the next is counted from here."""
        self.last_position = position
        self.next_time = float(self.ts[position]) + self.settings.every_s


class _Published:
    """What the pipeline published, read once as it comes: alerts, rejections, and transitions."""

    def __init__(self, rows: int) -> None:
        self.alerts_of: dict[str, list[Alert]] = {}
        self.rejected_of: dict[str, dict[str, int]] = {}
        self.rejected_rows = np.zeros(rows, dtype=bool)
        self.transitions: list[Transition] = []  # every alert so far, as episode transitions

    def append(self, output: Output) -> None:
        """Take a step's messages: dead letters counted by device and reason, alerts kept."""
        for message in output.messages:
            device = (message.key or b"").decode()
            if message.dead_letter:
                # One reading a record: the record's offset is the row's position.
                headers = dict(message.headers)
                self.rejected_rows[int(headers[_OFFSET_HEADER])] = True
                reason = headers[_REASON_HEADER].decode()
                counts = self.rejected_of.setdefault(device, {})
                counts[reason] = counts.get(reason, 0) + 1
                continue
            alert = Alert.model_validate_json(message.value)
            # A backtest has no wall clock: an alert is detected when its window ends.
            self.alerts_of.setdefault(device, []).append(
                alert.model_copy(update={"detected_at": alert.window_end})
            )
            self.transitions.append(
                Transition(alert.device_id, alert.state, alert.window_start, alert.window_end)
            )


def _require_refittable(artifact: Artifact) -> None:
    """Raise :class:`RefitError` unless ``artifact`` records the settings a refit needs."""
    if artifact.metadata.training_config is None:
        raise RefitError(
            f"model {artifact.version} does not record how it was trained (trained before "
            "refits existed): retrain it with this trainer, or backtest it with --no-retrain"
        )


def _position(ts: np.ndarray, at: float) -> int:
    """The first row at or after time ``at`` (rows in time order)."""
    return int(np.searchsorted(ts, at, side="left"))


def _device_evaluations(
    fleet: _Fleet, windows: pd.DataFrame, published: _Published
) -> list[DeviceEvaluation]:
    """Each device's rows with their windows' verdicts, alerts and rejections."""
    rejected_rows = published.rejected_rows
    windows_of = dict(tuple(windows.groupby("device_id", sort=False)))
    rows_of = pd.Series(np.arange(len(fleet))).groupby(fleet.device_ids, sort=False).indices
    results = []
    for device in fleet.devices:
        rows = rows_of.get(device, np.empty(0, dtype=np.int64))
        ts = fleet.ts[rows]
        scores = np.full(len(ts), np.nan)
        thresholds = np.full(len(ts), np.nan)
        firing = np.zeros(len(ts), dtype=bool)
        judged = windows_of.get(device)
        if judged is not None:
            # A window ends at the reading that completed it: the device's accepted row with
            # that time (a second one would have been rejected as a duplicate).
            accepted = np.flatnonzero(~rejected_rows[rows])
            at = accepted[np.searchsorted(ts[accepted], judged["end"].to_numpy(), side="left")]
            scores[at] = judged["score"].to_numpy()
            thresholds[at] = judged["threshold"].to_numpy()
            firing[at] = judged["firing"].to_numpy()
            # Between windows (and after rejected readings) the device keeps its last state.
            last = np.maximum.accumulate(np.where(np.isnan(scores), -1, np.arange(len(ts))))
            covered = last >= 0
            firing[covered] = firing[last[covered]]
        results.append(
            DeviceEvaluation(
                device,
                ts,
                scores,
                thresholds,
                firing,
                published.rejected_of.get(device, {}),
                published.alerts_of.get(device, []),
            )
        )
    return results


def evaluate_table(
    table: pd.DataFrame,
    artifact: Artifact,
    config: DetectorConfig,
    scorer: Scorer | None = None,
    profile: str = DEFAULT_PROFILE,
) -> list[DeviceEvaluation]:
    """Backtest every device of a table from :func:`~detector.core.datafiles.load_table`.

    The table needs ``ts``, ``device_id`` and the artifact's sensors; devices come back in order
    of first appearance. ``config.retrain`` schedules refits (see :class:`Backtest`).
    """
    return Backtest(artifact, config, scorer, profile).run(table).devices


def evaluate_device(
    device_id: str,
    ts: np.ndarray,
    values: np.ndarray,
    artifact: Artifact,
    config: DetectorConfig,
    scorer: Scorer | None = None,
    profile: str = DEFAULT_PROFILE,
) -> DeviceEvaluation:
    """One device's rows (``values``: ``(rows, features)`` in the artifact's feature order, NaN
    a missing sensor) through the backtest, as a fleet of one."""
    names = artifact.metadata.feature_names
    table = pd.DataFrame(
        np.asarray(values, dtype=np.float64).reshape(-1, len(names)), columns=names
    )
    table.insert(0, "device_id", device_id)
    table.insert(0, "ts", np.asarray(ts, dtype=np.float64))
    devices = Backtest(artifact, config, scorer, profile).run(table).devices
    if devices:
        return devices[0]
    empty = np.empty(0)
    return DeviceEvaluation(device_id, empty, empty, empty, np.zeros(0, dtype=bool))


def row_frame(result: DeviceEvaluation) -> pd.DataFrame:
    """``scores.csv`` rows of one device: device, ts, score, threshold, firing."""
    return pd.DataFrame(
        {
            "device_id": result.device_id,
            "ts": result.ts,
            "score": result.scores,
            "threshold": result.thresholds,
            "firing": result.firing.astype(np.int8),
        }
    )
