"""The metrics port survives hostile clients: idle sockets, slow requests, scrape storms (issue 10 item 12).

In-process tests drive :func:`detector.health.serve` directly; the last one runs the daemon under a
low open-file limit, where idle connections used to exhaust the descriptors the model watcher needs
and kill the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from detector.config import MetricsConfig
from detector.health import HealthState, serve
from detector_devtools.embedded_broker import free_port, wait_for_port
from detector_devtools.launch import daemon_env
from tests.conftest import ROOT, DemoData, Topics, wait_until

FIGURES = logging.getLogger("fault-figures")


def get(port: int, path: str, timeout_s: float = 5.0) -> int:
    """HTTP status of ``path`` on the local endpoints."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as page:
            page.read()
            return page.status
    except urllib.error.HTTPError as error:
        return error.code


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte (those refused or timing out are skipped)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(0.5)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sockets.append(sock)
    return sockets


def stays_alive(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether ``process`` is still running ``seconds`` from now (checked every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return True


def handler_threads() -> int:
    """Threads serving one HTTP connection each."""
    return sum(1 for t in threading.enumerate() if "process_request" in t.name)


class CountingCollector:
    """A collector that counts how often the exposition is rendered."""

    def __init__(self) -> None:
        self.collections = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.collections += 1
        yield GaugeMetricFamily("renders", "times the page was rendered", value=self.collections)


@contextlib.contextmanager
def endpoints(**limits: float) -> Iterator[tuple[int, CountingCollector]]:
    registry = CollectorRegistry()
    counter = CountingCollector()
    registry.register(counter)
    config = MetricsConfig(host="127.0.0.1", port=0, **limits)
    server = serve(config, registry, HealthState())
    try:
        yield server.server_address[1], counter
    finally:
        server.shutdown()
        server.server_close()


def test_idle_connections_hold_no_more_than_the_bound_and_healthz_answers() -> None:
    bound = 16
    with endpoints(max_connections=bound, idle_timeout_s=30) as (port, _):
        idle = open_idle(port, 300)
        try:
            started = time.monotonic()
            assert get(port, "/healthz") == 200
            answered_in = time.monotonic() - started
            wait_until(lambda: handler_threads() <= bound + 1, 5, "evicted connections released")
            threads = handler_threads()
            FIGURES.info(
                f"{len(idle)} idle connections: /healthz in {answered_in:.3f} s, "
                f"{threads} handler threads (bound {bound})"
            )
            assert len(idle) > 250  # a few may time out connecting on a loaded machine
            assert answered_in < 2.0
        finally:
            for sock in idle:
                sock.close()


def test_idle_and_slow_clients_are_cut_off() -> None:
    with endpoints(idle_timeout_s=0.5) as (port, _):
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        try:
            assert silent.recv(1024) == b""
            assert slow.recv(1024) == b""
            closed_after = time.monotonic() - started
        finally:
            silent.close()
            slow.close()
        FIGURES.info(f"idle and half-sent requests closed after {closed_after:.2f} s")
        assert closed_after < 3.0
        assert get(port, "/healthz") == 200


def test_scrape_storm_renders_the_page_about_once_per_cache_period() -> None:
    with endpoints(exposition_cache_s=1.0) as (port, counter):
        started = time.monotonic()
        for _ in range(100):
            assert get(port, "/metrics") == 200
        elapsed = time.monotonic() - started
        FIGURES.info(
            f"100 scrapes in {elapsed:.2f} s rendered the page {counter.collections} times"
        )
        assert counter.collections <= 2 + elapsed / 1.0


def test_exposition_cache_off_renders_every_scrape() -> None:
    with endpoints(exposition_cache_s=0) as (port, counter):
        for _ in range(5):
            get(port, "/metrics")
        assert counter.collections == 5


@pytest.mark.integration
@pytest.mark.fault
def test_idle_connections_under_a_low_file_limit_do_not_kill_the_daemon(
    tmp_path: Path, topics: Topics, demo_data: DemoData
) -> None:
    limit = 256
    port = free_port()
    config = tmp_path / "detector.yaml"
    config.write_text((ROOT / "configs" / "detector.yaml").read_text())
    env = daemon_env(
        topics.bootstrap,
        topics.readings,
        topics.alerts,
        demo_data.model.path.parent,  # the registry: the watcher opens `current` every interval
        port,
        DETECTOR_KAFKA__GROUP_ID=topics.group,
        DETECTOR_SCORING__DEVICE="cpu",
        DETECTOR_MODEL__RELOAD_INTERVAL_S="0.2",
    )
    log_path = tmp_path / "detector.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "detector", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )
    idle: list[socket.socket] = []
    try:
        wait_for_port("127.0.0.1", port, 60)
        wait_until(lambda: get(port, "/readyz") == 200, 60, "daemon ready")
        idle = open_idle(port, 400)  # more than the file limit leaves free
        # Several watcher intervals with the connections held: each opens the registry's files.
        alive = stays_alive(process, 2.0)
        descriptors = len(os.listdir(f"/proc/{process.pid}/fd")) if alive else None
        status = get(port, "/healthz") if alive else None
        FIGURES.info(
            f"RLIMIT_NOFILE {limit}: {len(idle)} idle connections accepted, daemon "
            f"{'alive' if alive else f'exited {process.returncode}'}, "
            f"{descriptors} descriptors open, /healthz {status}"
        )
        assert alive, log_path.read_text(errors="replace")[-3000:]
        assert status == 200
        for sock in idle:
            sock.close()
        idle = []
        assert stays_alive(process, 1.0)
        assert get(port, "/healthz") == 200
    finally:
        for sock in idle:
            sock.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
