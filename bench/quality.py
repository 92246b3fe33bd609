"""Detection quality on SKAB, TEP, SMD, the synthetic fleet and NAB, beside a PCA baseline.

For every dataset (:mod:`bench.datasets`, each by its README's protocol) and seed, the trainer
fits one artifact per task with the **untouched default** trainer config, and every stream is
backtested through ``detector evaluate``'s core (:mod:`detector.evaluate`: the daemon's admission,
windows, scoring, calibration, adaptation and alert rule) with the untouched default detector
config. Where a tuned configuration exists (SKAB: configs/skab.yaml, tuned on valve1 only) it is
run too. The classical baseline, PCA T²+Q with limits from held-out normal rows
(:class:`bench.baselines.PCABaseline`), is fitted in the same run on the same training rows.

Point-wise F1 / FAR / MAR and event metrics (alarm-onset precision, episode recall, alarms per
device, median delay) are pooled over a dataset's streams per seed, then averaged over seeds.
Every task's own training rows are also streamed through its model: a device that raises any
alarm there counts in ``train_alarm_devices``.

On the NAB development set (``nab-dev``) every method also gets NAB's standard score
(:mod:`bench.nab`, ``nab_standard``): the alarm onsets after each stream's probation are its
detections, the raw scores are summed over the set's streams per seed and normalised over the set
as NAB does (0 = no detection, 100 = every window caught on its first row), then averaged over
seeds; per NAB category in ``subsets`` (``None`` for artificialNoAnomaly, which has no window).

``--ensemble K`` also backtests a seed ensemble with the default configs: K models trained with
different seeds, each window's per-sensor errors averaged over them, the threshold calibrated on
the ensemble's own validation scores exactly as the trainer calibrates one model's.

``--variants FILE`` (YAML: name -> detector-config overrides, e.g. ``alerts: {adaptation:
{windows: 400}}``) evaluates more detector settings on the same trained artifacts; that is how
candidate defaults are compared across datasets without retraining.

Usage: ``python bench/quality.py --data ../shared/data [--datasets skab tep smd synthetic nab-dev]``
(or ``make bench-quality``). Writes ``bench/results/quality.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import nab
from bench.baselines import PCABaseline
from bench.datasets import (
    NAB_CATEGORIES,
    TEP_HARD_FAULTS,
    Dataset,
    Stream,
    Task,
    load,
    tep_fault_of,
)
from bench.report import plot_stream, revision
from detector.config import DetectorConfig, RetrainConfig
from detector.core.artifact import load_artifact
from detector.core.drift import DriftMonitor, reference_distribution
from detector.core.quality import summarise
from detector.core.scoring import Scorer
from detector.evaluate import Backtest, DeviceEvaluation, Refit
from detector.settings import validate_settings
from trainer.config import TrainerConfig
from trainer.data import load_normal_files, split_by_time, windows_of
from trainer.fit import TrainingError, calibrate, fit

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("skab", "tep", "smd", "synthetic", "nab-dev")
METRICS = ("f1", "far", "mar", "event_precision", "event_recall", "event_f1", "alarms_per_device")
# The opt-in ModelDrift warning's level on detector_score_drift (deploy/prometheus/rules-drift.yml).
MODEL_DRIFT_LEVEL = 0.25
# Keys of a dataset's summary that are not methods.
NOT_METHODS = ("fit", "normal_drift", "drift_false_share")
# Datasets scored by NAB's standard profile too (their streams' records carry NAB's inputs).
NAB_SCORED = ("nab-dev",)
# Published rows from each dataset's README (not measured here; protocols differ, see there).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "skab": {
        "Conv-AE (current leaderboard)": {"f1": 0.79, "far": 13.69, "mar": 17.77},
        "Conv-AE (README table)": {"f1": 0.78, "far": 13.55, "mar": 28.02},
        "T-squared+Q (PCA)": {"f1": 0.76, "far": 26.62, "mar": 24.92},
        "LSTM-AE": {"f1": 0.74, "far": 29.96, "mar": 25.92},
    },
    "tep": {
        "Deep AE, IDV(4) (PHM 2023)": {"recall": 1.00, "far": 3.1},
        "PCA SPE, IDV(4) (PHM 2023)": {"recall": 1.00, "far": 5.0},
        "Deep AE, IDV(6) (PHM 2023)": {"recall": 1.00, "far": 0.6},
    },
    "smd": {
        "PCA reconstruction error, 28 machines, oracle threshold (QuoVadisTAD)": {"f1": 0.572},
        "L2 norm of the input, same protocol": {"f1": 0.404},
    },
    "synthetic": {},
    # shared/data/nab-dev/README.md: the detectors' NAB result files scored by its protocol on
    # these 27 streams (NAB standard reproduced by bench/nab_check.py from NAB's per-file scores).
    "nab-dev": {
        "ARTime": {
            "nab_standard": 78.7,
            "event_precision": 0.45,
            "event_recall": 0.94,
            "event_f1": 0.605,
            "alarms_per_device": 6.5,
        },
        "Numenta HTM": {
            "nab_standard": 70.2,
            "event_precision": 0.50,
            "event_recall": 0.83,
            "event_f1": 0.626,
            "alarms_per_device": 6.1,
        },
        "KNN CAD": {
            "nab_standard": 63.2,
            "event_precision": 0.22,
            "event_recall": 0.87,
            "event_f1": 0.350,
            "alarms_per_device": 8.8,
        },
        "Twitter ADVec": {
            "nab_standard": 56.4,
            "event_precision": 0.40,
            "event_recall": 0.81,
            "event_f1": 0.535,
            "alarms_per_device": 10.2,
        },
        "Random Cut Forest": {
            "nab_standard": 48.3,
            "event_precision": 0.37,
            "event_recall": 0.79,
            "event_f1": 0.509,
            "alarms_per_device": 12.3,
        },
        "Windowed Gaussian": {
            "nab_standard": 47.3,
            "event_precision": 0.39,
            "event_recall": 0.75,
            "event_f1": 0.517,
            "alarms_per_device": 10.2,
        },
    },
}
# Which configs a dataset has besides the defaults: a tuned one, and the split it was tuned on.
TUNED = {"skab": ("configs/skab.yaml", "valve1")}


@dataclass(frozen=True)
class Job:
    """One task and seed: train its model(s), backtest its streams with every detector variant."""

    dataset: str
    data: Path | None
    task_index: int
    seed: int
    trainers: dict[str, dict[str, Any]]  # name -> trainer values; "default": configs/trainer.yaml
    detectors: dict[str, dict[str, Any]]  # variant name -> detector config values
    tuned: dict[str, Any] | None  # configs/skab.yaml, when the dataset has one
    work: Path
    plot_dir: Path | None
    ensemble: int = 1  # >1: also a seed ensemble of that many default models


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _trainer_config(
    values: dict[str, Any], task: Task, job: Job, name: str, seed: int | None = None
) -> TrainerConfig:
    train_csv = job.work / f"{job.dataset}-{job.task_index}-s{job.seed}.csv"
    if not train_csv.exists():
        task.train.to_csv(train_csv, index=False)
    values = json.loads(json.dumps(values))
    data = {"paths": [str(train_csv)], "time_column": "ts"}
    if "device_id" in task.train.columns:
        data["device_column"] = "device_id"
    values["data"] = data
    values["output"] = {"dir": str(job.work / f"models-{job.dataset}-{job.task_index}-{name}")}
    training = values.setdefault("training", {})
    training["seed"] = job.seed if seed is None else seed
    training["device"] = "cpu"
    return TrainerConfig.model_validate(values)


def _tuned_trainer(tuned: dict[str, Any], data: Path | None) -> dict[str, Any]:
    """A tuned benchmark config's trainer section, its reference recording found under ``data``."""
    values = json.loads(json.dumps(tuned["trainer"]))
    if tuned.get("reference") and data is not None:
        values.setdefault("scaling", {})["reference_paths"] = [str(data / tuned["reference"])]
    return values


