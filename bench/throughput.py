"""Throughput, latency and memory of the detector daemon on one embedded broker (issue 4).

In one run, on one broker, on the same topic and data (``--devices`` devices x 8 sensors, one JSON
reading per message as in the README), round after round:

1. **raw consume**: kafka-python with the daemon's consumer settings, no processing, and
   confluent-kafka's consumer beside it;
2. **pipeline**: the daemon's own :class:`~detector.daemon.Detector` in this process, with a real
   consumer and alert producer (consume -> parse -> window -> score -> alert -> commit), stride 1,
   with the ``--window`` model (T=64, hidden 64, latent 16 by default: the ``summary`` keys) and
   with the default model size of configs/trainer.yaml (``summary.default_model``), on
   kafka-python; then both sizes on each client (``kafka.client``), each against
   min(the faster client's raw consume, the bare model) (``summary.clients.<client>``);
3. **no-op scorer**: the same pipeline with a scorer that returns zero errors, the cost of
   everything but the model (``summary.noop_scorer``);
4. **bare model**: :meth:`Scorer.sensor_errors` on windows of the same data at the daemon's batch
   size on the same device, for each model size;

then each stage of :mod:`detector.stages` in this process with no Kafka, µs per record
(``stages``: with a no-op scorer and with the default model size, and the whole in-process
pipeline beside them), whether scoring on a worker thread could overlap ingest (the bare model and the daemon's
parser timed alone and on two threads at once), the pipeline on gateway batches (``--batched``
readings per message, readings/s), the latency from a reading's produce time to its alert under
paced loads at fractions (1/2, 1/4) of the measured kafka-python pipeline rate, on each client
(the daemon as a child process, as deployed), beside the same load's send -> receive latency
through a bare consumer (``latency_floor``: what the broker and the load generator take before
any consumer code runs), each on a fresh embedded broker, and the resident memory of the daemon's state for ``--memory-devices`` devices.
Rates are taken from the first record in hand to the last one processed; they are compared as
ratios within a round because the machine may be shared. Writes ``bench/results/throughput.json``.

Usage: ``python bench/throughput.py [--quick]`` (or ``make bench-throughput``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from detector.clients import Consumer, Partition, Record, open_producer
from detector.clients.kafka_python import KafkaPythonConsumer, RebalanceListener, build_consumer
from detector.config import DetectorConfig, KafkaConfig, load_config
from detector.core.artifact import Artifact, load_artifact
from detector.core.readings import ReadingParser
from detector.core.routing import DEFAULT_PROFILE
from detector.core.scoring import Scorer
from detector.core.windows import sliding_windows
from detector.daemon import Detector, tune_garbage_collector
from detector.kafka_io import Publisher
from detector.lane import Lane, Model
from detector.logs import RateLimitedLog
from detector.metrics import DetectorMetrics
from detector.pipeline import RECORDS_PER_CHUNK, Pipeline
from detector.reload import load_model
from detector.sensor import MetricsSensor
from detector.stages import emit
from detector.stages.admit import admit
from detector.stages.decode import decode
from detector.stages.judge import judge
from detector.stages.route import route
from detector.stages.score import score
from detector_devtools.embedded_broker import (
    EmbeddedBroker,
    create_topics,
    free_port,
    wait_for_port,
)
from detector_devtools.launch import daemon_env, spawn_daemon
from detector_devtools.replay import encode_messages, interleave
from detector_devtools.synthetic import Fleet, generate_fleet, split_at, write_fleet
from trainer.config import TrainerConfig
from trainer.fit import fit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "throughput.json"
NORMAL_STEPS = 1500  # training rows per device, before the streamed part
LARGE_MODEL = {"hidden_size": 64, "latent_size": 16, "num_layers": 1}  # with --window (64)


def _revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def _rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def _live_rss_bytes() -> int:
    """RSS once garbage is collected and glibc handed its free heap pages back to the kernel.

    Otherwise freed but cached allocator memory (records parsed and dropped, batches scored)
    would count as if the daemon kept it.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _rss_bytes()


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


# --- data and model -----------------------------------------------------------------------------


