"""A TLS and SASL endpoint in front of a plaintext broker, for tests of the clients' security.

The embedded broker (Tansu 0.6.0) accepts ``--cert`` but still speaks plaintext on its listener,
and keeps no SCRAM credential, so no client can log in to it. TLS and SASL are terminated here
instead, as a proxy or sidecar terminates them in front of a broker: the Kafka clients do a real
OpenSSL handshake (server certificate, CA, hostname, client certificate) and a real SASL exchange
(:mod:`detector_devtools.sasl_server`: PLAIN, SCRAM-SHA-256/512), then talk to the real broker
through it. The broker must advertise this endpoint's address, or clients would follow its
metadata to the plaintext port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import threading
from collections.abc import Mapping
from types import TracebackType

from detector_devtools.embedded_broker import BrokerError, free_port, wait_for_port
from detector_devtools.sasl_server import (
    API_VERSIONS,
    MECHANISMS,
    SaslServer,
    parse_request_header,
)

__all__ = ["BrokerFront"]

_CHUNK = 65_536
_FAILED_LOGIN_CLOSE_DELAY_S = 0.1


class BrokerFront:
    """Accepts clients on ``host:port`` and relays each connection to ``upstream`` (``host:port``).

    ``tls``: the server side of TLS (plain TCP without); ``users``: user -> password, and clients
    must then log in with one of ``mechanisms`` before anything reaches the broker. :meth:`stop`
    closes the listener and every open connection, as a broker that goes away does; :meth:`start`
    listens on the same port again.
    """

    def __init__(
        self,
        upstream: str,
        tls: ssl.SSLContext | None = None,
        users: Mapping[str, str] | None = None,
        mechanisms: tuple[str, ...] = MECHANISMS,
        port: int | None = None,
        host: str = "127.0.0.1",
    ):
        self.upstream_host, _, upstream_port = upstream.rpartition(":")
        self.upstream_port = int(upstream_port)
        self.tls = tls
        self.users = users
        self.mechanisms = mechanisms
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> BrokerFront:
        """Listen (on a thread of its own) and wait until the port accepts connections."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._relay, self.host, self.port, ssl=self.tls)
                )
            except OSError as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"broker-front-{self.port}", daemon=True)
        self._thread.start()
        ready.wait(timeout_s)
        if failure:
            raise BrokerError(
                f"broker front cannot listen on {self.bootstrap_servers}: {failure[0]}"
            )
        wait_for_port(self.host, self.port, timeout_s)
        return self

    def stop(self) -> None:
        """Stop listening and cut every client off."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shut(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = self._server = None

    async def _shut(self) -> None:
        if self._server is not None:
            self._server.close()
        for relay in list(self._relays):
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        ends = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            ends.append(up_writer)
            if self.users is None or await self._log_in(reader, writer, up_reader, up_writer):
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass  # the broker or the client went away
        except asyncio.CancelledError:
            pass  # stop() cuts the connection; a handler that re-raised would be logged
        finally:
            for end in ends:
                with contextlib.suppress(Exception):
                    end.close()
            self._relays.discard(task)

    async def _log_in(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer the client's SASL frames (ApiVersions goes to the broker) until it is in."""
        assert self.users is not None
        server = SaslServer(self.users, self.mechanisms)
        while not server.authenticated:
            frame = await _read_frame(reader)
            if parse_request_header(frame[4:]).api_key == API_VERSIONS:
                up_writer.write(frame)
                await up_writer.drain()
                writer.write(await _read_frame(up_reader))
            else:
                writer.write(server.respond(frame[4:]))
            await writer.drain()
            if server.failed:
                # Kafka closes a refused login after connection.failed.authentication.delay.ms
                # (100 ms), so that the client reads why before the socket goes.
                await asyncio.sleep(_FAILED_LOGIN_CLOSE_DELAY_S)
                return False
        return True

    def __enter__(self) -> BrokerFront:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    """One Kafka frame, with its 4-byte length."""
    size = await reader.readexactly(4)
    return size + await reader.readexactly(struct.unpack(">i", size)[0])


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until either side closes; closing one direction ends the other."""
    try:
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()