class MeanScorer:
    """A seed ensemble: each window's per-sensor errors averaged over the members' models."""

    def __init__(self, members: list[Scorer]) -> None:
        self.members = members

    def sensor_errors(self, windows: np.ndarray) -> np.ndarray:
        """The members' per-sensor errors ``(batch, features)``, averaged."""
        return np.mean([m.sensor_errors(windows) for m in self.members], axis=0)

    def window_scores(self, errors: np.ndarray) -> np.ndarray:
        """One score per window, aggregated as the (shared) default spec says."""
        return self.members[0].window_scores(errors)


def _ensemble(task: Task, job: Job, first: Any) -> tuple[Any, MeanScorer]:
    """``job.ensemble`` default models (``first`` and more seeds) and their calibrated threshold."""
    artifacts = [first]
    for member in range(1, job.ensemble):
        seed = job.seed + 1000 * member
        config = _trainer_config(job.trainers["default"], task, job, f"ensemble{member}", seed)
        artifacts.append(load_artifact(fit(config, show_progress=False).path))
    scorer = MeanScorer([Scorer.from_artifact(a, "cpu", 4096) for a in artifacts])
    split = split_by_time(load_normal_files(config.data), config.training.validation_fraction)
    meta = first.metadata
    validation = windows_of(split.validation, meta.window_length, 1)
    train = windows_of(split.train, meta.window_length, config.window.stride)
    threshold = calibrate(
        scorer.window_scores(scorer.sensor_errors(validation)),
        scorer.window_scores(scorer.sensor_errors(train)),
        config.threshold,
    )
    metadata = meta.model_copy(update={"threshold": threshold})
    return dataclasses.replace(first, metadata=metadata), scorer