def make_fleet(devices: int, stream_steps: int, seed: int) -> tuple[Fleet, Fleet]:
    """(normal training part, streamed part with anomalies) of one synthetic fleet."""
    episodes = max(1, min(4, (stream_steps * 3 // 4) // 250))
    fleet = generate_fleet(
        devices,
        NORMAL_STEPS + stream_steps,
        seed=seed,
        anomalies_per_device=episodes,
        quiet_steps=NORMAL_STEPS,
    )
    return split_at(fleet, NORMAL_STEPS)


def train_model(
    normal: Fleet, window: int, workdir: Path, model: dict[str, int] | None = None
) -> Path:
    """A quickly trained artifact; ``model``: the architecture (default: configs/trainer.yaml's)."""
    paths = write_fleet(normal, workdir / "data", "normal")
    if model is None:
        model = yaml.safe_load((ROOT / "configs" / "trainer.yaml").read_text())["model"]
    name = f"models-T{window}-h{model['hidden_size']}"
    config = TrainerConfig.model_validate(
        {
            "data": {"paths": [str(paths["readings"])]},
            "window": {"length": window, "stride": 4},
            "model": model,
            "training": {
                "epochs": 4,
                "batch_size": 256,
                "learning_rate": 0.005,
                "patience": 2,
                "max_train_windows": 4000,
                # A quick fit: the bench times scoring, not how well the model learned.
                "min_steps": 64,
                "device": "cpu",
            },
            "threshold": {"method": "quantile", "quantile": 0.995, "margin": 1.0},
            "output": {"dir": str(workdir / name)},
        }
    )
    return fit(config, show_progress=False).path


class NoopScorer(Scorer):
    """Scores nothing: every window's errors are zero, so a pipeline with it costs all but the model."""

    def sensor_errors(self, windows: np.ndarray) -> np.ndarray:
        """Zero errors ``(batch, features)``."""
        return np.zeros((len(windows), windows.shape[-1]), dtype=np.float32)

    def warm_up(self, window_length: int, cancel: threading.Event | None = None) -> None:
        """Nothing to warm up."""


def produce_all(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Send every message as fast as possible and wait for the acks."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=1 << 20)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


# --- the three rates ------------------------------------------------------------------------------


def daemon_config(
    bootstrap: str,
    topic: str,
    alerts: str,
    model: Path,
    args: argparse.Namespace,
    client: str = "kafka-python",
) -> DetectorConfig:
    """configs/detector.yaml (the daemon's defaults) pointed at the bench topics and model."""
    values = load_config(ROOT / "configs" / "detector.yaml").model_dump()
    kafka = values["kafka"]
    kafka.update(
        client=client,
        bootstrap_servers=[bootstrap],
        readings_topics=[topic],
        alerts_topic=alerts,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        sasl_password=None,
    )
    values["model"]["path"] = model
    values["windows"]["stride"] = 1
    values["scoring"].update(
        device=args.device, max_batch_size=args.batch_size, threads=args.threads
    )
    return DetectorConfig.model_validate(values)


class _AssignmentClock(ConsumerRebalanceListener):
    """Notes when the consumer got its partitions: the clock of a rate run starts there."""

    def __init__(self) -> None:
        self.assigned_at = 0.0

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Nothing to do: every run is one group member from start to end."""

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start the clock at the first assignment."""
        if assigned and not self.assigned_at:
            self.assigned_at = time.perf_counter()


def measure_raw(config: DetectorConfig, expected: int) -> dict[str, float]:
    """kafka-python alone, with the daemon's consumer settings: records/s, no processing."""
    consumer = build_consumer(config.kafka)
    clock = _AssignmentClock()
    consumer.subscribe(config.kafka.readings_topics, listener=clock)
    received = 0
    finished = 0.0
    try:
        while received < expected:
            received += sum(len(batch) for batch in consumer.poll(timeout_ms=1000).values())
            finished = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    seconds = finished - clock.assigned_at
    return {"records": received, "seconds": seconds, "rate": received / seconds}


def measure_raw_confluent(config: DetectorConfig, expected: int) -> dict[str, float]:
    """confluent-kafka's consumer (librdkafka) alone on the same topic: records/s, no processing.

    Beside :func:`measure_raw` in the same round, to say whether kafka-python's consume is what
    limits the daemon (issue 20 item 7). Values are taken out of each message, as the daemon
    would need them. The clock starts at the first assignment, as for kafka-python.
    """
    from confluent_kafka import Consumer  # the dev extra; the daemon never imports it

    kafka = config.kafka
    assigned_at: list[float] = []
    consumer = Consumer(
        {
            "bootstrap.servers": ",".join(kafka.bootstrap_servers),
            "group.id": f"bench-confluent-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": kafka.session_timeout_ms,
            "max.poll.interval.ms": kafka.max_poll_interval_ms,
            "fetch.wait.max.ms": kafka.fetch_max_wait_ms,
        }
    )

    def on_assign(_: Any, partitions: list[Any]) -> None:
        if partitions:
            assigned_at.append(time.perf_counter())

    consumer.subscribe(kafka.readings_topics, on_assign=on_assign)
    received = 0
    finished = 0.0
    try:
        while received < expected:
            for message in consumer.consume(num_messages=kafka.max_poll_records, timeout=1.0):
                if message.error() is None:
                    message.value()
                    received += 1
            finished = time.perf_counter()
    finally:
        consumer.close()
    seconds = finished - assigned_at[0]
    return {"records": received, "seconds": seconds, "rate": received / seconds}


class _FirstAssignment:
    """When the daemon's consumer was first given partitions: a rate run's clock starts there."""

    at = 0.0

    @classmethod
    def note(cls, partitions: Sized) -> None:
        """Start the clock at the first non-empty assignment."""
        if len(partitions) and not cls.at:
            cls.at = time.perf_counter()


class _TimedRebalance(RebalanceListener):
    """The daemon's kafka-python rebalance listener, timing the first assignment."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start the clock, then do what the daemon does."""
        _FirstAssignment.note(assigned)
        await super().on_partitions_assigned(assigned)


class _TimedKafkaPython(KafkaPythonConsumer):
    """The daemon's kafka-python consumer, its first assignment timed."""

    listener_type = _TimedRebalance


def _timed_consumer(config: KafkaConfig) -> Consumer:
    """The daemon's consumer for ``config.client``, its first assignment timed."""
    if config.client == "kafka-python":
        return _TimedKafkaPython(config)
    from detector.clients.confluent import ConfluentConsumer

    class _TimedConfluent(ConfluentConsumer):
        def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
            _FirstAssignment.note(partitions)
            super()._on_assign(consumer, partitions)

    return _TimedConfluent(config)


class _TimedDetector(Detector):
    """The daemon's detector, stopped once ``expected`` records are processed and committed."""

    def __init__(self, *args: Any, expected: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected = expected
        self.finished = 0.0

    def process(self, records: Mapping[Partition, Sequence[Record]]) -> None:
        """The daemon's own ``process``; the clock stops once the last record is committed."""
        super().process(records)
        if self.records_consumed >= self.expected and not self.finished:
            self.flush()
            self.commit(force=True)
            self.finished = time.perf_counter()
            self.stop()


def _total(metrics: DetectorMetrics, sample: str, **labels: str) -> float:
    """The sum of ``sample`` over every series whose labels include ``labels`` (0 if none)."""
    return sum(
        found.value
        for family in metrics.registry.collect()
        for found in family.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


def measure_pipeline(
    config: DetectorConfig, artifact: Artifact, scorer: Scorer, expected: int
) -> dict[str, float]:
    """The daemon's detector end to end: records/s, windows scored and alerts published."""
    metrics = DetectorMetrics()
    publisher = Publisher(lambda: open_producer(config.kafka))
    _FirstAssignment.at = 0.0
    consumer = _timed_consumer(config.kafka)
    detector = _TimedDetector(
        config,
        {DEFAULT_PROFILE: Model(artifact, scorer)},
        consumer,
        publisher,
        metrics,
        expected=expected,
    )
    try:
        detector.run()
    finally:
        publisher.close()
    seconds = detector.finished - _FirstAssignment.at
    batches = _total(metrics, "detector_batch_size_count") or 1.0
    readings = _total(metrics, "detector_readings_accepted_total")
    windows = _total(metrics, "detector_windows_scored_total")
    return {
        "records": detector.records_consumed,
        "seconds": seconds,
        "rate": detector.records_consumed / seconds,
        "readings": readings,
        "readings_rate": readings / seconds,
        "windows": windows,
        "windows_rate": windows / seconds,
        # Forward passes alone, inside the pipeline: compare with the bare model's rate.
        "scoring_seconds": _total(metrics, "detector_scoring_duration_seconds_sum"),
        "alerts": _total(metrics, "detector_alerts_total"),
        "mean_batch_size": _total(metrics, "detector_batch_size_sum") / batches,
    }


def measure_model(scorer: Scorer, windows: np.ndarray, min_seconds: float) -> dict[str, float]:
    """The bare model: windows/s of ``Scorer.sensor_errors`` on full batches, no Kafka."""
    batch = scorer.max_batch_size
    batches = [
        windows[start : start + batch] for start in range(0, len(windows) - batch + 1, batch)
    ]
    scorer.sensor_errors(batches[0])  # warm up at the real batch shape
    scored = 0
    started = time.perf_counter()
    while True:
        scorer.sensor_errors(batches[scored // batch % len(batches)])
        scored += batch
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and scored >= 3 * batch:
            return {"windows": scored, "seconds": elapsed, "rate": scored / elapsed}


def measure_overlap(
    scorer: Scorer, windows: np.ndarray, parser: ReadingParser, values: list[bytes]
) -> dict[str, Any]:
    """Would scoring on a worker thread while the main thread ingests the next poll pay off?

    Times the bare model and the daemon's parser alone, then both at once on two threads (the
    shape of an overlapped loop), at the default and at a 10x shorter GIL switch interval.
    """

    def parse(stop: threading.Event, seconds: float, rates: list[float]) -> None:
        parsed, started = 0, time.perf_counter()
        while not stop.is_set() and time.perf_counter() - started < seconds:
            for value in values[:1000]:
                parser.parse(value)
            parsed += min(len(values), 1000)
        rates.append(parsed / (time.perf_counter() - started))

    alone: list[float] = []
    parse(threading.Event(), 3.0, alone)
    result: dict[str, Any] = {
        "model_alone": measure_model(scorer, windows, min_seconds=3.0)["rate"],
        "parse_alone": alone[0],
    }
    default_interval = sys.getswitchinterval()
    try:
        for interval in (default_interval, default_interval / 10):
            sys.setswitchinterval(interval)
            stop, rates = threading.Event(), []
            parsing = threading.Thread(target=parse, args=(stop, float("inf"), rates))
            parsing.start()
            model = measure_model(scorer, windows, min_seconds=3.0)["rate"]
            stop.set()
            parsing.join()
            result[f"switch_{interval * 1000:g}ms"] = {
                "model_while_parsing": model,
                "parse_while_scoring": rates[0],
                "model_slowdown": model / result["model_alone"],
            }
    finally:
        sys.setswitchinterval(default_interval)
    return result


SHADOWED, UNSHADOWED = "shadowed", "unshadowed"


def _poll_batches(
    messages: list[tuple[bytes, bytes]], partitions: int, per_poll: int
) -> list[dict[Partition, list[Record]]]:
    """``messages`` as the consumer would hand them over: polls of records per partition."""
    by_partition: dict[Partition, list[Record]] = {}
    for key, value in messages:
        tp = Partition("readings", zlib.crc32(key) % partitions)
        records = by_partition.setdefault(tp, [])
        records.append(Record(tp.topic, tp.partition, len(records), key, value, ()))
    longest = max(len(records) for records in by_partition.values())
    return [
        {tp: records[start : start + per_poll] for tp, records in by_partition.items()}
        for start in range(0, longest, per_poll)
    ]


def measure_shadow(
    model: Path, messages: list[tuple[bytes, bytes]], args: argparse.Namespace, rounds: int
) -> dict[str, Any]:
    """The cost of a candidate scored in shadow, in one process with no Kafka.

    Two profiles, each with half the devices and the same model; one of them also scores a
    candidate (a second copy of that model) in shadow. Runs with and without the candidate
    alternate, and each profile's scoring time per window (``detector_scoring_duration_seconds``,
    current and candidate) is compared between them.
    """
    config = DetectorConfig.model_validate(
        {
            "model": {
                "profiles": {SHADOWED: {"path": model}, UNSHADOWED: {"path": model}},
                "routes": [{"device_regex": ".*[02468]", "profile": SHADOWED}],
                "default_profile": UNSHADOWED,
            },
            "windows": {"stride": 1},
            "scoring": {
                "device": args.device,
                "max_batch_size": args.batch_size,
                "threads": args.threads,
            },
        }
    )
    polls = _poll_batches(messages, args.partitions, 500)
    candidate = load_model(model, config.scoring)
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    # A first pass (not kept) warms up the allocator and the scorers; then the order alternates
    # so that a slow stretch of the shared machine weighs on both kinds alike.
    order = [
        kind for number in range(rounds) for kind in ("without", "with")[:: 1 - 2 * (number % 2)]
    ]
    for turn, kind in enumerate(["with", *order]):
        metrics = DetectorMetrics(profiles=[SHADOWED, UNSHADOWED])
        models = {name: load_model(model, config.scoring) for name in (SHADOWED, UNSHADOWED)}
        pipeline = Pipeline(config, models, MetricsSensor(metrics))
        if kind == "with":
            pipeline.shadow(SHADOWED, candidate)
        started = time.perf_counter()
        for poll in polls:
            pipeline.process(poll)
        pipeline.flush()
        run: dict[str, float] = {"seconds": time.perf_counter() - started}
        for name in (SHADOWED, UNSHADOWED):
            windows = _total(metrics, "detector_windows_scored_total", profile=name)
            for role in ("current", "candidate"):
                spent = _total(
                    metrics, "detector_scoring_duration_seconds_sum", profile=name, model=role
                )
                run[f"{name}_{role}_seconds_per_window"] = spent / windows
        run["shadow_windows"] = _total(metrics, "detector_shadow_windows_scored_total")
        if turn:
            runs[kind].append(run)

    def ratios(numerator: Any, denominator: Any) -> dict[str, Any]:
        # Round by round: each round's two runs ran side by side on the shared machine.
        return _spread(
            [
                numerator(w) / denominator(o)
                for w, o in zip(runs["with"], runs["without"], strict=True)
            ]
        )

    def shadowed(run: dict[str, float]) -> float:
        return (
            run[f"{SHADOWED}_current_seconds_per_window"]
            + run[f"{SHADOWED}_candidate_seconds_per_window"]
        )

    def other(run: dict[str, float]) -> float:
        return run[f"{UNSHADOWED}_current_seconds_per_window"]

    return {
        "runs": runs,
        # Target <= 2: the candidate's forward pass beside the current model's.
        "shadowed_profile_scoring_ratio": ratios(shadowed, shadowed),
        # Target ~1: a profile without a candidate pays nothing for another's shadow.
        "other_profile_scoring_ratio": ratios(other, other),
        "pipeline_seconds_ratio": ratios(lambda r: r["seconds"], lambda r: r["seconds"]),
    }


def _combined(*runs: dict[str, float]) -> dict[str, float]:
    windows = sum(run["windows"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    return {"windows": windows, "seconds": seconds, "rate": windows / seconds}


def model_windows(stream: Fleet, features: list[str], length: int, count: int) -> np.ndarray:
    """At least ``count`` windows of the streamed data, device after device."""
    parts, total = [], 0
    for _, rows in stream.readings.groupby("device_id", sort=False):
        parts.append(sliding_windows(rows[features].to_numpy(np.float32), length))
        total += len(parts[-1])
        if total >= count:
            break
    return np.ascontiguousarray(np.concatenate(parts))


# --- stages ---------------------------------------------------------------------------------------


def _records(messages: list[tuple[bytes, bytes]], topic: str, partitions: int) -> dict:
    """The messages as the consumer hands them over, keyed to partitions by their key's CRC."""
    by_partition: dict[Partition, list[Record]] = {}
    for key, value in messages:
        tp = Partition(topic, zlib.crc32(key) % partitions)
        batch = by_partition.setdefault(tp, [])
        batch.append(Record(tp.topic, tp.partition, len(batch), key, value, ()))
    return by_partition


def _polls(
    records: dict[Partition, list[Record]], per_poll: int
) -> list[dict[Partition, list[Record]]]:
    """The records cut into polls of ``per_poll`` per partition, as ``max_poll_records`` does."""
    longest = max(map(len, records.values()))
    return [
        {tp: batch[start : start + per_poll] for tp, batch in records.items() if batch[start:]}
        for start in range(0, longest, per_poll)
    ]


def measure_stages(
    config: DetectorConfig,
    artifact: Artifact,
    scorer: Scorer,
    messages: list[tuple[bytes, bytes]],
    partitions: int,
) -> dict[str, Any]:
    """In-process µs per record of each stage (:mod:`detector.stages`), then of the whole pipeline.

    No Kafka: the records are built in memory, in the consumer's chunks, and driven through the
    stage functions one at a time, timing each (``admit`` includes cutting windows, ``emit``
    the alerts and dead letters). Then a fresh :class:`Pipeline` processes the same records a
    poll (``max_poll_records`` per partition) at a time: its µs per record is the in-process
    pipeline, which the per-stage figures add up to less the wiring.
    """
    records = _records(messages, "bench-stages", partitions)
    count = sum(map(len, records.values()))
    models = {DEFAULT_PROFILE: Model(artifact, scorer)}
    pipeline = Pipeline(config, models)
    lanes, trace_log = pipeline.lanes, RateLimitedLog(logging.getLogger(__name__))
    seconds = dict.fromkeys(("decode", "route", "admit", "score", "judge", "emit"), 0.0)
    windows = 0

    def scored(lane: Lane) -> None:
        nonlocal windows
        started = time.perf_counter()
        batch = score(lane)
        judged = time.perf_counter()
        verdicts = judge(lane, batch)
        emitted = time.perf_counter()
        emit.alerts(lane, batch, verdicts)
        done = time.perf_counter()
        seconds["score"] += judged - started
        seconds["judge"] += emitted - judged
        seconds["emit"] += done - emitted
        windows += len(batch)

    clock = time.time()
    for tp, batch in records.items():
        for start in range(0, len(batch), RECORDS_PER_CHUNK):
            chunk = batch[start : start + RECORDS_PER_CHUNK]
            taken = 0
            while taken < len(chunk):
                started = time.perf_counter()
                readings = decode(
                    pipeline.parser,
                    tp.topic,
                    chunk[taken:],
                    [True] * (len(chunk) - taken),
                    config.scoring.max_batch_size,
                    trace_log,
                )
                decoded = time.perf_counter()
                parts = route(readings, lanes)
                routed = time.perf_counter()
                for lane, part in parts:
                    admit(lane, lanes, tp, part, clock, 0.0, set(), trace_log)
                admitted = time.perf_counter()
                emit.dead_letters(readings, pipeline.sensor, None)
                seconds["decode"] += decoded - started
                seconds["route"] += routed - decoded
                seconds["admit"] += admitted - routed
                seconds["emit"] += time.perf_counter() - admitted
                taken += len(readings.records)
                for lane in lanes:
                    if lane.pending.full:
                        scored(lane)
    for lane in lanes:
        if lane.pending:
            scored(lane)
    fresh = Pipeline(config, models)
    polls = _polls(records, config.kafka.max_poll_records)
    started = time.perf_counter()
    for poll in polls:
        fresh.process(poll, now=clock)
    fresh.flush()
    whole = time.perf_counter() - started
    per_record = {name: 1e6 * value / count for name, value in seconds.items()}
    return {
        "records": count,
        "windows": windows,
        "us_per_record": per_record,
        "stages_us_per_record": sum(per_record.values()),
        "score_us_per_window": 1e6 * seconds["score"] / max(windows, 1),
        "judge_us_per_window": 1e6 * seconds["judge"] / max(windows, 1),
        "pipeline_us_per_record": 1e6 * whole / count,
    }


# --- latency ------------------------------------------------------------------------------------


def _histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile of cumulative ``(upper bound, count)`` buckets."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _buckets(samples: dict, name: str, **labels: str) -> list[tuple[float, float]]:
    """The cumulative ``(upper bound, count)`` buckets of the series of ``name`` with ``labels``."""
    return sorted(
        (float(found["le"]), value)
        for found, value in samples[f"{name}_bucket"]
        if labels.items() <= found.items()
    )


def _phase_figures(samples: dict) -> dict[str, dict[str, Any]]:
    """Per phase of the daemon's loop: iterations, p99, and how many took over 0.25 s."""
    figures = {}
    phases = {found["phase"] for found, _ in samples.get("detector_loop_phase_seconds_count", [])}
    for phase in sorted(phases):
        buckets = _buckets(samples, "detector_loop_phase_seconds", phase=phase)
        total = buckets[-1][1]
        within = next(count for bound, count in buckets if bound >= 0.25)
        figures[phase] = {
            "iterations": total,
            "p99_s": _bucket_quantile(samples, "detector_loop_phase_seconds", 0.99, phase=phase),
            "over_250ms": total - within,
        }
    return figures


def _bucket_quantile(samples: dict, name: str, q: float, **labels: str) -> dict[str, Any]:
    """The interpolated quantile and the bounds of the histogram bucket it falls in."""
    buckets = _buckets(samples, name, **labels)
    value = _histogram_quantile(buckets, q)
    bounds = [0.0] + [bound for bound, _ in buckets]
    upper = next(bound for bound in bounds if bound >= value)
    lower = max(bound for bound in bounds if bound < upper) if upper > 0 else 0.0
    return {"value": value, "bucket": [lower, upper]}


def _wait_ready(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as page:
                if page.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"daemon not ready after {timeout_s} s")


def _collect_alerts(bootstrap: str, topic: str, stop: threading.Event, out: list) -> None:
    # A short fetch wait, so the receive time is close to the publish time.
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5
    )
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=100).values():
            received = time.time()
            out.extend((json.loads(record.value), received) for record in records)
    consumer.close()


def _paced_load(
    bootstrap: str,
    topic: str,
    keys: list[bytes],
    heads: list[bytes],
    rate: float,
    args: argparse.Namespace,
) -> tuple[float, np.ndarray]:
    """Send ``heads[i]`` + its send time as ``ts`` at ``rate`` messages/s; (seconds, ack delays).

    The reading's ts is its send time, so an alert's window_end is when the reading that
    completed the window was sent. ``args.load_generator`` picks the producer: kafka-python
    (the default; its acks came back with p99 0.03-0.04 s at 3-6 k messages/s) or
    confluent-kafka (p99 0.6-0.8 s in the same runs: librdkafka's threads compete for the two
    cores). Each message's delay from send to the broker's acknowledgement is returned, so the
    part of a latency that is the load generator's is known.
    """
    acked: list[float] = []
    started = time.monotonic()
    if args.load_generator == "confluent-kafka":
        from confluent_kafka import Producer  # the dev extra; the daemon never imports it

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": 1})

        def delivered(error: Any, message: Any) -> None:
            if error is None:
                acked.append(time.time() - message.timestamp()[1] / 1000)

        for sent, (key, head) in enumerate(zip(keys, heads, strict=True)):
            now = time.time()
            producer.produce(
                topic,
                key=key,
                value=head + repr(now).encode() + b"}",
                timestamp=int(now * 1000),
                on_delivery=delivered,
            )
            producer.poll(0)
            ahead = started + (sent + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(30)
    else:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=1)
        for sent, (key, head) in enumerate(zip(keys, heads, strict=True)):
            now = time.time()
            future = producer.send(topic, key=key, value=head + repr(now).encode() + b"}")
            future.add_callback(lambda _, at=now: acked.append(time.time() - at))
            ahead = started + (sent + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.flush()
        producer.close()
    return time.monotonic() - started, np.asarray(acked)


@contextlib.contextmanager
def _fresh_broker(args: argparse.Namespace, shared: str, workdir: Path) -> Iterator[str]:
    """A new embedded broker for one latency run, or the ``--bootstrap`` broker as it is.

    The embedded broker keeps every record in memory and its fetches slow down as that fills: a
    bare consumer's send -> receive p50 rose from 0.07 to 0.27 s over 30 s at 3.5 k records/s
    on a fresh one. A broker that already holds the rates stage's records would charge that to
    whichever run came last.
    """
    if args.bootstrap:
        yield shared
        return
    with EmbeddedBroker(log_path=workdir / "latency-broker.log") as broker:
        yield broker.bootstrap_servers


def _paced_readings(
    stream: Fleet, rate: float, seconds: float, args: argparse.Namespace
) -> tuple[list[bytes], list[bytes]]:
    """Keys and JSON heads (all but ``"ts": <send time>}``) of a paced run's readings."""
    table = interleave(stream.readings)
    features = [c for c in table.columns if c not in ("ts", "device_id")]
    # At least a few windows' worth per device, so windows fill and anomalies come round.
    total = min(len(table), max(int(rate * seconds), 4 * args.window * args.devices))
    devices = table["device_id"].astype(str).tolist()[:total]
    rows = table[features].to_numpy(dtype=np.float64)[:total].tolist()
    # Everything but the timestamp is encoded beforehand: the load generator shares the two
    # cores with the daemon and should take as little of them as it can.
    heads = [
        json.dumps(
            {"device_id": device, "sensors": dict(zip(features, row, strict=True))}
        ).encode()[:-1]
        + b', "ts": '
        for device, row in zip(devices, rows, strict=True)
    ]
    return [device.encode() for device in devices], heads


# A bare consumer in a process of its own: librdkafka, one group member, every record's JSON
# read for its ts and nothing else. Prints "assigned" once it owns partitions, then writes
# [[ts, received], ...] to argv[2] when argv[3] records have come or 60 s pass without one.
_FLOOR_CONSUMER = r"""
import json, sys, time
from confluent_kafka import Consumer
bootstrap, out, expected, wait_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "floor",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "fetch.wait.max.ms": wait_ms})
consumer.subscribe([sys.argv[5]], on_assign=lambda c, p: print("assigned", flush=True))
got, last = [], time.monotonic()
while len(got) < expected and time.monotonic() - last < 60:
    for message in consumer.consume(1000, 0.1):
        if message.error() is None:
            got.append((json.loads(message.value())["ts"], time.time()))
            last = time.monotonic()
consumer.close()
json.dump(got, open(out, "w"))
"""


def measure_floor(
    bootstrap: str,
    stream: Fleet,
    rate: float,
    seconds: float,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """Send -> receive latency of a bare consumer under the latency stage's paced load.

    What the broker and the load generator cost a reading before any consumer code runs: the
    part of the daemon's reading -> alert latency that is not the daemon's. The consumer uses
    the daemon's default ``fetch_max_wait_ms``.
    """
    topic = f"floor-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: args.partitions})
    keys, heads = _paced_readings(stream, rate, seconds, args)
    out = workdir / f"{topic}.json"
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _FLOOR_CONSUMER,
            bootstrap,
            str(out),
            str(len(keys)),
            str(KafkaConfig().fetch_max_wait_ms),
            topic,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stdout is not None
        if consumer.stdout.readline().strip() != "assigned":
            raise RuntimeError("the floor consumer never got its partitions")
        _paced_load(bootstrap, topic, keys, heads, rate, args)
        consumer.wait(timeout=120)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    pairs = np.asarray(json.loads(out.read_text()), dtype=np.float64).reshape(-1, 2)
    latency = pairs[:, 1] - pairs[:, 0]
    since = pairs[:, 0] - pairs[:, 0].min()
    tenth = max(float(since.max()) / 10, 1e-9)
    first, last = latency[since < tenth], latency[since >= 9 * tenth]
    return {
        "offered_rate": rate,
        "received": len(pairs),
        "sent": len(keys),
        "received_p50_s": float(np.percentile(latency, 50)),
        "received_p99_s": float(np.percentile(latency, 99)),
        # The embedded broker's fetches slow down as its memory store fills.
        "first_tenth_p50_s": float(np.percentile(first, 50)) if len(first) else None,
        "last_tenth_p50_s": float(np.percentile(last, 50)) if len(last) else None,
    }


def measure_latency(
    bootstrap: str,
    model: Path,
    stream: Fleet,
    rate: float,
    seconds: float,
    args: argparse.Namespace,
    workdir: Path,
    client: str = "kafka-python",
) -> dict[str, Any]:
    """Paced load with wall-clock timestamps through a daemon process; latency of its alerts."""
    suffix = uuid.uuid4().hex[:8]
    readings_topic, alerts_topic = f"latency-{suffix}", f"latency-alerts-{suffix}"
    create_topics(bootstrap, {readings_topic: args.partitions, alerts_topic: 1})
    port = free_port()
    env = daemon_env(
        bootstrap,
        readings_topic,
        alerts_topic,
        model,
        port,
        DETECTOR_KAFKA__GROUP_ID=f"latency-{suffix}",
        DETECTOR_SCORING__DEVICE=args.device,
        DETECTOR_SCORING__MAX_BATCH_SIZE=str(args.batch_size),
        DETECTOR_SCORING__THREADS=str(args.threads),
        DETECTOR_WINDOWS__STRIDE="1",
        DETECTOR_KAFKA__CLIENT=client,
    )
    daemon = spawn_daemon(ROOT / "configs/detector.yaml", env, workdir / "latency-daemon.log", ROOT)
    alerts: list[tuple[dict, float]] = []
    stop = threading.Event()
    collector = threading.Thread(
        target=_collect_alerts, args=(bootstrap, alerts_topic, stop, alerts), daemon=True
    )
    try:
        wait_for_port("127.0.0.1", port, 60)
        _wait_ready(port, 60)
        collector.start()
        keys, heads = _paced_readings(stream, rate, seconds, args)
        total = len(keys)
        produced_s, acked = _paced_load(bootstrap, readings_topic, keys, heads, rate, args)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            samples = _scrape(port)
            if samples["detector_records_consumed_total"][0][1] >= total:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the last batch's alerts reach the collector
        samples = _scrape(port)
    finally:
        stop.set()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        collector.join(timeout=5)
    firing = [(a, received) for a, received in alerts if a["state"] == "firing"]
    detected = np.array([a["detected_at"] - a["window_end"] for a, _ in firing])
    received = np.array([r - a["window_end"] for a, r in firing])

    def pct(values: np.ndarray, q: float) -> float | None:
        return float(np.percentile(values, q)) if len(values) else None

    return {
        "offered_rate": rate,
        "achieved_rate": total / produced_s,
        "readings": total,
        "consumed": samples["detector_records_consumed_total"][0][1],
        "firing_alerts": len(firing),
        "detected_p50_s": pct(detected, 50),
        "detected_p99_s": pct(detected, 99),
        "received_p50_s": pct(received, 50),
        "received_p99_s": pct(received, 99),
        # Send to broker acknowledgement in the load generator: a part of every latency above
        # that is not the daemon's.
        "load_generator": args.load_generator,
        "produce_ack_p50_s": pct(acked, 50),
        "produce_ack_p99_s": pct(acked, 99),
        "batch_wait_p50_s": _bucket_quantile(samples, "detector_batch_wait_seconds", 0.5),
        "batch_wait_p99_s": _bucket_quantile(samples, "detector_batch_wait_seconds", 0.99),
        "scoring_p99_s": _bucket_quantile(samples, "detector_scoring_duration_seconds", 0.99),
        # Where the slow iterations, and so the late alerts, spent their time.
        "loop_phases": _phase_figures(samples),
        "mean_batch_size": samples["detector_batch_size_sum"][0][1]
        / max(samples["detector_batch_size_count"][0][1], 1.0),
    }


# --- memory ---------------------------------------------------------------------------------------


class _NoConsumer:
    """Just enough of a consumer for a detector that is fed records directly."""

    def assignment(self) -> set[Partition]:
        return set()

    def broker_reachable(self, within_s: float) -> bool:
        return True


class _NoPublisher:
    def publish(self, messages: Sequence[Any]) -> None:
        pass


def memory_probe(
    model: Path, devices: int, partitions: int, batch_size: int, threads: int
) -> dict[str, Any]:
    """RSS growth of a detector holding ``devices`` full windows, measured in this process.

    The first ``T - 1`` readings of every device go straight into the ring buffer (feeding
    millions of readings through the parser would take minutes); the last one goes through the
    daemon's ``process``, which creates every per-device entry the daemon keeps and scores the
    window, so the alert state exists too. Everything the daemon keeps (device ids included) is
    created after the baseline; everything it does not keep is freed before the last sample.
    """
    config = DetectorConfig.model_validate(
        {
            "model": {"path": model},
            "scoring": {"device": "cpu", "max_batch_size": batch_size, "threads": threads},
        }
    )
    loaded = load_model(model, config.scoring)
    detector = Detector(
        config,
        {DEFAULT_PROFILE: loaded},
        _NoConsumer(),  # type: ignore[arg-type]
        _NoPublisher(),  # type: ignore[arg-type]
        DetectorMetrics(),
    )
    artifact = loaded.artifact
    meta = artifact.metadata
    length, n_features = meta.window_length, len(meta.feature_names)
    lane = detector.pipeline.lane(DEFAULT_PROFILE)
    loaded.scorer.sensor_errors(np.zeros((batch_size, length, n_features), np.float32))
    row = np.asarray(artifact.scaler.mean, np.float32)
    sensors = dict(zip(meta.feature_names, row.tolist(), strict=True))
    tps = [Partition("readings", p) for p in range(partitions)]
    store = lane.registry.store
    baseline = _live_rss_bytes()
    started = time.perf_counter()
    chunk = 2000
    for first in range(0, devices, chunk):
        records: dict[Partition, list[Record]] = {}
        for i in range(first, min(first + chunk, devices)):
            device = f"device-{i:07d}"
            slot = store.slot(device)
            for step in range(length - 1):
                store.append(slot, 1_700_000_000.0 + step, row)
            value = json.dumps(
                {"device_id": device, "ts": 1_700_000_000.0 + length, "sensors": sensors}
            ).encode()
            tp = tps[i % partitions]
            record = Record(tp.topic, tp.partition, i, device.encode(), value, ())
            records.setdefault(tp, []).append(record)
        detector.process(records)
    detector.flush()
    del records
    final = _live_rss_bytes()
    window_bytes = devices * length * n_features * 4
    store_extra = store.slot_bytes - length * n_features * 4
    return {
        "devices": devices,
        "window_length": length,
        "features": n_features,
        "seconds": time.perf_counter() - started,
        "rss_baseline_bytes": baseline,
        "rss_bytes": final,
        "rss_growth_bytes": final - baseline,
        "window_data_bytes": window_bytes,
        "bytes_per_device_beyond_window": (final - baseline - window_bytes) / devices,
        "ring_buffer_bytes_per_device_beyond_window": store_extra,
        "other_rss_bytes_per_device": (final - baseline - window_bytes) / devices - store_extra,
        # The per-device dicts the daemon keeps, counted object by object (no allocator slack).
        "per_device_objects_bytes": lane.registry.object_bytes() / devices,
        "windows_scored": _total(detector.metrics, "detector_windows_scored_total"),
        "tracked": {**lane.registry.tracked(), "store_capacity": store.capacity},
    }


def measure_memory(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run :func:`memory_probe` in a fresh interpreter so nothing else inflates its RSS."""
    output = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-probe",
            "--model",
            str(model),
            "--memory-devices",
            str(args.memory_devices),
            "--partitions",
            str(args.partitions),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(output.stdout.splitlines()[-1])


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (sizes default to a run of a few minutes on 2 cores)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100, help="devices in the fleet")
    parser.add_argument("--messages", type=int, default=150_000, help="messages per rate run")
    parser.add_argument("--window", type=int, default=64, help="window length T of the model")
    parser.add_argument("--batch-size", type=int, default=1024, help="scoring.max_batch_size")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the topic")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of raw/pipeline/model")
    parser.add_argument("--batched", type=int, default=100, help="readings per batched message")
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument(
        "--latency-fractions",
        default="0.5,0.25",
        help="paced loads, as fractions of the measured pipeline rate",
    )
    parser.add_argument(
        "--load-generator",
        choices=["kafka-python", "confluent-kafka"],
        default="kafka-python",
        help="the latency stage's paced producer (its acks are timed: produce_ack_p99_s)",
    )
    parser.add_argument(
        "--latency-max-rate",
        type=float,
        default=6000.0,
        help="pipeline rate the fractions refer to when the rates stage does not run",
    )
    parser.add_argument(
        "--shadow-messages", type=int, default=60_000, help="records per shadow-cost run"
    )
    parser.add_argument("--memory-devices", type=int, default=100_000)
    parser.add_argument("--device", default="auto", help="scoring device: auto, cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=0, help="scoring.threads (0: one worker per core)"
    )
    parser.add_argument("--model", type=Path, help="reuse this artifact instead of training one")
    parser.add_argument("--bootstrap", help="use this broker instead of an embedded one")
    parser.add_argument(
        "--stages",
        default="rates,stages,overlap,batched,latency,shadow,memory",
        help="comma-separated subset of rates,stages,overlap,batched,latency,shadow,memory",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.devices = min(args.devices, 50)
        args.messages = min(args.messages, 30_000)
        args.rounds = 1
        args.latency_seconds = min(args.latency_seconds, 10.0)
        args.memory_devices = min(args.memory_devices, 10_000)
        args.shadow_messages = min(args.shadow_messages, 10_000)
    return args


def run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    """Every stage against ``bootstrap``; returns the results document."""
    stages = set(args.stages.split(","))
    steps = -(-args.messages // args.devices)
    normal, stream = make_fleet(args.devices, steps, seed=1)
    if args.model is None:
        say(
            f"training a model (T={args.window}, hidden 64, latent 16) on {len(normal.readings)} rows"
        )
        args.model = train_model(normal, args.window, workdir, LARGE_MODEL)
    artifact = load_artifact(args.model)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(args).items()
            if key not in ("memory_probe", "out")
        },
        "revision": _revision(),
    }
    scorer = Scorer.from_artifact(artifact, args.device, args.batch_size, args.threads)
    result["device"] = str(scorer.device)
    say(f"scoring device {scorer.device}, torch {torch.__version__}")
    windows = model_windows(
        stream, artifact.metadata.feature_names, args.window, 4 * args.batch_size
    )

    if "rates" in stages:
        defaults = yaml.safe_load((ROOT / "configs" / "trainer.yaml").read_text())
        default_window = int(defaults["window"]["length"])
        say(f"training the default model size (T={default_window}, {defaults['model']})")
        default_model = train_model(normal, default_window, workdir)
        default_artifact = load_artifact(default_model)
        default_scorer = Scorer.from_artifact(
            default_artifact, args.device, args.batch_size, args.threads
        )
        default_windows = model_windows(
            stream, default_artifact.metadata.feature_names, default_window, 4 * args.batch_size
        )
        noop = NoopScorer.from_artifact(default_artifact, args.device, args.batch_size)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: args.partitions, f"{topic}-alerts": 1})
        messages = encode_messages(interleave(stream.readings))[: args.messages]
        say(f"producing {len(messages)} messages ({args.devices} devices) to {topic}")
        produce_all(bootstrap, topic, messages)

        def pipeline_and_model(
            model: Path,
            model_artifact: Artifact,
            model_scorer: Scorer,
            model_input: np.ndarray,
            client: str = "kafka-python",
        ) -> tuple[dict[str, float], dict[str, float]]:
            # The model is timed on both sides of the Kafka run, so a neighbour's burst on the
            # shared machine weighs on both figures of a ratio alike.
            before = measure_model(model_scorer, model_input, min_seconds=3.0)
            config = daemon_config(bootstrap, topic, f"{topic}-alerts", model, args, client)
            pipeline = measure_pipeline(config, model_artifact, model_scorer, len(messages))
            after = measure_model(model_scorer, model_input, min_seconds=3.0)
            return pipeline, _combined(before, after)

        rounds = []
        for number in range(args.rounds):
            config = daemon_config(bootstrap, topic, f"{topic}-alerts", args.model, args)
            raw = measure_raw(config, len(messages))
            confluent = measure_raw_confluent(config, len(messages))
            say(
                f"round {number + 1}: raw consume {raw['rate']:,.0f} records/s "
                f"(confluent-kafka {confluent['rate']:,.0f})"
            )
            pipeline, model = pipeline_and_model(args.model, artifact, scorer, windows)
            say(
                f"round {number + 1}: pipeline {pipeline['rate']:,.0f} records/s "
                f"({pipeline['windows']:.0f} windows, {pipeline['alerts']:.0f} alerts), "
                f"bare model {model['rate']:,.0f} windows/s (T={args.window}, hidden 64)"
            )
            small, small_model = pipeline_and_model(
                default_model, default_artifact, default_scorer, default_windows
            )
            say(
                f"round {number + 1}: pipeline {small['rate']:,.0f} records/s, bare model "
                f"{small_model['rate']:,.0f} windows/s (default size, T={default_window})"
            )
            config = daemon_config(bootstrap, topic, f"{topic}-alerts", default_model, args)
            idle = measure_pipeline(config, default_artifact, noop, len(messages))
            say(f"round {number + 1}: pipeline with a no-op scorer {idle['rate']:,.0f} records/s")
            # Each client against the same limit: the faster client's raw consume or the model.
            fastest = max(raw["rate"], confluent["rate"])
            by_client = {
                "kafka-python": (raw, pipeline, model, small, small_model),
                "confluent-kafka": (
                    confluent,
                    *pipeline_and_model(args.model, artifact, scorer, windows, "confluent-kafka"),
                    *pipeline_and_model(
                        default_model,
                        default_artifact,
                        default_scorer,
                        default_windows,
                        "confluent-kafka",
                    ),
                ),
            }
            clients = {}
            for client, (c_raw, c_big, c_model, c_small, c_small_model) in by_client.items():
                clients[client] = {
                    "raw": c_raw["rate"],
                    "pipeline": c_big["rate"],
                    "pipeline_over_limit": c_big["rate"] / min(fastest, c_model["rate"]),
                    "default_model": {
                        "pipeline": c_small["rate"],
                        "pipeline_over_limit": c_small["rate"]
                        / min(fastest, c_small_model["rate"]),
                    },
                }
                say(
                    f"round {number + 1}, {client}: pipeline / limit "
                    f"{clients[client]['pipeline_over_limit']:.2f} (T={args.window}), "
                    f"{clients[client]['default_model']['pipeline_over_limit']:.2f} "
                    f"(default size); {c_big['rate']:,.0f} and {c_small['rate']:,.0f} records/s"
                )
            rounds.append(
                {
                    "clients": clients,
                    "load_average": os.getloadavg()[0],
                    "raw": raw,
                    "raw_confluent": confluent,
                    "confluent_over_kafka_python": confluent["rate"] / raw["rate"],
                    "pipeline": pipeline,
                    "model": model,
                    "pipeline_over_raw": pipeline["rate"] / raw["rate"],
                    "pipeline_over_model": pipeline["rate"] / model["rate"],
                    "pipeline_windows_over_model": pipeline["windows_rate"] / model["rate"],
                    "pipeline_over_limit": pipeline["rate"] / min(raw["rate"], model["rate"]),
                    "default_model": {
                        "pipeline": small,
                        "model": small_model,
                        "pipeline_over_limit": small["rate"]
                        / min(raw["rate"], small_model["rate"]),
                    },
                    "noop_scorer": {"pipeline": idle, "over_raw": idle["rate"] / raw["rate"]},
                }
            )
        result["rounds"] = rounds
        result["summary"] = {
            "raw_consume_records_per_s": _spread([r["raw"]["rate"] for r in rounds]),
            "raw_confluent_records_per_s": _spread([r["raw_confluent"]["rate"] for r in rounds]),
            "confluent_over_kafka_python": _spread(
                [r["confluent_over_kafka_python"] for r in rounds]
            ),
            "pipeline_records_per_s": _spread([r["pipeline"]["rate"] for r in rounds]),
            "bare_model_windows_per_s": _spread([r["model"]["rate"] for r in rounds]),
            "pipeline_over_raw": _spread([r["pipeline_over_raw"] for r in rounds]),
            "pipeline_over_model": _spread([r["pipeline_over_model"] for r in rounds]),
            "pipeline_windows_over_model": _spread(
                [r["pipeline_windows_over_model"] for r in rounds]
            ),
            "pipeline_over_limit": _spread([r["pipeline_over_limit"] for r in rounds]),
            "default_model": {
                "window": default_window,
                "model": defaults["model"],
                "pipeline_records_per_s": _spread(
                    [r["default_model"]["pipeline"]["rate"] for r in rounds]
                ),
                "bare_model_windows_per_s": _spread(
                    [r["default_model"]["model"]["rate"] for r in rounds]
                ),
                "pipeline_over_limit": _spread(
                    [r["default_model"]["pipeline_over_limit"] for r in rounds]
                ),
            },
            "noop_scorer": {
                "pipeline_records_per_s": _spread(
                    [r["noop_scorer"]["pipeline"]["rate"] for r in rounds]
                ),
                "pipeline_over_raw": _spread([r["noop_scorer"]["over_raw"] for r in rounds]),
            },
            # The limit here is min(the faster client's raw consume, the bare model).
            "clients": {
                client: {
                    "raw_consume_records_per_s": _spread(
                        [r["clients"][client]["raw"] for r in rounds]
                    ),
                    "pipeline_records_per_s": _spread(
                        [r["clients"][client]["pipeline"] for r in rounds]
                    ),
                    "pipeline_over_limit": _spread(
                        [r["clients"][client]["pipeline_over_limit"] for r in rounds]
                    ),
                    "default_model": {
                        "pipeline_records_per_s": _spread(
                            [r["clients"][client]["default_model"]["pipeline"] for r in rounds]
                        ),
                        "pipeline_over_limit": _spread(
                            [
                                r["clients"][client]["default_model"]["pipeline_over_limit"]
                                for r in rounds
                            ]
                        ),
                    },
                }
                for client in rounds[0]["clients"]
            },
        }

    if "stages" in stages:
        defaults = yaml.safe_load((ROOT / "configs" / "trainer.yaml").read_text())
        stage_model = train_model(normal, int(defaults["window"]["length"]), workdir)
        stage_artifact = load_artifact(stage_model)
        messages = encode_messages(interleave(stream.readings))[: args.messages]
        config = daemon_config("localhost:9092", "bench-stages", "bench-alerts", stage_model, args)
        result["stages"] = stage_figures = {}
        for name, stage_scorer in (
            ("noop_scorer", NoopScorer.from_artifact(stage_artifact, args.device, args.batch_size)),
            (
                "default_model",
                Scorer.from_artifact(stage_artifact, args.device, args.batch_size, args.threads),
            ),
        ):
            figures = measure_stages(
                config, stage_artifact, stage_scorer, messages, args.partitions
            )
            stage_figures[name] = figures
            say(
                f"stages ({name}), µs per record: "
                + ", ".join(f"{k} {v:.2f}" for k, v in figures["us_per_record"].items())
                + f"; sum {figures['stages_us_per_record']:.2f}, whole pipeline "
                f"{figures['pipeline_us_per_record']:.2f}"
            )

    if "overlap" in stages:
        values = [value for _, value in encode_messages(interleave(stream.readings))[:10_000]]
        parser = ReadingParser(artifact.metadata.feature_names)
        result["overlap"] = overlap = measure_overlap(scorer, windows, parser, values)
        for key, level in overlap.items():
            if key.startswith("switch_"):
                say(
                    f"overlap ({key}): model {level['model_while_parsing']:,.0f} windows/s while "
                    f"parsing (alone {overlap['model_alone']:,.0f}), parser "
                    f"{level['parse_while_scoring']:,.0f} msg/s (alone {overlap['parse_alone']:,.0f})"
                )

    if "batched" in stages:
        topic = f"bench-batched-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, {topic: args.partitions, f"{topic}-alerts": 1})
        messages = encode_messages(interleave(stream.readings), args.batched)
        say(f"producing {len(messages)} messages of {args.batched} readings to {topic}")
        produce_all(bootstrap, topic, messages)
        config = daemon_config(bootstrap, topic, f"{topic}-alerts", args.model, args)
        before = measure_model(scorer, windows, min_seconds=3.0)
        batched = measure_pipeline(config, artifact, scorer, len(messages))
        model = _combined(before, measure_model(scorer, windows, min_seconds=3.0))
        batched["bare_model_windows_per_s"] = model["rate"]
        batched["readings_over_model"] = batched["readings_rate"] / model["rate"]
        say(f"batched: {batched['readings_rate']:,.0f} readings/s")
        result["batched"] = {"readings_per_message": args.batched, **batched}

    if "latency" in stages:
        measured = result.get("summary", {}).get("pipeline_records_per_s", {}).get("median")
        maximum = measured or args.latency_max_rate
        fractions = [float(f) for f in args.latency_fractions.split(",")]
        result["latency_floor"] = []
        for fraction in fractions:
            with _fresh_broker(args, bootstrap, workdir) as fresh:
                floor = measure_floor(
                    fresh, stream, maximum * fraction, args.latency_seconds, args, workdir
                )
            result["latency_floor"].append({"fraction_of_max": fraction, **floor})
            say(
                f"latency floor ({fraction:g} of max, a bare consumer): received p50 "
                f"{floor['received_p50_s']:.3f} s, p99 {floor['received_p99_s']:.3f} s; p50 "
                f"{floor['first_tenth_p50_s']:.3f} s in the run's first tenth, "
                f"{floor['last_tenth_p50_s']:.3f} s in its last"
            )
        result["latency_levels"] = []
        # Both clients get the same offered rates: fractions of kafka-python's measured maximum.
        for client in ("kafka-python", "confluent-kafka"):
            for fraction in fractions:
                rate = maximum * fraction
                say(
                    f"latency ({client}): paced load at {rate:,.0f} readings/s for "
                    f"{args.latency_seconds:.0f} s"
                )
                with _fresh_broker(args, bootstrap, workdir) as fresh:
                    level = measure_latency(
                        fresh, args.model, stream, rate, args.latency_seconds, args, workdir, client
                    )
                result["latency_levels"].append(
                    {"client": client, "fraction_of_max": fraction, **level}
                )
                say(
                    f"latency ({client}, {fraction:g} of max): received p50 "
                    f"{level['received_p50_s']} s, p99 {level['received_p99_s']} s"
                )
        result.setdefault("summary", {})["latency_floor_p99_s"] = {
            str(level["fraction_of_max"]): level["received_p99_s"]
            for level in result["latency_floor"]
        }
        for client, figures in result.get("summary", {}).get("clients", {}).items():
            figures["latency_p99_s"] = {
                str(level["fraction_of_max"]): level["received_p99_s"]
                for level in result["latency_levels"]
                if level["client"] == client
            }

    if "shadow" in stages:
        defaults = yaml.safe_load((ROOT / "configs" / "trainer.yaml").read_text())
        shadow_model = train_model(normal, int(defaults["window"]["length"]), workdir)
        messages = encode_messages(interleave(stream.readings))[: args.shadow_messages]
        say(f"shadow: {len(messages)} records through two profiles, one with a candidate")
        result["shadow"] = shadow = measure_shadow(shadow_model, messages, args, args.rounds)
        say(
            "shadow: scoring time of the shadowed profile "
            f"x{shadow['shadowed_profile_scoring_ratio']['median']:.2f}, of the other "
            f"x{shadow['other_profile_scoring_ratio']['median']:.2f}, pipeline "
            f"x{shadow['pipeline_seconds_ratio']['median']:.2f}"
        )

    if "memory" in stages:
        say(f"memory: {args.memory_devices} devices, T={args.window}")
        result["memory"] = measure_memory(args.model, args)
    return result


def say(message: str) -> None:
    """Progress on stderr, flushed."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results."""
    args = parse_args(argv)
    if args.memory_probe:
        print(
            json.dumps(
                memory_probe(
                    args.model, args.memory_devices, args.partitions, args.batch_size, args.threads
                )
            )
        )
        return 0
    logging.basicConfig(level=logging.WARNING)
    # The in-process measurements run with the collector set as `detector run` sets it.
    tune_garbage_collector()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        workdir = Path(tmp)
        if args.bootstrap:
            result = run(args, args.bootstrap, workdir)
        else:
            with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
                result = run(args, broker.bootstrap_servers, workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "summary",
                    "batched",
                    "latency_floor",
                    "latency_levels",
                    "shadow",
                    "memory",
                )
                if k in result
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
