"""The broker side of Kafka's SASL exchange (PLAIN and SCRAM-SHA-256/512), for test endpoints.

Pure: it turns the request frames a client sends before it is authenticated into the response
frames a Kafka broker sends back (KIP-43 ``SaslHandshake``, KIP-152 ``SaslAuthenticate`` v0-v2)
and checks credentials as Kafka does: PLAIN compares the password, SCRAM (RFC 5802/7677) checks
the client's proof against keys derived from it and proves the server back. No I/O here;
:class:`~detector_devtools.broker_front.BrokerFront` moves the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "API_VERSIONS",
    "MECHANISMS",
    "RequestHeader",
    "SaslServer",
    "parse_request_header",
]

SASL_HANDSHAKE = 17
API_VERSIONS = 18
SASL_AUTHENTICATE = 36
_UNSUPPORTED_SASL_MECHANISM = 33
_ILLEGAL_SASL_STATE = 34
_SASL_AUTHENTICATION_FAILED = 58
_SCRAM_ITERATIONS = 4096
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


@dataclass(frozen=True)
class RequestHeader:
    """What a request frame (without its 4-byte length) starts with, and where its body begins."""

    api_key: int
    api_version: int
    correlation_id: int
    body_offset: int


def parse_request_header(frame: bytes) -> RequestHeader:
    """Header v1 (and v2, whose tagged fields follow the client id) of a request frame."""
    api_key, api_version, correlation_id, client_id_length = struct.unpack_from(">hhih", frame)
    offset = 10 + max(client_id_length, 0)
    if api_key == SASL_AUTHENTICATE and api_version >= 2:
        offset = _skip_tagged_fields(frame, offset)
    return RequestHeader(api_key, api_version, correlation_id, offset)


class SaslServer:
    """One connection's SASL state: answers handshake and authenticate frames until it is done.

    ``users`` maps user names to passwords; ``mechanisms`` are the ones offered.
    """

    def __init__(self, users: Mapping[str, str], mechanisms: tuple[str, ...] = MECHANISMS):
        self.users = dict(users)
        self.mechanisms = mechanisms
        self.mechanism: str | None = None
        self.authenticated = False
        self.failed = False
        self._scram: _ScramExchange | None = None

    def respond(self, frame: bytes) -> bytes:
        """The response frame (with its length) to a SaslHandshake or SaslAuthenticate frame.

        Sets :attr:`authenticated` when the client has proved itself and :attr:`failed` when the
        connection must be closed after this response, as Kafka closes it.
        """
        header = parse_request_header(frame)
        if header.api_key == SASL_HANDSHAKE:
            return self._handshake(header, frame)
        if header.api_key == SASL_AUTHENTICATE and self.mechanism is not None:
            return self._authenticate(header, frame)
        self.failed = True
        return _frame(header.correlation_id, struct.pack(">h", _ILLEGAL_SASL_STATE))

    def _handshake(self, header: RequestHeader, frame: bytes) -> bytes:
        (length,) = struct.unpack_from(">h", frame, header.body_offset)
        start = header.body_offset + 2
        requested = frame[start : start + length].decode()
        offered = b"".join(_string(name) for name in self.mechanisms)
        error = 0
        if requested in self.mechanisms:
            self.mechanism = requested
        else:
            error = _UNSUPPORTED_SASL_MECHANISM
            self.failed = True
        body = struct.pack(">hi", error, len(self.mechanisms)) + offered
        return _frame(header.correlation_id, body)

    def _authenticate(self, header: RequestHeader, frame: bytes) -> bytes:
        flexible = header.api_version >= 2
        if flexible:
            length, offset = _read_uvarint(frame, header.body_offset)
            token = frame[offset : offset + length - 1]
        else:
            (length,) = struct.unpack_from(">i", frame, header.body_offset)
            token = frame[header.body_offset + 4 : header.body_offset + 4 + length]
        try:
            reply = self._step(token)
        except (ValueError, KeyError, UnicodeDecodeError):
            reply = None
        if reply is None:
            self.failed = True
            error, message, reply = _SASL_AUTHENTICATION_FAILED, "Authentication failed", b""
        else:
            error, message = 0, None
        return _frame(
            header.correlation_id,
            _authenticate_body(header.api_version, error, message, reply),
            flexible=flexible,
        )

    def _step(self, token: bytes) -> bytes | None:
        """The server's next token, or ``None`` when the credentials are refused."""
        if self.mechanism == "PLAIN":
            _authzid, user, password = token.decode().split("\0")
            if user in self.users and hmac.compare_digest(self.users[user], password):
                self.authenticated = True
                return b""
            return None
        if self._scram is None:
            self._scram = _ScramExchange(_HASHES[str(self.mechanism)], self.users)
            return self._scram.first(token)
        final = self._scram.final(token)
        self.authenticated = final is not None
        return final


