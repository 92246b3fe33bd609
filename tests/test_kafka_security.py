"""TLS and SASL with both Kafka clients, against the embedded broker (issue 26 item 2).

What the broker here can do decides what is proven, and how (README "Security"):

* TLS: Tansu 0.6.0 takes ``--cert`` but its listener stays plaintext, so TLS is terminated by
  :class:`~detector_devtools.broker_front.BrokerFront` (OpenSSL, through Python's ``ssl``) in
  front of it, asking for a client certificate.
* SASL: Tansu's ``--authentication`` offers SCRAM-SHA-256/512 but not PLAIN, and 0.6.0 keeps no
  SCRAM credential (``tansu user create`` answers OK and stores nothing: every login is
  ``unknown-user``). Its refusals are tested as they are; successful logins, and a wrong
  password, are tested against the front's own SASL server (PLAIN, SCRAM per RFC 5802) with the
  real broker behind it.

With each client, alerts flow end to end and the daemon survives the endpoint going away and
coming back (reconnecting means a new TLS handshake and a new login); refused certificates and
credentials end start-up with one line that names the cause and never the password.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from detector.exits import EXIT_UNAVAILABLE
from detector_devtools.broker_front import BrokerFront
from detector_devtools.embedded_broker import EmbeddedBroker, free_port
from detector_devtools.launch import daemon_env
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import KAFKA_CLIENTS, ROOT, Daemon, DemoData, offline_transitions, wait_until
from tests.startup import Run, run_all

pytestmark = [pytest.mark.security, pytest.mark.integration]

PASSWORD = "s3cr3t-Pa55w0rd-never-shown"
USERS = {"detector": PASSWORD}
BOOTSTRAP_TIMEOUT_MS = 5000
DEADLINE_S = 180  # daemons start together on 2 cores, each importing torch


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA the broker's certificate comes from, a client certificate, a rogue CA."""

    ca: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("detector.example")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    rogue.cert_pem.write_to_path(str(root / "rogue-ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(root / "client.pem"))
    client.private_key_pem.write_to_path(str(root / "client.key"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the daemon's certificate is checked
    return Pki(
        root / "ca.pem", root / "client.pem", root / "client.key", root / "rogue-ca.pem", context
    )


@pytest.fixture(scope="module")
def fronts(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BrokerFront]]:
    """One broker per security protocol, reachable only through its front: protocol -> front.

    Each broker advertises its front, so clients never see a plaintext address.
    """
    settings = {
        "SSL": {"tls": pki.server_context},
        "SASL_PLAINTEXT": {"users": USERS},
        "SASL_SSL": {"tls": pki.server_context, "users": USERS},
    }
    with contextlib.ExitStack() as stack:
        started: dict[str, BrokerFront] = {}
        for protocol, options in settings.items():
            port = free_port()
            log = tmp_path_factory.mktemp(protocol.lower()) / "tansu.log"
            broker = stack.enter_context(
                EmbeddedBroker(advertised=f"127.0.0.1:{port}", log_path=log)
            )
            started[protocol] = stack.enter_context(
                BrokerFront(broker.bootstrap_servers, port=port, **options)
            )
        yield started


@pytest.fixture(scope="module")
def tansu_sasl(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Tansu requiring SASL itself, plain and behind TLS: protocol -> bootstrap servers."""
    log = tmp_path_factory.mktemp("tansu-sasl") / "tansu.log"
    with (
        EmbeddedBroker(log_path=log, authentication=True) as broker,
        BrokerFront(broker.bootstrap_servers, tls=pki.server_context) as front,
    ):
        yield {"SASL_PLAINTEXT": broker.bootstrap_servers, "SASL_SSL": front.bootstrap_servers}


def _client_kwargs(pki: Pki, protocol: str, mechanism: str | None) -> dict[str, Any]:
    """kafka-python settings of the test's own clients."""
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        kwargs.update(
            ssl_cafile=str(pki.ca),
            ssl_certfile=str(pki.client_cert),
            ssl_keyfile=str(pki.client_key),
        )
    if mechanism is not None:
        kwargs.update(
            sasl_mechanism=mechanism, sasl_plain_username="detector", sasl_plain_password=PASSWORD
        )
    return kwargs


def _security_env(
    pki: Pki,
    protocol: str,
    mechanism: str | None,
    ca: Path | None = None,
    password: str = PASSWORD,
) -> dict[str, str]:
    """The daemon's security settings, as an operator sets them."""
    env = {"DETECTOR_KAFKA__SECURITY_PROTOCOL": protocol}
    if protocol.endswith("SSL"):
        env["DETECTOR_KAFKA__SSL_CAFILE"] = str(ca or pki.ca)
        env["DETECTOR_KAFKA__SSL_CERTFILE"] = str(pki.client_cert)
        env["DETECTOR_KAFKA__SSL_KEYFILE"] = str(pki.client_key)
    if mechanism is not None:
        env["DETECTOR_KAFKA__SASL_MECHANISM"] = mechanism
        env["DETECTOR_KAFKA__SASL_USERNAME"] = "detector"
        env["DETECTOR_KAFKA__SASL_PASSWORD"] = password
    return env


def _settings(
    bootstrap: str, model: Path, client: str, security: dict[str, str], metrics_port: int = 0
) -> dict[str, str]:
    """A daemon's environment on fresh topic names and group, with ``security`` settings."""
    suffix = uuid.uuid4().hex[:10]
    return daemon_env(
        bootstrap,
        f"readings-{suffix}",
        f"alerts-{suffix}",
        model,
        metrics_port,
        DETECTOR_KAFKA__CLIENT=client,
        DETECTOR_KAFKA__GROUP_ID=f"group-{suffix}",
        DETECTOR_KAFKA__MAX_POLL_INTERVAL_MS="10000",
        DETECTOR_KAFKA__BOOTSTRAP_TIMEOUT_MS=str(BOOTSTRAP_TIMEOUT_MS),
        DETECTOR_SCORING__DEVICE="cpu",
        DETECTOR_METRICS__EXPOSITION_CACHE_S="0",
        **security,
    )


def _read_alerts(bootstrap: str, topic: str, count: int, **kwargs: Any) -> list[dict]:
    """The alerts topic's first ``count`` messages (or fewer at the deadline)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **kwargs)
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    alerts: list[dict] = []
    deadline = time.monotonic() + 60
    while len(alerts) < count and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            alerts.extend(json.loads(record.value) for record in records)
    consumer.close()
    return alerts


SECURED = {
    "SSL with a client certificate": ("SSL", None),
    "SASL_PLAINTEXT PLAIN": ("SASL_PLAINTEXT", "PLAIN"),
    "SASL_PLAINTEXT SCRAM-SHA-256": ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    "SASL_SSL SCRAM-SHA-512": ("SASL_SSL", "SCRAM-SHA-512"),
    "SASL_SSL PLAIN": ("SASL_SSL", "PLAIN"),
}


@pytest.mark.parametrize("case", SECURED)
def test_alerts_flow_and_survive_the_endpoint_restarting(
    case: str,
    kafka_client: str,
    fronts: dict[str, BrokerFront],
    pki: Pki,
    demo_data: DemoData,
    tmp_path: Path,
) -> None:
    protocol, mechanism = SECURED[case]
    front = fronts[protocol]
    bootstrap = front.bootstrap_servers
    client_kwargs = _client_kwargs(pki, protocol, mechanism)
    port = free_port()
    env = _settings(
        bootstrap,
        demo_data.model.path,
        kafka_client,
        _security_env(pki, protocol, mechanism),
        metrics_port=port,
    )
    readings = json.loads(env["DETECTOR_KAFKA__READINGS_TOPICS"])[0]
    alerts_topic = env["DETECTOR_KAFKA__ALERTS_TOPIC"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    admin.create_topics([NewTopic(readings, 3, 1), NewTopic(alerts_topic, 1, 1)])
    admin.close()
    daemon = Daemon(ROOT / "configs" / "detector.yaml", env, tmp_path / "daemon.log", port)
    try:
        messages = encode_messages(interleave(demo_data.anomalous.readings))
        half = len(messages) // 2
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_kwargs)
        for key, value in messages[:half]:
            producer.send(readings, key=key, value=value)
        producer.flush()
        wait_until(
            lambda: daemon.metric("detector_readings_accepted_total") == half,
            90,
            f"the daemon took the first half over {case}",
        )

        front.stop()
        wait_until(
            lambda: daemon.metric("detector_broker_reachable") == 0,
            30,
            "the daemon noticed the endpoint was gone",
        )
        front.start()
        for key, value in messages[half:]:
            producer.send(readings, key=key, value=value)
        producer.flush()
        producer.close()
        wait_until(
            lambda: daemon.metric("detector_readings_accepted_total") == len(messages),
            90,
            "the daemon took the second half after the endpoint came back",
        )
        assert daemon.process.poll() is None, daemon.log()

        expected = offline_transitions(demo_data.model.path, demo_data.anomalous.readings)
        count = sum(len(changes) for changes in expected.values())
        assert count > 0
        alerts = _read_alerts(bootstrap, alerts_topic, count, **client_kwargs)
        streamed: dict[str, list[tuple[float, str]]] = {}
        for alert in alerts:
            streamed.setdefault(alert["device_id"], []).append(
                (alert["window_end"], alert["state"])
            )
        assert streamed == expected, daemon.log()
        assert len({alert["alert_id"] for alert in alerts}) == len(alerts)
        assert PASSWORD not in daemon.log()
    finally:
        daemon.stop()


# Refused at start-up: (broker, protocol, mechanism, password); "tansu" is the broker's own SASL.
REFUSED = {
    "untrusted certificate": ("front", "SSL", None, PASSWORD),
    "wrong password PLAIN": ("front", "SASL_PLAINTEXT", "PLAIN", "not-" + PASSWORD),
    "wrong password SCRAM-SHA-512": ("front", "SASL_SSL", "SCRAM-SHA-512", "not-" + PASSWORD),
    "tansu SCRAM-SHA-256": ("tansu", "SASL_PLAINTEXT", "SCRAM-SHA-256", PASSWORD),
    "tansu SASL_SSL SCRAM-SHA-512": ("tansu", "SASL_SSL", "SCRAM-SHA-512", PASSWORD),
    "tansu PLAIN": ("tansu", "SASL_PLAINTEXT", "PLAIN", PASSWORD),
}


@pytest.fixture(scope="module")
def refused(
    fronts: dict[str, BrokerFront],
    tansu_sasl: dict[str, str],
    pki: Pki,
    demo_data: DemoData,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], Run]:
    """Every refused start-up, per (case, client): all start at once, as each pays for torch."""
    config = tmp_path_factory.mktemp("refused") / "detector.yaml"
    config.write_text("scoring: {device: cpu}\nmetrics: {host: 127.0.0.1, port: 0}\n")
    argv = [sys.executable, "-m", "detector", "run", "--config", str(config)]
    cases: dict[tuple[str, str], tuple[list[str], dict[str, str]]] = {}
    for client in KAFKA_CLIENTS:
        for name, (broker, protocol, mechanism, password) in REFUSED.items():
            bootstrap = (
                fronts[protocol].bootstrap_servers if broker == "front" else tansu_sasl[protocol]
            )
            rogue = pki.rogue_ca if name == "untrusted certificate" else None
            security = _security_env(pki, protocol, mechanism, ca=rogue, password=password)
            cases[name, client] = (
                argv,
                _settings(bootstrap, demo_data.model.path, client, security),
            )
    return run_all(cases, DEADLINE_S)


def _one_line(run: Run) -> str:
    """The start-up's line (exit 69); nothing else but INFO lines on stderr."""
    line = run.error_line(code=EXIT_UNAVAILABLE)
    assert [other for other in run.lines if " INFO " not in other] == [line], run.stderr
    return line


def test_a_broker_certificate_from_an_untrusted_ca_exits_69_with_one_line(
    refused: dict[tuple[str, str], Run], kafka_client: str
) -> None:
    line = _one_line(refused["untrusted certificate", kafka_client])
    assert "cannot reach Kafka at 127.0.0.1:" in line and " over SSL within 5 s" in line, line
    assert "certificate verify failed" in line.lower(), line


@pytest.mark.parametrize("case", ["wrong password PLAIN", "wrong password SCRAM-SHA-512"])
def test_a_wrong_password_exits_69_with_one_line_and_no_password(
    refused: dict[tuple[str, str], Run], kafka_client: str, case: str
) -> None:
    run = refused[case, kafka_client]
    line = _one_line(run)
    _, protocol, mechanism, password = REFUSED[case]
    assert f"over {protocol} ({mechanism} as user 'detector')" in line, line
    assert "Authentication failed" in line, line  # the broker's own error message
    assert password not in run.stderr and PASSWORD not in run.stderr


@pytest.mark.parametrize("case", ["tansu SCRAM-SHA-256", "tansu SASL_SSL SCRAM-SHA-512"])
def test_scram_refused_by_the_broker_itself_exits_69_with_one_line(
    refused: dict[tuple[str, str], Run], kafka_client: str, case: str
) -> None:
    run = refused[case, kafka_client]
    line = _one_line(run)
    _, protocol, mechanism, _ = REFUSED[case]
    assert f"over {protocol} ({mechanism} as user 'detector')" in line, line
    # librdkafka says so itself; kafka-python only logs "Abort ('v')", which start-up explains.
    cause = {
        "kafka-python": "the broker refused the SCRAM login",
        "confluent-kafka": "SASL authentication error: SASL SCRAM authentication failed: "
        "broker responded with unknown-user",
    }[kafka_client]
    assert cause in line, line
    assert PASSWORD not in run.stderr


def test_a_mechanism_the_broker_does_not_offer_exits_69_naming_it(
    refused: dict[tuple[str, str], Run], kafka_client: str
) -> None:
    run = refused["tansu PLAIN", kafka_client]
    line = _one_line(run)
    assert "over SASL_PLAINTEXT (PLAIN as user 'detector')" in line, line
    assert PASSWORD not in run.stderr
