"""``trainer shadow-report``: the daemon's shadow comparison of the registry's candidate."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tests.test_registry import _save
from trainer.cli import main
from trainer.registry import shadow

STARTED = datetime(2024, 3, 4, 8, 30, tzinfo=timezone.utc)


def _exposition(
    shadowed: dict[str, tuple[str, str]],
    windows: dict[str, int],
    alerts: dict[tuple[str, str, str], int],
) -> bytes:
    """What the daemon's /metrics serves, written by prometheus_client itself.

    ``shadowed``: profile -> (current, candidate); ``alerts``: (profile, model, state) -> count.
    """
    registry = CollectorRegistry()
    info = Gauge(
        "detector_shadow_info",
        "Versions compared in shadow",
        ["profile", "current", "candidate"],
        registry=registry,
    )
    started = Gauge(
        "detector_shadow_started_timestamp_seconds",
        "When shadowing this candidate began",
        ["profile"],
        registry=registry,
    )
    scored = Counter(
        "detector_shadow_windows_scored",
        "Windows scored by both models",
        ["profile"],
        registry=registry,
    )
    transitions = Counter(
        "detector_shadow_alerts",
        "Alert transitions each model raised",
        ["profile", "model", "state"],
        registry=registry,
    )
    for profile, (current, candidate) in shadowed.items():
        info.labels(profile, current, candidate).set(1)
        started.labels(profile).set(STARTED.timestamp())
    for profile, count in windows.items():
        scored.labels(profile).inc(count)
    for (profile, model, state), count in alerts.items():
        transitions.labels(profile, model, state).inc(count)
    return generate_latest(registry)


class _Daemon:
    """A tiny HTTP server answering /metrics with ``body`` (or ``status``)."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(daemon.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(daemon.body)

            def log_message(self, *_args: object) -> None:
                pass  # keep pytest's output to the test's own

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def daemon() -> Iterator[_Daemon]:
    server = _Daemon()
    yield server
    server.close()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """Versions a, b, c (c current) with b the candidate."""
    root = tmp_path / "models"
    for day, version in enumerate(["a", "b", "c"]):
        _save(root, version, day)
    shadow(root, "b")
    return root


def _report(registry: Path, daemon: _Daemon, *args: str) -> int:
    return main(["shadow-report", "--models", str(registry), "--metrics-url", daemon.url, *args])


FLEET = {"pumps": ("c", "b"), "fans": ("f1", "f2")}
WINDOWS = {"pumps": 1234, "fans": 99}
ALERTS = {
    ("pumps", "current", "firing"): 7,
    ("pumps", "current", "resolved"): 6,
    ("pumps", "candidate", "firing"): 3,
    ("pumps", "candidate", "resolved"): 3,
    ("fans", "candidate", "firing"): 50,  # another profile's: must not be counted
}


def test_report_compares_the_candidate_with_current(
    registry: Path, daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.body = _exposition(FLEET, WINDOWS, ALERTS)
    assert _report(registry, daemon) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "Profile pumps: candidate b vs current c" in out
    assert "1234 windows compared since 2024-03-04T08:30:00Z" in out
    assert "3 firing alerts from the candidate, 7 from current" in out
    assert "the candidate raised fewer alerts than current." in out
    assert "not picked up" not in out


@pytest.mark.parametrize(
    ("candidate_firing", "verdict"), [(3, "fewer"), (7, "as many"), (9, "more")]
)
def test_json_holds_the_same_figures(
    registry: Path,
    daemon: _Daemon,
    capsys: pytest.CaptureFixture[str],
    candidate_firing: int,
    verdict: str,
) -> None:
    alerts = {**ALERTS, ("pumps", "candidate", "firing"): candidate_firing}
    daemon.body = _exposition(FLEET, WINDOWS, alerts)
    assert _report(registry, daemon, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "profile": "pumps",
        "candidate": "b",
        "current": "c",
        "registry_current": "c",
        "since": "2024-03-04T08:30:00Z",
        "windows_compared": 1234,
        "candidate_firing_alerts": candidate_firing,
        "current_firing_alerts": 7,
        "verdict": verdict,
    }


def test_a_candidate_with_no_windows_or_alerts_yet_counts_zero(
    registry: Path, daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    # Labelled counters appear only once incremented: a just-installed candidate has none.
    daemon.body = _exposition({"pumps": ("c", "b")}, {}, {})
    assert _report(registry, daemon, "--json") == 0
    figures = json.loads(capsys.readouterr().out)
    assert (figures["windows_compared"], figures["candidate_firing_alerts"]) == (0, 0)
    assert figures["verdict"] == "as many"


def test_report_says_when_the_daemon_still_runs_another_current(
    registry: Path, daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.body = _exposition({"pumps": ("a", "b")}, WINDOWS, ALERTS)
    assert _report(registry, daemon) == 0
    out = capsys.readouterr().out
    assert "candidate b vs current a" in out
    assert "registry's current is c: it has not picked up the registry yet" in out


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    return captured.err


def test_the_daemon_not_shadowing_the_candidate_is_an_error(
    registry: Path, daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.body = _exposition({"pumps": ("c", "a"), "fans": ("f1", "f2")}, WINDOWS, ALERTS)
    assert _report(registry, daemon) == 2
    err = _one_line_error(capsys)
    assert "is not shadowing candidate b (shadowing: " in err
    assert "pumps: a" in err and "fans: f2" in err
    daemon.body = _exposition({}, {}, {})
    assert _report(registry, daemon) == 2
    assert "(shadowing: nothing)" in _one_line_error(capsys)


def test_no_candidate_in_the_registry_is_an_error(
    registry: Path, daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["shadow", "--clear", "--models", str(registry)]) == 0
    capsys.readouterr()
    daemon.body = _exposition(FLEET, WINDOWS, ALERTS)
    assert _report(registry, daemon) == 2
    assert f"no candidate in {registry}" in _one_line_error(capsys)


def test_unreachable_or_failing_metrics_are_an_error(
    registry: Path, daemon: _Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    assert main(["shadow-report", "--models", str(registry), "--metrics-url", closed]) == 2
    assert f"cannot read the daemon's metrics at {closed}" in _one_line_error(capsys)
    daemon.status = 500
    assert _report(registry, daemon) == 2
    assert "cannot read the daemon's metrics" in _one_line_error(capsys)
    url = ["--metrics-url", "file:///etc/passwd"]
    assert main(["shadow-report", "--models", str(registry), *url]) == 2
    assert "is not an http(s) URL" in _one_line_error(capsys)
