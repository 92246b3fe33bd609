"""HTTP endpoints on the metrics port: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the main loop has made progress recently (a poll completed, or a
publish retry is waiting on the broker): a stuck process fails it and gets restarted.
``/readyz`` answers 200 when the model is loaded, partitions are assigned and the broker is
reachable: a daemon that is alive but cut off from Kafka is not ready, and says why.

Clients cannot take the daemon down through this port: at most ``metrics.max_connections`` are
open at once (a new connection closes the oldest, so a probe always gets through however many
idle sockets are held), a connection that sends or reads nothing for ``metrics.idle_timeout_s``
is closed, and ``/metrics`` renders its page at most once per ``metrics.exposition_cache_s``, so
a scrape storm costs the main loop one rendering a second, not one per request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from detector.config import MetricsConfig

__all__ = ["BoundedHTTPServer", "Exposition", "HealthState", "serve"]

log = logging.getLogger(__name__)


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


class Exposition:
    """The /metrics page, rendered at most once per ``max_age_s`` however often it is asked for.

    Scrapes that arrive while the page is being rendered wait for it instead of rendering again.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._page = b""
        self._rendered_at = -math.inf

    def page(self) -> bytes:
        """The exposition text, at most ``max_age_s`` old."""
        with self._lock:
            now = self.clock()
            if self.max_age_s <= 0 or now - self._rendered_at >= self.max_age_s:
                self._page = generate_latest(self.registry)
                self._rendered_at = now
            return self._page


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, but never more than ``max_connections`` connections open.

    When a new connection would exceed the bound the oldest one is shut down: its thread wakes
    up, finds the socket closed and ends. Idle sockets then cost neither threads nor descriptors
    beyond the bound, and the newest client (a liveness probe) is always served.
    """

    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connection bursts into SYN retries

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        self.max_connections = max_connections
        self._open: OrderedDict[socket.socket, None] = OrderedDict()  # oldest first
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        """Start serving ``request``, first closing the oldest connections above the bound."""
        with self._open_lock:
            while len(self._open) >= self.max_connections:
                oldest, _ = self._open.popitem(last=False)
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)
            self._open[request] = None
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        """Forget and close a finished (or evicted) connection."""
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up or was evicted mid-answer is routine; no traceback on stderr."""
        log.debug("HTTP client %s: connection failed", client_address, exc_info=True)


def serve(
    config: MetricsConfig, registry: CollectorRegistry, health: HealthState
) -> ThreadingHTTPServer:
    """Start the endpoints on a daemon thread; returns the server (``server_address`` has the port).

    Raises ``OSError`` when the address cannot be bound (port in use, unknown host).
    """
    exposition = Exposition(registry, config.exposition_cache_s)

    class Handler(BaseHTTPRequestHandler):
        timeout = config.idle_timeout_s  # applies to every read and write on the socket

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, exposition.page(), CONTENT_TYPE_LATEST)
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

    server = BoundedHTTPServer((config.host, config.port), Handler, config.max_connections)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
