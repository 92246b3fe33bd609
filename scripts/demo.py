"""The demo: embedded broker -> mixed synthetic fleet -> one model per profile -> detector -> alerts.

The fleet holds two device profiles, pumps and fans, with different sensors and normals; each
profile's model is trained on its own rows of the fleet file and scores only its own devices.
Run through ``make demo``. ``DEMO_SECONDS=N`` streams for N seconds after the detector is up,
then stops every process it started, prints a summary per profile and ``alerts: <count>``;
without it the demo runs until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from detector_devtools.embedded_broker import (
    EmbeddedBroker,
    create_topics,
    free_port,
    wait_for_port,
)
from detector_devtools.launch import daemon_env, spawn_daemon
from detector_devtools.replay import encode_messages, interleave, replay
from detector_devtools.synthetic import PROFILE_COLUMN

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
PROFILES = ("pump", "fan")
DEVICES_PER_PROFILE = 3
READINGS, ALERTS = "demo-readings", "demo-alerts"
REPLAY_RATE = 600  # readings/s: the whole stream (9000 readings) takes about 15 s


@dataclass(frozen=True)
class Daemons:
    """Running detector processes and where the demo sends readings and reads alerts.

    ``alerts`` maps each alerts topic to the profile whose alerts it carries, or to ``None``
    when the alerts name their profile themselves.
    """

    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]
    readings: dict[str, str]
    alerts: dict[str, str | None]


def say(message: str) -> None:
    """One line of demo narration."""
    print(f"[demo] {message}", flush=True)


def run_step(args: list[str], env: dict[str, str]) -> None:
    """Run ``python ARGS`` in the repository; a failure stops the demo."""
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT, env=env)


def train_profiles(data: Path, models: Path, env: dict[str, str]) -> bool:
    """Train one model per profile, in parallel, into the registries ``models/<profile>``.

    ``trainer fit --profile`` picks each profile's rows of normal.csv (``data.profile_column``)
    and only the sensors that profile has. Returns whether every fit succeeded; logs go to ``.demo/train-<profile>.log``.
    """
    fits: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for profile in PROFILES:
        log = WORK / f"train-{profile}.log"
        # A small LSTM gains little from a second thread: two fits side by side, one thread
        # each, take about as long as one fit with both cores.
        train_env = {
            **env,
            "TRAINER_DATA__PATHS": json.dumps([str(data / "normal.csv")]),
            "TRAINER_DATA__PROFILE_COLUMN": PROFILE_COLUMN,
            "TRAINER_OUTPUT__PROFILES_DIR": str(models),
            "OMP_NUM_THREADS": "1",
        }
        command = ["-m", "trainer", "fit", "--config", "configs/trainer.yaml"]
        command += ["--profile", profile, "--no-progress"]
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env=train_env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        fits[profile] = (process, log)
    ok = True
    for profile, (process, log) in fits.items():
        lines = log.read_text().splitlines() if process.wait() == 0 else []
        if lines:
            say(f"{profile}: {lines[-1]}")
        else:
            say(f"training the {profile} model failed; see {log}")
            ok = False
    return ok


def start_one_daemon_for_all_profiles(bootstrap: str, models: Path) -> Daemons:
    """One daemon with a model per profile (model.profiles), routed by the readings' profile.

    The routes are the operator's usual ones: the reading's own ``profile`` field decides, else
    its device id (``pump-*``).
    """
    create_topics(bootstrap, {READINGS: 4, ALERTS: 1})
    config = yaml.safe_load((ROOT / "configs/detector.yaml").read_text())
    config["model"] = {
        "profiles": {profile: {"path": str(models / profile)} for profile in PROFILES},
        "routes": [{"reading": True}, {"devices": ["pump-*"], "profile": "pump"}],
        "default_profile": None,
    }
    config_path = WORK / "detector-profiles.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    env = daemon_env(
        bootstrap,
        READINGS,
        ALERTS,
        models,
        port,
        PYTHONUNBUFFERED="1",
        DETECTOR_KAFKA__GROUP_ID="demo-detector",
    )
    # The config file holds model.profiles; a model.path beside it is a configuration error.
    env.pop("DETECTOR_MODEL__PATH")
    log = WORK / "detector.log"
    process = spawn_daemon(config_path, env, log, ROOT)
    wait_for_port("127.0.0.1", port, 60)
    say(f"detector running with {config_path.name}; metrics at http://127.0.0.1:{port}/metrics")
    return Daemons([process], [log], dict.fromkeys(PROFILES, READINGS), {ALERTS: None})


def print_alerts(
    bootstrap: str, topics: dict[str, str | None], stop: threading.Event, seen: list[dict]
) -> None:
    """Print every alert as it arrives and collect it in ``seen``, its ``profile`` filled in."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(topic, 0) for topic in topics]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    while not stop.is_set():
        for partition, records in consumer.poll(timeout_ms=200).items():
            for record in records:
                alert = json.loads(record.value)
                alert["profile"] = topics[partition.topic] or alert["profile"]
                seen.append(alert)
                top = ", ".join(f"{t['sensor']} {t['share']:.0%}" for t in alert["top_sensors"])
                say(
                    f"ALERT {alert['state']:<8} {alert['profile']:<5} {alert['device_id']} "
                    f"severity {alert['severity']:.2f} score {alert['score']:.4f} top: {top}"
                )
    consumer.close()