class _ScramExchange:
    """RFC 5802 server steps for one login: client-first -> server-first, client-final -> -final."""

    def __init__(self, hash_name: str, users: Mapping[str, str]):
        self.hash_name = hash_name
        self.users = users
        self.salt = os.urandom(16)
        self.auth_message = b""
        self.stored_key = self.server_key = b""
        self.nonce = ""

    def first(self, client_first: bytes) -> bytes | None:
        text = client_first.decode()
        _gs2_flag, _authzid, bare = text.split(",", 2)
        attributes = dict(part.split("=", 1) for part in bare.split(","))
        user = attributes["n"].replace("=2C", ",").replace("=3D", "=")
        if user not in self.users:
            return None
        salted = hashlib.pbkdf2_hmac(
            self.hash_name, self.users[user].encode(), self.salt, _SCRAM_ITERATIONS
        )
        client_key = self._hmac(salted, b"Client Key")
        self.stored_key = hashlib.new(self.hash_name, client_key).digest()
        self.server_key = self._hmac(salted, b"Server Key")
        self.nonce = attributes["r"] + base64.b64encode(os.urandom(18)).decode()
        salt = base64.b64encode(self.salt).decode()
        server_first = f"r={self.nonce},s={salt},i={_SCRAM_ITERATIONS}".encode()
        self.auth_message = bare.encode() + b"," + server_first
        return server_first

    def final(self, client_final: bytes) -> bytes | None:
        without_proof, _, proof = client_final.decode().rpartition(",p=")
        attributes = dict(part.split("=", 1) for part in without_proof.split(","))
        if attributes.get("r") != self.nonce:
            return None
        self.auth_message += b"," + without_proof.encode()
        signature = self._hmac(self.stored_key, self.auth_message)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if not hmac.compare_digest(
            hashlib.new(self.hash_name, client_key).digest(), self.stored_key
        ):
            return None
        server_signature = self._hmac(self.server_key, self.auth_message)
        return b"v=" + base64.b64encode(server_signature)

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.hash_name).digest()


def _authenticate_body(version: int, error: int, message: str | None, token: bytes) -> bytes:
    if version >= 2:
        text = b"\x00" if message is None else _uvarint(len(message) + 1) + message.encode()
        body = struct.pack(">h", error) + text + _uvarint(len(token) + 1) + token
        return body + struct.pack(">q", 0) + b"\x00"
    text = struct.pack(">h", -1) if message is None else _string(message)
    body = struct.pack(">h", error) + text + struct.pack(">i", len(token)) + token
    return body + (struct.pack(">q", 0) if version >= 1 else b"")


def _frame(correlation_id: int, body: bytes, flexible: bool = False) -> bytes:
    """Response header v0 (v1 with an empty tagged-field section when flexible) and body."""
    payload = struct.pack(">i", correlation_id) + (b"\x00" if flexible else b"") + body
    return struct.pack(">i", len(payload)) + payload


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_uvarint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def _skip_tagged_fields(data: bytes, offset: int) -> int:
    count, offset = _read_uvarint(data, offset)
    for _ in range(count):
        _tag, offset = _read_uvarint(data, offset)
        size, offset = _read_uvarint(data, offset)
        offset += size
    return offset
