"""Soak test: a daemon under steady load for MINUTES; prints RSS and open files every minute.

Run through ``make soak MINUTES=10``. Flat RSS and file-descriptor counts are the target; the
last line compares the first and last samples.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from detector_devtools.embedded_broker import (
    EmbeddedBroker,
    create_topics,
    free_port,
    wait_for_port,
)
from detector_devtools.launch import daemon_env, spawn_daemon
from detector_devtools.replay import encode_messages, interleave
from detector_devtools.synthetic import generate_fleet, split_at, write_fleet
from trainer.config import TrainerConfig
from trainer.fit import fit

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".soak"
DEVICES = 50
RATE = 2000  # readings/s
STEPS = 1200


def sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def consumed(port: int) -> int:
    """The daemon's detector_records_consumed_total."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        for family in text_string_to_metric_families(page.read().decode()):
            for item in family.samples:
                if item.name == "detector_records_consumed_total":
                    return int(item.value)
    return 0


def produce_forever(bootstrap: str, topic: str, stop: threading.Event, stream) -> None:
    """Replay the stream again and again, shifted in time so every device keeps moving forward."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    span = float(stream["ts"].max() - stream["ts"].min()) + 1.0
    started, sent, loop = time.monotonic(), 0, 0
    while not stop.is_set():
        shifted = stream.assign(ts=stream["ts"] + loop * span)
        for key, value in encode_messages(shifted):
            if stop.is_set():
                break
            producer.send(topic, key=key, value=value)
            sent += 1
            ahead = started + sent / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        loop += 1
    producer.flush()
    producer.close()


def main() -> int:
    minutes = float(os.environ.get("MINUTES", "10"))
    WORK.mkdir(exist_ok=True)
    fleet = generate_fleet(DEVICES, 2 * STEPS, seed=3, anomalies_per_device=1, quiet_steps=STEPS)
    normal, stream = split_at(fleet, STEPS)
    models = WORK / "models"
    if not (models / "current").is_file():
        paths = write_fleet(normal, WORK, "normal")
        fit(
            TrainerConfig.model_validate(
                {
                    "data": {"paths": [str(paths["readings"])]},
                    "window": {"length": 32, "stride": 4},
                    "model": {"hidden_size": 32, "latent_size": 8},
                    "training": {"epochs": 5, "batch_size": 256, "max_train_windows": 8000},
                    "output": {"dir": str(models)},
                }
            ),
            show_progress=False,
        )
    with EmbeddedBroker(log_path=WORK / "broker.log") as broker:
        create_topics(broker.bootstrap_servers, {"soak-readings": 4, "soak-alerts": 1})
        port = free_port()
        env = daemon_env(
            broker.bootstrap_servers,
            "soak-readings",
            "soak-alerts",
            models,
            port,
            DETECTOR_LOG_LEVEL="WARNING",
        )
        daemon = spawn_daemon(ROOT / "configs/detector.yaml", env, WORK / "detector.log", ROOT)
        wait_for_port("127.0.0.1", port, 60)
        stop = threading.Event()
        producer = threading.Thread(
            target=produce_forever,
            args=(broker.bootstrap_servers, "soak-readings", stop, interleave(stream.readings)),
        )
        producer.start()
        samples = []
        print(f"soak: {DEVICES} devices, {RATE} readings/s, {minutes:g} min", flush=True)
        print("minute  rss_kib  open_fds  records_consumed", flush=True)
        try:
            for minute in range(int(minutes) + 1):
                if minute:
                    time.sleep(60)
                if daemon.poll() is not None:
                    print(f"daemon exited with {daemon.returncode}", flush=True)
                    return 1
                rss, fds = sample(daemon.pid)
                samples.append((rss, fds))
                print(f"{minute:6d}  {rss:7d}  {fds:8d}  {consumed(port):16d}", flush=True)
        finally:
            stop.set()
            producer.join()
            daemon.terminate()
            daemon.wait(timeout=30)
    (first_rss, first_fds), (last_rss, last_fds) = (
        samples[1 if len(samples) > 2 else 0],
        samples[-1],
    )
    print(
        f"summary: RSS {first_rss} -> {last_rss} KiB ({last_rss - first_rss:+d}) from minute "
        f"{1 if len(samples) > 2 else 0}; open fds {first_fds} -> {last_fds}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