def replay_stream(
    stream: pd.DataFrame, topics: dict[str, str], bootstrap: str, stop: threading.Event
) -> None:
    """Send the stream in time order at REPLAY_RATE, each reading to its profile's topic.

    A second of readings at a time, so that a stop takes effect within a second.
    """
    rows = interleave(stream)
    messages = encode_messages(rows)  # one per row, in the rows' order
    destinations = [topics[profile] for profile in rows[PROFILE_COLUMN]]
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for start in range(0, len(messages), REPLAY_RATE):
            if stop.is_set():
                return
            chunk: dict[str, list[tuple[bytes, bytes]]] = {}
            stop_at = start + REPLAY_RATE
            for topic, message in zip(
                destinations[start:stop_at], messages[start:stop_at], strict=True
            ):
                chunk.setdefault(topic, []).append(message)
            for topic, part in chunk.items():
                replay(part, producer, topic, rate=REPLAY_RATE, progress_every=0)
        say(f"replayed {len(messages)} readings")
    finally:
        producer.close()


def summarise(alerts: list[dict], episodes: list[dict], profile_of: dict[str, str]) -> None:
    """Per profile: injected anomalies caught by a firing alert, and alerts that explain none."""

    def overlaps(alert: dict, episode: dict) -> bool:
        return (
            alert["device_id"] == episode["device_id"]
            and alert["window_end"] >= episode["start_ts"]
            and alert["window_start"] <= episode["end_ts"]
        )

    for profile in PROFILES:
        mine = [e for e in episodes if profile_of[e["device_id"]] == profile]
        raised = [a for a in alerts if a["profile"] == profile]
        firing = [a for a in raised if a["state"] == "firing"]
        caught = sum(any(overlaps(a, e) for a in firing) for e in mine)
        unexplained = sum(not any(overlaps(a, e) for e in mine) for a in firing)
        say(
            f"{profile}: {len(mine)} anomalies injected, {caught} caught; {len(firing)} firing "
            f"alerts ({unexplained} not overlapping an injected anomaly), "
            f"{len(raised) - len(firing)} resolved"
        )


def main() -> int:
    """Run the demo; 0 when it ran to the end (or to Ctrl-C)."""
    seconds = float(os.environ["DEMO_SECONDS"]) if os.environ.get("DEMO_SECONDS") else None
    WORK.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    daemons: Daemons | None = None
    stop = threading.Event()
    alerts: list[dict] = []
    broker = EmbeddedBroker(log_path=WORK / "broker.log")
    threads: list[threading.Thread] = []
    data = WORK / "data"

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        broker.start()
        say(f"broker (Tansu) on {broker.bootstrap_servers}")
        synth = ["synth", "--out", str(data), "--mixed", "--profiles", ",".join(PROFILES)]
        run_step(["-m", "detector", *synth, "--devices", str(DEVICES_PER_PROFILE)], env)
        models = WORK / "models"
        say(f"training one LSTM autoencoder per profile ({', '.join(PROFILES)}) on normal data")
        if not train_profiles(data, models, env):
            return 1
        daemons = start_one_daemon_for_all_profiles(broker.bootstrap_servers, models)
        threads.append(
            threading.Thread(
                target=print_alerts, args=(broker.bootstrap_servers, daemons.alerts, stop, alerts)
            )
        )
        stream = pd.read_csv(data / "stream.csv")
        threads.append(
            threading.Thread(
                target=replay_stream,
                args=(stream, daemons.readings, broker.bootstrap_servers, stop),
            )
        )
        for thread in threads:
            thread.start()
        say(f"replaying the stream ({data / 'stream_episodes.json'} lists the injected anomalies)")
        say("press Ctrl-C to stop" if seconds is None else f"running for {seconds:.0f} s")
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for process, log in zip(daemons.processes, daemons.logs, strict=True):
                if process.poll() is not None:
                    say(f"detector exited with {process.returncode}; see {log}")
                    return 1
            time.sleep(0.2)
    finally:
        stop.set()
        processes = [] if daemons is None else daemons.processes
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        for thread in threads:
            thread.join(timeout=5)
        broker.stop()
    episodes = json.loads((data / "stream_episodes.json").read_text())
    profile_of = dict(zip(stream["device_id"], stream[PROFILE_COLUMN], strict=True))
    summarise(alerts, episodes, profile_of)
    print(f"alerts: {len(alerts)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