def _train_devices(task: Task) -> list[tuple[str, pd.DataFrame]]:
    if "device_id" not in task.train.columns:
        return [(f"{task.name}:train", task.train)]
    return [(f"{d}:train", rows) for d, rows in task.train.groupby("device_id", sort=False)]


def _evaluate(
    stream_id: str,
    frame: pd.DataFrame,
    artifact: Any,
    config: DetectorConfig,
    scorer: Scorer | MeanScorer,
) -> tuple[DeviceEvaluation, list[Refit]]:
    """One stream through ``detector evaluate``'s backtest, with ``config``'s retrain schedule.

    Refitted models score on the CPU with one thread, like ``scorer``: two workers share the two
    cores (``scoring`` settings change speed, never scores' meaning).
    """
    meta = artifact.metadata
    table = frame[["ts", *meta.feature_names]].assign(device_id=stream_id)
    scoring = config.scoring.model_copy(update={"device": "cpu", "threads": 1})
    config = config.model_copy(update={"scoring": scoring})
    result = Backtest(artifact, config, scorer).run(table)
    return result.devices[0], result.refits


def _stream_record(stream: Stream, flags: np.ndarray, nab_inputs: bool = False) -> dict[str, Any]:
    """A stream's scored labels and flags; with ``nab_inputs`` also NAB's inputs (``"nab"``).

    NAB's inputs are on the whole stream: its length, the first scored row, the windows as row
    ranges and the detections, the alarm onsets after the probation (an alarm already running
    when scoring starts is no detection).
    """
    scored = slice(stream.scored_from, None)
    labels = stream.frame["label"].to_numpy(dtype=np.int8)
    record: dict[str, Any] = {
        "device": stream.device_id,
        "labels": labels[scored],
        "flags": np.asarray(flags, dtype=np.int8)[scored],
    }
    if nab_inputs:
        record["nab"] = {
            "rows": len(labels),
            "probation": stream.scored_from,
            "windows": nab.windows_from_labels(labels),
            "detections": nab.onsets(np.asarray(flags, dtype=np.int8), stream.scored_from),
        }
    return record


def _psi_against(reference_scores: np.ndarray, live: np.ndarray) -> float:
    """PSI of ``live`` against the decile bins of ``reference_scores`` (NaN when either is empty)."""
    if not len(reference_scores) or not len(live):
        return float("nan")
    edges, shares = reference_distribution(reference_scores)
    monitor = DriftMonitor(edges, shares, len(live), len(live))
    monitor.observe(live)
    return monitor.psi()


