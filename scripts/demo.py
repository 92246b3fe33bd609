"""The demo: embedded broker -> synthetic fleet -> trainer -> detector daemon -> replay -> alerts.

Run through ``make demo``. ``DEMO_SECONDS=N`` streams for N seconds after the detector is up,
then stops every process it started and prints ``alerts: <count>``; without it the demo runs
until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from detector_devtools.embedded_broker import (
    EmbeddedBroker,
    create_topics,
    free_port,
    wait_for_port,
)
from detector_devtools.launch import daemon_env, spawn_daemon

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
READINGS, ALERTS = "demo-readings", "demo-alerts"
REPLAY_RATE = 400  # readings/s: the whole stream takes about 20 s


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run_step(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT, env=env)


def print_alerts(bootstrap: str, stop: threading.Event, seen: list[dict]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = TopicPartition(ALERTS, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                alert = json.loads(record.value)
                seen.append(alert)
                top = ", ".join(f"{t['sensor']} {t['share']:.0%}" for t in alert["top_sensors"])
                say(
                    f"ALERT {alert['state']:<8} {alert['device_id']} severity {alert['severity']:.2f} "
                    f"score {alert['score']:.4f} top: {top}"
                )
    consumer.close()


def main() -> int:
    seconds = float(os.environ["DEMO_SECONDS"]) if os.environ.get("DEMO_SECONDS") else None
    WORK.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    alerts: list[dict] = []
    broker = EmbeddedBroker(log_path=WORK / "broker.log")
    printer: threading.Thread | None = None

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        broker.start()
        say(f"broker (Tansu) on {broker.bootstrap_servers}")
        create_topics(broker.bootstrap_servers, {READINGS: 4, ALERTS: 1})
        data = WORK / "data"
        run_step(["-m", "detector", "synth", "--out", str(data), "--devices", "4"], env)
        models = WORK / "models"
        train_env = {**env, "TRAINER_DATA__PATHS": json.dumps([str(data / "normal.csv")])}
        say("training the LSTM autoencoder on normal data (about a minute on 2 cores)")
        run_step(
            ["-m", "trainer", "fit", "--config", "configs/trainer.yaml", "--output", str(models)],
            train_env,
        )
        metrics_port = free_port()
        detector_env = daemon_env(
            broker.bootstrap_servers,
            READINGS,
            ALERTS,
            models,
            metrics_port,
            PYTHONUNBUFFERED="1",
            DETECTOR_KAFKA__GROUP_ID="demo-detector",
        )
        log = WORK / "detector.log"
        processes.append(spawn_daemon(ROOT / "configs/detector.yaml", detector_env, log, ROOT))
        wait_for_port("127.0.0.1", metrics_port, 60)
        say(f"detector running; metrics at http://127.0.0.1:{metrics_port}/metrics, log {log}")
        printer = threading.Thread(
            target=print_alerts, args=(broker.bootstrap_servers, stop, alerts)
        )
        printer.start()
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "detector",
                    "replay",
                    str(data / "stream.csv"),
                    "--topic",
                    READINGS,
                    "--rate",
                    str(REPLAY_RATE),
                    "--bootstrap-servers",
                    broker.bootstrap_servers,
                ],
                cwd=ROOT,
                env=env,
            )
        )
        say(f"replaying the stream ({data / 'stream_episodes.json'} lists the injected anomalies)")
        say("press Ctrl-C to stop" if seconds is None else f"running for {seconds:.0f} s")
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            if processes[0].poll() is not None:
                say(f"detector exited with {processes[0].returncode}; see {log.name}")
                return 1
            time.sleep(0.2)
    finally:
        stop.set()
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if printer is not None:
            printer.join(timeout=5)
        broker.stop()
    episodes = json.loads((WORK / "data" / "stream_episodes.json").read_text())
    firing = [alert for alert in alerts if alert["state"] == "firing"]

    def overlaps(alert: dict, episode: dict) -> bool:
        return (
            alert["device_id"] == episode["device_id"]
            and alert["window_end"] >= episode["start_ts"]
            and alert["window_start"] <= episode["end_ts"]
        )

    caught = sum(any(overlaps(a, e) for a in firing) for e in episodes)
    unexplained = sum(not any(overlaps(a, e) for e in episodes) for a in firing)
    say(
        f"{len(episodes)} anomalies injected, {caught} caught; {len(firing)} firing alerts "
        f"({unexplained} not overlapping an injected anomaly), {len(alerts) - len(firing)} resolved"
    )
    print(f"alerts: {len(alerts)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
