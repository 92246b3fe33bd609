"""Start-up failures exit with one line on stderr: no traceback, no secret (issue 10 items 7, 13-15).

A bad configuration, model or address exits 2 (``EXIT_CONFIG``), which systemd's unit does not
restart (``RestartPreventExitStatus=2``); a broker that does not answer exits 69
(``EXIT_UNAVAILABLE``), which it restarts, as Kubernetes does (issue 20 item 5); exit 1 with a
traceback is restarted too. Every case runs ``python -m detector run`` (or ``replay``, or
``trainer fit``) as a process; they all start at once, since each pays a few seconds of start-up.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest
import yaml

from detector.exits import EXIT_CONFIG, EXIT_UNAVAILABLE
from detector_devtools.embedded_broker import free_port
from tests.conftest import ROOT, DemoData
from tests.startup import Run, run_all

FIGURES = logging.getLogger("fault-figures")
SECRET = "Zq9-hunter2"
DEADLINE_S = 180  # a loaded 2-core machine needs a minute for the torch imports
# What Kubernetes injects into every pod of a namespace with a Service named "detector".
SERVICE_LINKS = {
    "DETECTOR_SERVICE_HOST": "10.96.0.12",
    "DETECTOR_SERVICE_PORT": "9108",
    "DETECTOR_PORT": "tcp://10.96.0.12:9108",
    "DETECTOR_PORT_9108_TCP_ADDR": "10.96.0.12",
}


def _config(tmp: Path, name: str, text: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> dict[str, Run]:
    tmp = tmp_path_factory.mktemp("startup")
    model = demo_data.model.path
    base = _config(
        tmp,
        "base",
        f"model: {{path: '{model}'}}\nscoring: {{device: cpu}}\n"
        "metrics: {host: 127.0.0.1, port: 0}\n",
    )
    secret_line = _config(
        tmp,
        "secret-line",
        f"model: {{path: '{model}'}}\nkafka:\n  sasl_password: @{SECRET}: x\n",
    )
    missing_model = _config(
        tmp,
        "missing-model",
        f"model: {{path: '{tmp / 'no-such-model'}'}}\nscoring: {{device: cpu}}\n"
        "metrics: {host: 127.0.0.1, port: 0}\n",
    )
    nobody = f"127.0.0.1:{free_port()}"
    quick = {"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": json.dumps([nobody])}
    quick["DETECTOR_KAFKA__BOOTSTRAP_TIMEOUT_MS"] = "2000"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    detector = [sys.executable, "-m", "detector"]
    replay = [*detector, "replay", str(demo_data.stream_csv), "--topic", "t"]
    trainer_fit = [sys.executable, "-m", "trainer", "fit", "--config", "configs/trainer.yaml"]
    from_kafka = ["--from-kafka", "t", "--since", "0", "--until", "1"]
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "bad_topic": (
            [*detector, "run", "--config", str(base)],
            {"DETECTOR_KAFKA__ALERTS_TOPIC": "bad topic"},
        ),
        "long_topic": (
            [*detector, "run", "--config", str(base)],
            {"DETECTOR_KAFKA__READINGS_TOPICS": json.dumps(["r" * 300])},
        ),
        "missing_cafile": (
            [*detector, "run", "--config", str(base)],
            {
                "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SSL",
                "DETECTOR_KAFKA__SSL_CAFILE": str(tmp / "no-ca.pem"),
            },
        ),
        "secret_line": ([*detector, "run", "--config", str(secret_line)], {}),
        "not_a_port": (
            [*detector, "run", "--config", str(base)],
            {"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": '["localhost:notaport"]'},
        ),
        "port_in_use": (
            [*detector, "run", "--config", str(base)],
            {"DETECTOR_METRICS__PORT": str(busy.getsockname()[1])},
        ),
        "unknown_host": (
            [*detector, "run", "--config", str(base)],
            {"DETECTOR_METRICS__HOST": "no-such-host.invalid"},
        ),
        "unreachable": ([*detector, "run", "--config", str(base)], quick),
        "unreachable_confluent": (
            [*detector, "run", "--config", str(base)],
            {**quick, "DETECTOR_KAFKA__CLIENT": "confluent-kafka"},
        ),
        # A mistake is reported as one even while the broker is down: checked before connecting.
        "bad_config_unreachable": (
            [*detector, "run", "--config", str(base)],
            {**quick, "DETECTOR_SCORING__MAX_BATCH_SIZE": "-1"},
        ),
        "missing_model_unreachable": (
            [*detector, "run", "--config", str(missing_model)],
            quick,
        ),
        "replay_not_a_port": (
            [*replay, "--bootstrap-servers", "localhost:notaport"],
            {},
        ),
        # replay reads the daemon's config the same way, without seconds of torch imports.
        "service_links": (
            [*replay, "--config", str(base)],
            {
                **quick,
                **SERVICE_LINKS,
                "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN",
                "DETECTOR_KAFKA__SASL_USERNAME": "detector",
                "DETECTOR_KAFKA__SASL_PASSWORD": f"[{SECRET}",
            },
        ),
        "trainer_not_a_port": (
            [*trainer_fit, *from_kafka, "--bootstrap-servers", "localhost:notaport"],
            {},
        ),
        # The retraining CronJob's way: Kafka settings (here the 2 s timeout) from a detector config.
        "trainer_unreachable": (
            [*trainer_fit, *from_kafka, "--kafka-config", str(base), "--output", str(tmp / "m")],
            quick,
        ),
    }
    try:
        results = run_all(cases, DEADLINE_S)
    finally:
        busy.close()
    for name, run in results.items():
        last = run.lines[-1] if run.lines else ""
        FIGURES.info(
            f"{name}: exit {run.code}, {len(run.lines)} stderr lines, by {run.seconds:.1f} s: {last}"
        )
    return results


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("bad_topic", "kafka.alerts_topic"),
        ("long_topic", "kafka.readings_topics"),
        ("missing_cafile", "kafka.ssl_cafile"),
        ("not_a_port", "kafka.bootstrap_servers"),
    ],
)
def test_invalid_kafka_settings_exit_2_before_connecting(
    runs: dict[str, Run], case: str, field: str
) -> None:
    run = runs[case]
    line = run.error_line()
    assert field in line
    assert len(run.lines) == 1


def test_yaml_error_on_a_password_line_does_not_show_the_password(runs: dict[str, Run]) -> None:
    run = runs["secret_line"]
    line = run.error_line()
    assert "invalid YAML at line 3, column 18" in line
    assert "Zq9" not in run.stderr and "hunter2" not in run.stderr
    assert len(run.lines) == 1


@pytest.mark.parametrize("case", ["port_in_use", "unknown_host"])
def test_metrics_address_that_cannot_be_bound_exits_2(runs: dict[str, Run], case: str) -> None:
    assert "cannot serve metrics" in runs[case].error_line()


def test_unreachable_bootstrap_exits_69_naming_the_servers(runs: dict[str, Run]) -> None:
    run = runs["unreachable"]
    line = run.error_line(code=EXIT_UNAVAILABLE)
    assert "cannot reach Kafka" in line and "127.0.0.1:" in line
    assert "within 2 s (kafka.bootstrap_timeout_ms)" in line
    assert "ECONNREFUSED" in line  # kafka-python's reason, not its 14 lines of retries
    assert [other for other in run.lines if " INFO " not in other] == [line]


def test_unreachable_bootstrap_exits_69_with_librdkafka_too(runs: dict[str, Run]) -> None:
    run = runs["unreachable_confluent"]
    line = run.error_line(code=EXIT_UNAVAILABLE)
    assert "cannot reach Kafka" in line and "127.0.0.1:" in line
    assert "within 2 s (kafka.bootstrap_timeout_ms)" in line
    # librdkafka's own retry lines are held back like kafka-python's.
    assert [other for other in run.lines if " INFO " not in other] == [line]


def test_service_links_and_a_bracketed_password_are_no_config_errors(
    runs: dict[str, Run],
) -> None:
    run = runs["service_links"]
    line = run.error_line("detector replay", code=EXIT_UNAVAILABLE)
    assert "cannot reach Kafka" in line  # the configuration was accepted
    assert "Zq9" not in run.stderr and "hunter2" not in run.stderr
    assert "DETECTOR_SERVICE_HOST" in run.stderr and "10.96.0.12" not in run.stderr


def test_replay_bad_bootstrap_exits_2(runs: dict[str, Run]) -> None:
    line = runs["replay_not_a_port"].error_line("detector replay")
    assert "bootstrap_servers" in line


def test_trainer_bad_bootstrap_exits_2_with_one_line(runs: dict[str, Run]) -> None:
    run = runs["trainer_not_a_port"]
    line = run.error_line("trainer")
    assert "bootstrap_servers" in line
    assert "input_value" not in run.stderr and "notaport" not in run.stderr


def test_trainer_unreachable_broker_exits_69(runs: dict[str, Run]) -> None:
    line = runs["trainer_unreachable"].error_line("trainer", code=EXIT_UNAVAILABLE)
    assert "cannot read 't' from Kafka" in line and "127.0.0.1:" in line


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("bad_config_unreachable", "scoring.max_batch_size"),
        ("missing_model_unreachable", "cannot load model"),
    ],
)
def test_bad_config_or_model_exits_2_even_with_the_broker_down(
    runs: dict[str, Run], case: str, field: str
) -> None:
    """A restart cannot fix these, so they keep the code supervisors do not restart."""
    run = runs[case]
    assert field in run.error_line(code=EXIT_CONFIG)
    assert "cannot reach Kafka" not in run.stderr


def test_only_an_unreachable_broker_exits_69(runs: dict[str, Run]) -> None:
    unavailable = {"unreachable", "unreachable_confluent", "service_links", "trainer_unreachable"}
    codes = {name: run.code for name, run in runs.items()}
    assert codes == {
        name: EXIT_UNAVAILABLE if name in unavailable else EXIT_CONFIG for name in runs
    }, codes


@pytest.mark.parametrize("manifest", ["deployment.yaml", "trainer-job.yaml"])
def test_pods_get_no_service_link_variables(manifest: str) -> None:
    (document,) = yaml.safe_load_all((ROOT / "deploy" / "k8s" / manifest).read_text())
    assert document["spec"]["template"]["spec"]["enableServiceLinks"] is False