def _normal_drift(
    artifact: Any, streams: list[Stream], evaluations: list[DeviceEvaluation]
) -> dict[str, float]:
    """Drift figures on the streams' labelled-normal windows of calm devices.

    ``validation``: what ``detector_score_drift`` would read on this data with nothing
    anomalous in it, the pooled scores against the artifact's validation distribution.
    ``live_baseline``: the same PSI with the first half of each stream's normal scores as the
    reference instead (a reference taken from live traffic after the model went in).
    ``headroom_used``: (live p90 - validation p90) / (threshold - validation p90), with the
    validation p90 the top decile edge of the reference (lower where deciles tie): how much of
    the margin between normal scores and the threshold the live normal scores took up.
    """
    reference = artifact.metadata.score_distribution
    firsts, seconds, pooled = [], [], []
    for stream, evaluation in zip(streams, evaluations, strict=True):
        scored = slice(stream.scored_from, None)
        normal = stream.frame["label"].to_numpy()[scored] == 0
        calm = ~np.asarray(evaluation.firing, dtype=bool)[scored]
        window_scores = np.asarray(evaluation.scores)[scored]
        kept = window_scores[normal & calm & np.isfinite(window_scores)]
        pooled.append(kept)
        firsts.append(kept[: len(kept) // 2])
        seconds.append(kept[len(kept) // 2 :])
    live = np.concatenate(pooled) if pooled else np.empty(0)
    figures = {
        "validation": float("nan"),
        "live_baseline": float("nan"),
        "headroom_used": float("nan"),
        "log_median_ratio": float("nan"),
    }
    if reference is None or not len(live):
        return figures
    monitor = DriftMonitor(reference.edges, reference.shares, len(live), len(live))
    monitor.observe(live)
    figures["validation"] = monitor.psi()
    figures["live_baseline"] = _psi_against(np.concatenate(firsts), np.concatenate(seconds))
    median = artifact.metadata.threshold.error_summary.get("p50", 0.0)
    if median > 0:
        figures["log_median_ratio"] = float(np.log(max(np.median(live), 1e-300) / median))
    validation_p90 = reference.edges[-1] if len(reference.edges) else float("nan")
    margin = artifact.metadata.threshold.value - validation_p90
    if margin > 0:
        figures["headroom_used"] = float((np.quantile(live, 0.9) - validation_p90) / margin)
    return figures


def _level_ratio(stream: Stream, evaluation: DeviceEvaluation, artifact: Any) -> float:
    """The median level a stream's scored windows were judged by / its model's validation median.

    How far the level a device is judged by sits from the scores the model gave unseen normal
    windows: near the validation quantile's ratio when the artifact's threshold judges, and
    spread out when a device's own scores set its level.
    """
    levels = np.asarray(evaluation.thresholds)[stream.scored_from :]
    levels = levels[np.isfinite(levels)]
    median = artifact.metadata.threshold.error_summary.get("p50", 0.0)
    if not len(levels) or median <= 0:
        return float("nan")
    return float(np.median(levels) / median)


def _stream_spread(records: list[dict[str, Any]]) -> dict[str, float]:
    """Streams that never alarm, deaf streams and the level ratio's spread over streams."""
    silent = [not np.any(r["flags"]) for r in records]
    normal_flagged = [
        float(np.mean(r["flags"][r["labels"] == 0])) for r in records if np.any(r["labels"] == 0)
    ]
    refits = [r["refits"] for r in records if "refits" in r]
    with_episodes = [r for r in records if np.any(r["labels"])]
    deaf = [not np.any(r["flags"].astype(bool) & r["labels"].astype(bool)) for r in with_episodes]
    ratios = np.asarray([r.get("level_ratio", np.nan) for r in records], dtype=np.float64)
    ratios = ratios[np.isfinite(ratios)]
    spread: dict[str, float] = {
        "silent_share": float(np.mean(silent)),
        "deaf_share": float(np.mean(deaf)) if deaf else 0.0,
        # Labelled-normal rows a stream flags: no stream should page on most of its normal.
        "normal_flagged_max": max(normal_flagged, default=0.0),
        "normal_flagged_over_20_share": float(np.mean(np.asarray(normal_flagged) > 0.2))
        if normal_flagged
        else 0.0,
    }
    if refits:
        count = sum(r["count"] for r in refits)
        spread["refits_per_stream"] = count / len(refits)
        spread["refits_swapped_share"] = sum(r["swapped"] for r in refits) / max(count, 1)
        spread["refit_seconds_mean"] = sum(r["seconds"] for r in refits) / max(count, 1)
        spread["refit_failed"] = float(sum(r["failed"] for r in refits))
    if len(ratios):
        for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
            spread[f"level_ratio_{name}"] = float(np.quantile(ratios, q))
        spread["level_ratio_max_over_min"] = float(ratios.max() / max(ratios.min(), 1e-300))
    return spread


def run_job(job: Job) -> dict[str, Any]:
    """Train one task's model(s) for one seed and backtest every stream with each method."""
    import torch

    # Two workers share two cores: more threads per worker only add contention.
    torch.set_num_threads(1)
    dataset = load(job.dataset, job.data)
    task = dataset.tasks[job.task_index]
    out: dict[str, Any] = {"dataset": job.dataset, "task": task.name, "group": task.group}
    out["seed"] = job.seed
    nab_inputs = job.dataset in NAB_SCORED
    methods: dict[str, list[dict[str, Any]]] = {}
    train_alarms: dict[str, list[str]] = {}
    fits: dict[str, dict[str, float]] = {}
    trainers = dict(job.trainers)
    if job.tuned is not None:
        trainers["tuned"] = _tuned_trainer(job.tuned, job.data)
    for trainer_name, trainer_values in trainers.items():
        config = _trainer_config(trainer_values, task, job, trainer_name)
        try:
            result = fit(config, show_progress=False)
        except TrainingError as exc:
            # A candidate that cannot train on this data is reported, not fatal to the run.
            fits[trainer_name] = {"error": str(exc)}
            continue
        artifact = load_artifact(result.path)
        validation = artifact.metadata.validation
        fits[trainer_name] = {
            "seconds": result.seconds,
            "epochs": float(result.epochs),
            "validation_error_share": float(validation.get("validation_error_share", np.nan)),
            "train_flag_rate": float(validation.get("train_flag_rate", np.nan)),
        }
        scorer = Scorer.from_artifact(artifact, "cpu", 4096)
        if trainer_name == "tuned":
            assert job.tuned is not None
            variants = {
                "tuned": validate_settings(
                    DetectorConfig,
                    {"model": {"path": str(result.path)}, "alerts": job.tuned["alerts"]},
                )
            }
        else:
            variants = {
                name: validate_settings(
                    DetectorConfig, {**values, "model": {"path": str(result.path)}}
                )
                for name, values in job.detectors.items()
            }
            if trainer_name != "default":
                variants = {f"{trainer_name}+{name}": d for name, d in variants.items()}
        backtests = [(name, d, artifact, scorer) for name, d in variants.items()]
        if trainer_name == "default" and job.ensemble > 1:
            ensemble, members = _ensemble(task, job, artifact)
            backtests.append((f"ensemble{job.ensemble}", variants["default"], ensemble, members))
        for name, detector, model, model_scorer in backtests:
            records = []
            evaluations = []
            for i, stream in enumerate(task.streams):
                evaluation, refits = _evaluate(
                    stream.device_id, stream.frame, model, detector, model_scorer
                )
                evaluations.append(evaluation)
                record = _stream_record(stream, evaluation.firing, nab_inputs)
                record["level_ratio"] = _level_ratio(stream, evaluation, model)
                if detector.retrain.enabled:
                    record["refits"] = {
                        "count": len(refits),
                        "swapped": sum(refit.promoted for refit in refits),
                        "failed": sum(refit.version is None for refit in refits),
                        "seconds": sum(refit.seconds for refit in refits),
                    }
                records.append(record)
                if job.plot_dir is not None and name == "default" and i == _plot_stream(task):
                    _plot(job, task, stream, evaluation)
            methods[name] = records
            if name == "default":
                out["normal_drift"] = _normal_drift(model, task.streams, evaluations)
            # A model's own training rows, judged by it as trained: no refits there.
            frozen = detector.model_copy(update={"retrain": RetrainConfig()})
            train_alarms[name] = [
                device
                for device, rows in _train_devices(task)
                if _evaluate(device, rows, model, frozen, model_scorer)[0].firing.any()
            ]
    sensors = list(dataset.sensors)
    baseline = PCABaseline.fit(task.train[sensors].to_numpy(dtype=np.float64))
    methods["baseline"] = [
        _stream_record(s, baseline.flags(s.frame[sensors].to_numpy(dtype=np.float64)), nab_inputs)
        for s in task.streams
    ]
    train_alarms["baseline"] = [
        device
        for device, rows in _train_devices(task)
        if baseline.flags(rows[sensors].to_numpy(dtype=np.float64)).any()
    ]
    out["methods"] = methods
    out["train_alarms"] = train_alarms
    out["train_devices"] = len(_train_devices(task))
    out["fits"] = fits
    return out


def _plot_stream(task: Task) -> int:
    """The stream to plot: the first with a labelled anomaly."""
    return next((i for i, s in enumerate(task.streams) if s.frame["label"].any()), 0)


def _plot(job: Job, task: Task, stream: Stream, evaluation: DeviceEvaluation) -> None:
    assert job.plot_dir is not None
    plot_stream(
        job.plot_dir / f"{job.dataset}-{task.name.replace('/', '_')}.png",
        f"{job.dataset} {task.name} / {stream.device_id} (seed {job.seed}, default configs)",
        stream.frame["label"].to_numpy(),
        evaluation.scores,
        evaluation.thresholds,
        evaluation.firing,
        split_row=stream.scored_from,
    )


def _pool(records: list[dict[str, Any]]) -> dict[str, Any]:
    pooled = summarise([(r["labels"], r["flags"]) for r in records])
    if records and all("nab" in r for r in records):
        # NAB standard over these streams, normalised over them as one set.
        pooled.update(
            nab.score_set(
                nab.score_stream(
                    r["nab"]["windows"],
                    r["nab"]["detections"],
                    r["nab"]["rows"],
                    r["nab"]["probation"],
                )
                for r in records
            ).as_dict()
        )
    return pooled


def _seed_mean(values: list[Any]) -> float | None:
    """The mean over seeds; ``None`` when a seed has no value (NAB standard without windows)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def _drift_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each drift figure on labelled-normal data over tasks and seeds: median, max, shares."""
    summary: dict[str, Any] = {}
    for figure, level in (
        ("validation", MODEL_DRIFT_LEVEL),
        ("live_baseline", 0.25),
        ("headroom_used", 1.0),
        ("log_median_ratio", 1.0),
    ):
        values = np.asarray(
            [
                r["normal_drift"][figure]
                for r in results
                if np.isfinite(r.get("normal_drift", {}).get(figure, np.nan))
            ]
        )
        if not len(values):
            summary[figure] = {"tasks": 0}
            continue
        summary[figure] = {
            "tasks": len(values),
            "median": float(np.median(values)),
            "p95": float(np.quantile(values, 0.95)),
            "max": float(np.max(values)),
            "level": level,
            "share_over_level": float(np.mean(values > level)),
        }
    return summary


def _summarise_dataset(
    name: str, results: list[dict[str, Any]], seeds: list[int]
) -> dict[str, Any]:
    """Per method: metrics pooled over streams per seed, their mean over seeds, and subsets."""
    mine = [r for r in results if r["dataset"] == name]
    method_names = list(dict.fromkeys(m for r in mine for m in r["methods"]))
    subsets: dict[str, Any] = {"all": lambda _r, _d: True}
    if name == "skab":
        subsets["valve1 (tuning split)"] = lambda r, _d: r["group"] == "valve1"
        subsets["held-out (valve2, other)"] = lambda r, _d: r["group"] != "valve1"
    if name in NAB_SCORED:
        order = {g: i for i, g in enumerate(NAB_CATEGORIES)}
        for group in sorted(
            {r["group"] for r in mine}, key=lambda g: (order.get(g, len(order)), g)
        ):
            subsets[group] = lambda r, _d, group=group: r["group"] == group
    metrics = (*METRICS, "nab_standard") if name in NAB_SCORED else METRICS
    if name == "tep":
        subsets["without faults 3, 9, 15"] = lambda _r, d: tep_fault_of(d) not in TEP_HARD_FAULTS
        subsets["faults 3, 9, 15"] = lambda _r, d: (
            tep_fault_of(d) in TEP_HARD_FAULTS or not (tep_fault_of(d))
        )
    summary: dict[str, Any] = {}
    for method in method_names:
        per_seed = []
        for seed in seeds:
            runs = [r for r in mine if r["seed"] == seed and method in r["methods"]]
            entry: dict[str, Any] = {"seed": seed}
            for subset, keep in subsets.items():
                records = [s for r in runs for s in r["methods"][method] if keep(r, s["device"])]
                entry[subset] = _pool(records)
            alarmed = sum(len(r["train_alarms"][method]) for r in runs)
            devices = sum(r["train_devices"] for r in runs)
            entry["train_alarm_devices"] = alarmed
            entry["train_devices"] = devices
            entry["train_alarm_share"] = alarmed / max(devices, 1)
            entry["streams"] = _stream_spread([s for r in runs for s in r["methods"][method]])
            per_seed.append(entry)
        block = {key: _seed_mean([s["all"][key] for s in per_seed]) for key in metrics}
        block["train_alarm_share"] = float(np.mean([s["train_alarm_share"] for s in per_seed]))
        block["streams"] = {
            key: _seed_mean([s["streams"].get(key, np.nan) for s in per_seed])
            for key in per_seed[0]["streams"]
        }
        block["subsets"] = {
            subset: {key: _seed_mean([s[subset][key] for s in per_seed]) for key in metrics}
            for subset in subsets
        }
        block["per_seed"] = per_seed
        if name == "tep":
            block["per_fault_recall"] = _tep_per_fault(mine, method)
        summary[method] = block
    summary["normal_drift"] = {
        group: _drift_summary([r for r in mine if group in ("all", r["group"])])
        for group in ["all", *sorted({r["group"] for r in mine})]
    }
    # What ModelDrift would do on this dataset's normal data: the share of tasks it pages on.
    summary["drift_false_share"] = summary["normal_drift"]["all"]["validation"].get(
        "share_over_level"
    )
    fits = [r["fits"] for r in mine]
    summary["fit"] = {}
    for trainer in dict.fromkeys(t for f in fits for t in f):
        done = [f[trainer] for f in fits if trainer in f and "error" not in f[trainer]]
        failed = sum(1 for f in fits if "error" in f.get(trainer, {}))
        summary["fit"][trainer] = {
            key: float(np.mean([d[key] for d in done])) if done else None
            for key in ("seconds", "epochs", "validation_error_share", "train_flag_rate")
        }
        summary["fit"][trainer]["failed_fits"] = failed
    return summary


def _tep_per_fault(results: list[dict[str, Any]], method: str) -> dict[str, float]:
    """Fault detection rate (recall over samples 161-960) per fault, mean over seeds; FAR on d00."""
    rates: dict[str, list[float]] = {}
    for r in results:
        for s in r["methods"].get(method, []):
            fault = tep_fault_of(s["device"])
            flags = s["flags"].astype(bool)
            if fault == 0:
                rates.setdefault("far_d00", []).append(100 * float(flags.mean()))
            else:
                faulty = s["labels"].astype(bool)
                rates.setdefault(f"{fault:02d}", []).append(100 * float(flags[faulty].mean()))
    return {k: float(np.mean(v)) for k, v in sorted(rates.items())}


def _cells(metrics: dict[str, float]) -> list[str]:
    return [
        f"{metrics['f1']:.3f}",
        f"{metrics['far']:.2f}",
        f"{metrics['mar']:.2f}",
        f"{metrics['event_precision']:.2f}",
        f"{metrics['event_recall']:.2f}",
        f"{metrics['event_f1']:.2f}",
        f"{metrics['alarms_per_device']:.1f}",
    ]


def _nab_cell(metrics: dict[str, Any]) -> str:
    """NAB standard for the table: blank where the dataset has none, "n/a" without windows."""
    if "nab_standard" not in metrics:
        return ""
    return "n/a" if metrics["nab_standard"] is None else f"{metrics['nab_standard']:.1f}"


def _table(datasets: dict[str, Any]) -> str:
    line = (
        "| {:<10} | {:<22} | {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>6} | {:>8} | {:>6} "
        "| {:>5} |"
    )
    header = ("dataset", "method", "F1", "FAR %", "MAR %", "ev P", "ev R", "ev F1", "alarms/d")
    out = [line.format(*header, "train", "NAB")]
    for name, summary in datasets.items():
        for method, block in summary.items():
            if method in NOT_METHODS:
                continue
            train = f"{100 * block['train_alarm_share']:.0f} %"
            out.append(line.format(name, method, *_cells(block), train, _nab_cell(block)))
            for subset, metrics in block["subsets"].items():
                if subset != "all":
                    cells = _cells(metrics)
                    out.append(line.format("", f"  {subset}"[:22], *cells, "", _nab_cell(metrics)))
        for method, block in summary.items():
            streams = block.get("streams") if method not in NOT_METHODS else None
            if streams and "refits_per_stream" in streams:
                out.append(
                    f"|            | refits ({method}): {streams['refits_per_stream']:.1f} per "
                    f"stream, {100 * streams['refits_swapped_share']:.0f} % swapped in, "
                    f"{streams['refit_seconds_mean']:.1f} s each, "
                    f"{streams['refit_failed']:.0f} failed"
                )
            if streams and "normal_flagged_max" in streams:
                out.append(
                    f"|            | labelled-normal rows flagged ({method}): worst stream "
                    f"{100 * streams['normal_flagged_max']:.0f} %, "
                    f"{100 * streams['normal_flagged_over_20_share']:.0f} % of streams over 20 %"
                )
            if streams and "level_ratio_p50" in streams:
                out.append(
                    f"|            | streams ({method}): {100 * streams['silent_share']:.0f} % "
                    f"never alarm, {100 * streams['deaf_share']:.0f} % of those with episodes "
                    f"never fire in one; judged level / validation median p10 "
                    f"{streams['level_ratio_p10']:.3g}, p50 {streams['level_ratio_p50']:.3g}, "
                    f"p90 {streams['level_ratio_p90']:.3g}, max/min "
                    f"{streams['level_ratio_max_over_min']:.3g}"
                )
        for label, row in PUBLISHED.get(name, {}).items():
            cells = ", ".join(f"{k} {v:g}" for k, v in row.items())
            out.append(f"|            | published: {label}: {cells}")
        for group, drift in summary["normal_drift"].items():
            cells = [
                f"{figure} median {d['median']:.3f} (max {d['max']:.3f}, "
                f"{100 * d['share_over_level']:.0f} % > {d['level']:g})"
                for figure, d in drift.items()
                if d["tasks"]
            ]
            if cells:
                out.append(f"|            | drift on normal data ({group}): " + "; ".join(cells))
        for trainer, fit_info in summary["fit"].items():
            if fit_info["seconds"] is None:
                out.append(f"|            | fit ({trainer}): every fit failed")
                continue
            out.append(
                f"|            | fit ({trainer}): {fit_info['seconds']:.1f} s, "
                f"{fit_info['epochs']:.0f} epochs, validation error "
                f"{100 * fit_info['validation_error_share']:.0f} % of variance, "
                f"{100 * fit_info['train_flag_rate']:.2f} % of training windows flagged"
            )
    return "\n".join(out)


def _jsonable(results: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(results, default=lambda v: v.tolist()))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and writes the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="directory holding skab/, tep/, smd/ and nab-dev/")  # fmt: skip
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trainer", type=Path, default=ROOT / "configs" / "trainer.yaml")
    parser.add_argument("--detector", type=Path, default=ROOT / "configs" / "detector.yaml")
    parser.add_argument("--variants", type=Path, help="YAML: name -> detector-config overrides")
    parser.add_argument(
        "--trainer-variants", type=Path, help="YAML: name -> trainer-config overrides"
    )
    parser.add_argument("--ensemble", type=int, default=1,
                        help="also a seed ensemble of this many default models")  # fmt: skip
    parser.add_argument("--no-tuned", action="store_true", help="skip the tuned configs")
    parser.add_argument("--plot", type=Path, help="one PNG per dataset (first seed) here")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    args = parser.parse_args(argv)

    trainer = yaml.safe_load(args.trainer.read_text())
    trainer = {k: v for k, v in trainer.items() if k not in ("data", "output")}
    detector = yaml.safe_load(args.detector.read_text())
    detector = {k: v for k, v in detector.items() if k in ("windows", "scoring", "alerts")}
    trainers = {"default": trainer}
    if args.trainer_variants:
        for name, override in (yaml.safe_load(args.trainer_variants.read_text()) or {}).items():
            trainers[str(name)] = _deep_merge(trainer, override)
    detectors = {"default": detector}
    if args.variants:
        for name, override in (yaml.safe_load(args.variants.read_text()) or {}).items():
            detectors[str(name)] = _deep_merge(detector, override)
    started = time.monotonic()
    datasets: dict[str, Dataset] = {}
    for name in args.datasets:
        try:
            datasets[name] = load(name, None if name == "synthetic" else args.data / name)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="quality-bench-") as work:
        jobs = []
        for name, dataset in datasets.items():
            tuned = None
            if name in TUNED and not args.no_tuned:
                tuned = yaml.safe_load((ROOT / TUNED[name][0]).read_text())
            for seed in args.seeds:
                for index in range(len(dataset.tasks)):
                    plot = args.plot if seed == args.seeds[0] and index == 0 else None
                    data = None if name == "synthetic" else args.data / name
                    jobs.append(
                        Job(
                            name,
                            data,
                            index,
                            seed,
                            trainers,
                            detectors,
                            tuned,
                            Path(work),
                            plot,
                            args.ensemble,
                        )
                    )
        # The largest jobs first, so that two workers finish together.
        jobs.sort(key=lambda j: -len(datasets[j.dataset].tasks[j.task_index].train))
        results = []
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            for done, future in enumerate(as_completed(pool.submit(run_job, j) for j in jobs)):
                results.append(future.result())
                last = results[-1]
                print(
                    f"[{done + 1}/{len(jobs)} jobs, {time.monotonic() - started:.0f} s] "
                    f"{last['dataset']} {last['task']} seed {last['seed']}",
                    file=sys.stderr,
                    flush=True,
                )
    wall = time.monotonic() - started
    summary = {name: _summarise_dataset(name, results, args.seeds) for name in datasets}
    print(_table(summary))
    print(f"wall time {wall:.0f} s for {len(jobs)} jobs ({args.workers} workers)")
    report = {
        "datasets": summary,
        "published": {name: PUBLISHED[name] for name in datasets},
        "seeds": args.seeds,
        "configs": {
            "trainer": str(args.trainer),
            "trainer_variants": trainers,
            "detector": str(args.detector),
            "detector_variants": detectors,
            "tuned": {k: {"config": v[0], "tuned_on": v[1]} for k, v in TUNED.items()},
            "ensemble": args.ensemble,
            "baseline": "PCA T2+Q, 95 % variance, limits at the 99 % quantile of held-out normal",
        },
        "wall_seconds": wall,
        "revision": revision(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".json.tmp")
    partial.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    partial.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
