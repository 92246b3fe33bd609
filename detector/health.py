"""HTTP endpoints on the metrics port: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the main loop has made progress recently (a poll completed, or a
publish retry is waiting on the broker): a stuck process fails it and gets restarted.
``/readyz`` answers 200 when the model is loaded, partitions are assigned and the broker is
reachable: a daemon that is alive but cut off from Kafka is not ready, and says why.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass
class HealthState:
    """What the endpoints report; the main loop updates it, the HTTP threads read it."""

    liveness_timeout_s: float = 60.0
    model_loaded: bool = False
    last_progress: float = field(default_factory=time.monotonic)
    partitions_assigned: Callable[[], int] = lambda: 0
    broker_reachable: Callable[[], bool] = lambda: False

    def progressed(self) -> None:
        """The main loop completed a step (or is waiting on the broker on purpose)."""
        self.last_progress = time.monotonic()

    def live(self) -> tuple[bool, dict[str, object]]:
        """Liveness verdict and details."""
        stalled = time.monotonic() - self.last_progress
        return stalled < self.liveness_timeout_s, {"seconds_since_progress": round(stalled, 3)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Readiness verdict and the state of each condition."""
        checks = {
            "model_loaded": self.model_loaded,
            "partitions_assigned": self.partitions_assigned(),
            "broker_reachable": self.broker_reachable(),
        }
        ok = bool(
            checks["model_loaded"] and checks["partitions_assigned"] and checks["broker_reachable"]
        )
        return ok, checks


def serve(
    host: str, port: int, registry: CollectorRegistry, health: HealthState
) -> ThreadingHTTPServer:
    """Start the endpoints on a daemon thread; returns the server (``server_address`` has the port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, details = (health.live if path == "/healthz" else health.ready)()
                body = json.dumps({"ok": ok, **details}).encode()
                self._send(200 if ok else 503, body, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every few seconds would flood the log; stay quiet."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
