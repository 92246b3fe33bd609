"""The test endpoints' SASL server answers as a Kafka broker does (frames and credentials).

The integration tests (tests/test_kafka_security.py) log both real clients in through it; these
pin the parts a client may not reach: frames of each SaslAuthenticate version, a mechanism that
is not offered, frames out of order, and a server signature the client can check.
"""

from __future__ import annotations

import struct

import pytest
from kafka.net.sasl.scram import ScramClient

from detector_devtools.sasl_server import SaslServer, parse_request_header

pytestmark = pytest.mark.security

USERS = {"detector": "right-password"}


def _request(api_key: int, version: int, body: bytes, correlation_id: int = 7) -> bytes:
    client_id = b"test"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    if api_key == 36 and version >= 2:
        header += b"\x00"  # request header v2: no tagged fields
    return header + body


def _handshake(mechanism: str) -> bytes:
    return _request(17, 1, struct.pack(">h", len(mechanism)) + mechanism.encode())


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes([*out, value])


def _authenticate(token: bytes, version: int) -> bytes:
    if version >= 2:
        return _request(36, version, _uvarint(len(token) + 1) + token + b"\x00")
    return _request(36, version, struct.pack(">i", len(token)) + token)


def _reply(response: bytes, version: int) -> tuple[int, bytes]:
    """Error code and token of a SaslAuthenticate response frame (tokens under 127 bytes)."""
    size, correlation_id = struct.unpack_from(">ii", response)
    assert size == len(response) - 4 and correlation_id == 7
    offset = 8 + (1 if version >= 2 else 0)
    (error,) = struct.unpack_from(">h", response, offset)
    offset += 2
    if version >= 2:
        message_length = response[offset]
        offset += 1 + max(message_length - 1, 0)
        token_length = response[offset] - 1
        offset += 1
    else:
        (message_length,) = struct.unpack_from(">h", response, offset)
        offset += 2 + max(message_length, 0)
        (token_length,) = struct.unpack_from(">i", response, offset)
        offset += 4
    return error, response[offset : offset + token_length]


@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_logs_in_with_the_right_password_and_proves_the_server(
    mechanism: str, version: int
) -> None:
    server = SaslServer(USERS)
    server.respond(_handshake(mechanism))
    client = ScramClient("detector", "right-password", mechanism)
    error, server_first = _reply(
        server.respond(_authenticate(client.first_message(), version)), version
    )
    assert error == 0 and not server.authenticated
    client.process_server_first_message(server_first)
    error, server_final = _reply(
        server.respond(_authenticate(client.final_message(), version)), version
    )
    assert error == 0 and server.authenticated and not server.failed
    client.process_server_final_message(server_final)  # raises on a wrong server signature


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_refuses_a_wrong_password_and_an_unknown_user(mechanism: str) -> None:
    server = SaslServer(USERS)
    server.respond(_handshake(mechanism))
    client = ScramClient("detector", "wrong-password", mechanism)
    _, server_first = _reply(server.respond(_authenticate(client.first_message(), 1)), 1)
    client.process_server_first_message(server_first)
    error, _ = _reply(server.respond(_authenticate(client.final_message(), 1)), 1)
    assert error == 58 and server.failed and not server.authenticated

    stranger = SaslServer(USERS)
    stranger.respond(_handshake(mechanism))
    first = ScramClient("nobody", "right-password", mechanism).first_message()
    error, _ = _reply(stranger.respond(_authenticate(first, 1)), 1)
    assert error == 58 and stranger.failed


def test_plain_checks_user_and_password() -> None:
    for password, expected in (("right-password", 0), ("wrong", 58)):
        server = SaslServer(USERS)
        server.respond(_handshake("PLAIN"))
        token = f"\0detector\0{password}".encode()
        error, _ = _reply(server.respond(_authenticate(token, 1)), 1)
        assert error == expected
        assert server.authenticated == (expected == 0)


def test_a_mechanism_not_offered_is_refused_with_the_offered_list() -> None:
    server = SaslServer(USERS, mechanisms=("SCRAM-SHA-512",))
    response = server.respond(_handshake("PLAIN"))
    error, count = struct.unpack_from(">hi", response, 8)
    (length,) = struct.unpack_from(">h", response, 14)
    assert error == 33 and count == 1 and response[16 : 16 + length] == b"SCRAM-SHA-512"
    assert server.failed


def test_authenticate_before_a_handshake_is_an_illegal_state() -> None:
    server = SaslServer(USERS)
    response = server.respond(_authenticate(b"\0detector\0right-password", 1))
    assert struct.unpack_from(">h", response, 8) == (34,)
    assert server.failed and not server.authenticated


def test_the_header_parser_finds_the_body_after_the_client_id_and_tagged_fields() -> None:
    frame = _authenticate(b"token", 2)
    header = parse_request_header(frame)
    assert (header.api_key, header.api_version, header.correlation_id) == (36, 2, 7)
    assert frame[header.body_offset :] == bytes([6]) + b"token" + b"\x00"
