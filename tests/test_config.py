"""Layered configuration (YAML + environment) for the detector and the trainer, and CLI exit codes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from detector.config import ENV_PREFIX, DetectorConfig
from detector.settings import ConfigError, load_settings
from trainer.config import ENV_PREFIX as TRAINER_PREFIX
from trainer.config import TrainerConfig

ROOT = Path(__file__).resolve().parent.parent
DETECTOR_YAML = ROOT / "configs" / "detector.yaml"
TRAINER_YAML = ROOT / "configs" / "trainer.yaml"


def _detector(path: Path | None = DETECTOR_YAML, **environ: str) -> DetectorConfig:
    return load_settings(DetectorConfig, path, ENV_PREFIX, environ=environ)


def _write(tmp_path: Path, text: str, name: str = "detector.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_detector_config_loads() -> None:
    config = _detector()
    assert config.model.path == Path("models/demo")
    assert config.kafka.bootstrap_servers == ["localhost:9092"]
    assert config.kafka.readings_topics == ["sensor-readings"]
    assert config.alerts.resolve_after == 10
    assert config.scoring.max_batch_size == 1024
    assert config.kafka.sasl_password is None


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = _detector(_write(tmp_path, "model:\n  path: /models/x\n"))
    assert config.model.path == Path("/models/x")
    assert config.scoring.device == "auto"
    assert config.alerts.fire_k == config.alerts.fire_n == 1


def test_model_path_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        _detector(_write(tmp_path, "log_level: INFO\n"))


def test_env_overrides_scalar() -> None:
    config = _detector(
        DETECTOR_KAFKA__GROUP_ID="other-group", DETECTOR_SCORING__MAX_BATCH_SIZE="64"
    )
    assert config.kafka.group_id == "other-group"
    assert config.scoring.max_batch_size == 64
    assert config.kafka.client_id == "anomaly-detector"  # siblings from the file are kept


def test_env_overrides_list_as_json() -> None:
    config = _detector(DETECTOR_KAFKA__BOOTSTRAP_SERVERS='["b1:9092", "b2:9092"]')
    assert config.kafka.bootstrap_servers == ["b1:9092", "b2:9092"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("kafka:9092", ["kafka:9092"]),
        ("b1:9092,b2:9092", ["b1:9092", "b2:9092"]),
        (" b1:9092 , b2:9092 ,", ["b1:9092", "b2:9092"]),
    ],
)
def test_env_overrides_a_list_as_kafka_tools_take_it(raw: str, expected: list[str]) -> None:
    config = _detector(DETECTOR_KAFKA__BOOTSTRAP_SERVERS=raw)
    assert config.kafka.bootstrap_servers == expected
    topics = _detector(DETECTOR_KAFKA__READINGS_TOPICS="pumps,fans").kafka.readings_topics
    assert topics == ["pumps", "fans"]


def test_env_overrides_nested_mapping_as_json() -> None:
    config = _detector(DETECTOR_ALERTS='{"fire_k": 2, "fire_n": 3}')
    assert (config.alerts.fire_k, config.alerts.fire_n) == (2, 3)
    assert config.alerts.resolve_after == 10  # merged with the file, not replaced


def test_env_overrides_top_level_and_ignores_other_prefixes() -> None:
    config = _detector(
        DETECTOR_LOG_LEVEL="DEBUG", TRAINER_TRAINING__EPOCHS="x", DETECTOR_="ignored"
    )
    assert config.log_level == "DEBUG"


def test_env_works_without_a_file() -> None:
    config = _detector(None, DETECTOR_MODEL__PATH="/srv/models")
    assert config.model.path == Path("/srv/models")


def test_invalid_json_in_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"DETECTOR_KAFKA__BOOTSTRAP_SERVERS.*JSON"):
        _detector(DETECTOR_KAFKA__BOOTSTRAP_SERVERS="[broken")


def test_error_names_field_and_env_var() -> None:
    with pytest.raises(ConfigError) as info:
        _detector(DETECTOR_SCORING__MAX_BATCH_SIZE="0")
    message = str(info.value)
    assert "scoring.max_batch_size" in message
    assert "DETECTOR_SCORING__MAX_BATCH_SIZE" in message


def test_error_from_file_names_field_but_no_env_var(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {path: m}\nscoring: {max_batch_size: 0}\n")
    with pytest.raises(ConfigError) as info:
        _detector(path, DETECTOR_KAFKA__GROUP_ID="fine")
    message = str(info.value)
    assert "scoring.max_batch_size" in message
    assert "DETECTOR_" not in message


def test_error_in_env_list_element_names_the_env_var() -> None:
    with pytest.raises(ConfigError) as info:
        _detector(DETECTOR_KAFKA__READINGS_TOPICS="[1]")
    message = str(info.value)
    assert "kafka.readings_topics" in message
    assert "(from DETECTOR_KAFKA__READINGS_TOPICS)" in message


def test_every_invalid_field_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        _detector(DETECTOR_SCORING__MAX_BATCH_SIZE="0", DETECTOR_METRICS__PORT="70000")
    assert "scoring.max_batch_size" in str(info.value)
    assert "metrics.port" in str(info.value)


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {path: m}\nscoring: {max_batch_sise: 8}\n")
    with pytest.raises(ConfigError, match=r"scoring\.max_batch_sise"):
        _detector(path)


def test_unknown_env_key_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="DETECTOR_KAFKA__GROUPID"):
        _detector(DETECTOR_KAFKA__GROUPID="g")


def test_fire_k_above_fire_n_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {path: m}\nalerts: {fire_k: 3, fire_n: 2}\n")
    with pytest.raises(ConfigError, match="fire_k"):
        _detector(path)


def test_fire_k_above_fire_n_from_env_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        _detector(DETECTOR_ALERTS__FIRE_K="4")  # the file has fire_n: 1
    assert "fire_k" in str(info.value)
    assert "DETECTOR_ALERTS__FIRE_K" in str(info.value)


@pytest.mark.parametrize(
    "kafka",
    [
        {"DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
        {
            "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN",
        },
        {
            "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN",
            "DETECTOR_KAFKA__SASL_USERNAME": "u",
        },
    ],
)
def test_sasl_without_credentials_is_rejected(kafka: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="sasl"):
        _detector(**kafka)


def test_heartbeat_must_be_below_session_timeout() -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval_ms"):
        _detector(DETECTOR_KAFKA__HEARTBEAT_INTERVAL_MS="20000")


def test_sasl_password_is_secret() -> None:
    config = _detector(
        DETECTOR_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        DETECTOR_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        DETECTOR_KAFKA__SASL_USERNAME="detector",
        DETECTOR_KAFKA__SASL_PASSWORD="hunter2-s3cret",
    )
    password = config.kafka.sasl_password
    assert isinstance(password, SecretStr)
    assert password.get_secret_value() == "hunter2-s3cret"
    for text in (str(config), repr(config), config.model_dump_json()):
        assert "hunter2-s3cret" not in text


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        _detector(tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        _detector(_write(tmp_path, "model: {path: [unclosed\n"))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        _detector(_write(tmp_path, text))


def test_empty_yaml_uses_env_only(tmp_path: Path) -> None:
    config = _detector(_write(tmp_path, ""), DETECTOR_MODEL__PATH="m")
    assert config.model.path == Path("m")


def test_load_config_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from detector.config import load_config

    monkeypatch.setenv("DETECTOR_KAFKA__ALERTS_TOPIC", "alerts-from-env")
    assert load_config(DETECTOR_YAML).kafka.alerts_topic == "alerts-from-env"


# --- trainer -------------------------------------------------------------------------------------


def test_shipped_trainer_config_loads() -> None:
    config = load_settings(TrainerConfig, TRAINER_YAML, TRAINER_PREFIX, environ={})
    assert config.data.paths
    assert config.window.length >= 2
    assert config.threshold.method in ("quantile", "mean_std")
    assert 0 < config.training.validation_fraction < 1


def test_trainer_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.config import load_config

    monkeypatch.setenv("TRAINER_TRAINING__EPOCHS", "5")
    monkeypatch.setenv("TRAINER_DATA__PATHS", '["a.csv", "b.parquet"]')
    config = load_config(TRAINER_YAML)
    assert config.training.epochs == 5
    assert config.data.paths == [Path("a.csv"), Path("b.parquet")]


def test_trainer_rejects_duplicate_sensors() -> None:
    with pytest.raises(ConfigError, match="duplicates"):
        load_settings(
            TrainerConfig,
            TRAINER_YAML,
            TRAINER_PREFIX,
            environ={"TRAINER_DATA__SENSORS": '["a", "a"]'},
        )


def test_trainer_error_names_env_var() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            TrainerConfig, TRAINER_YAML, TRAINER_PREFIX, environ={"TRAINER_TRAINING__EPOCHS": "0"}
        )
    assert "training.epochs" in str(info.value)
    assert "TRAINER_TRAINING__EPOCHS" in str(info.value)


# --- CLI exit codes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliRuns:
    """Exit code and stderr of ``python -m detector run`` for two broken setups."""

    bad_config: tuple[int, str]
    missing_model: tuple[int, str]
    missing_model_path: Path


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> CliRuns:
    """Both CLI runs start in parallel: each pays ~2 s of interpreter and torch start-up."""
    tmp_path = tmp_path_factory.mktemp("cli")
    bad = _write(tmp_path, "model: {path: m}\nscoring: {max_batch_size: -1}\n", "bad.yaml")
    missing = tmp_path / "no-such-model"
    no_model = _write(
        tmp_path, f"model: {{path: '{missing}'}}\nscoring: {{device: cpu}}\n", "no-model.yaml"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "detector", "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for path in (bad, no_model)
    ]
    results = []
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        results.append((process.returncode, stderr))
    return CliRuns(results[0], results[1], missing)


def test_cli_bad_config_exits_2_naming_the_field(cli_runs: CliRuns) -> None:
    code, stderr = cli_runs.bad_config
    assert code == 2
    assert "scoring.max_batch_size" in stderr


def test_cli_missing_model_exits_2_naming_the_model(cli_runs: CliRuns) -> None:
    code, stderr = cli_runs.missing_model
    assert code == 2
    assert "cannot load model" in stderr
    assert str(cli_runs.missing_model_path) in stderr


# --- issue 10: topic names, bootstrap servers, TLS files (items 7 and 15) -------------------------


@pytest.mark.parametrize(
    "name", ["bad topic", "", "x" * 250, ".", "..", "alerts/eu", "alertes-é", "a\nb"]
)
@pytest.mark.parametrize(
    "variable",
    ["DETECTOR_KAFKA__ALERTS_TOPIC", "DETECTOR_KAFKA__DEAD_LETTER_TOPIC"],
)
def test_illegal_topic_name_is_a_config_error(variable: str, name: str) -> None:
    field = variable.removeprefix("DETECTOR_KAFKA__").lower()
    with pytest.raises(ConfigError, match=rf"kafka\.{field}.*\(from {variable}\)"):
        _detector(**{variable: name})


@pytest.mark.parametrize("name", ["bad topic", "", "x" * 250, ".."])
def test_illegal_readings_topic_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.readings_topics"):
        _detector(DETECTOR_KAFKA__READINGS_TOPICS=json.dumps(["ok", name]))


def test_legal_topic_names_are_accepted() -> None:
    longest = "t" * 249
    config = _detector(
        DETECTOR_KAFKA__ALERTS_TOPIC="plant-1.alerts_v2",
        DETECTOR_KAFKA__DEAD_LETTER_TOPIC=longest,
        DETECTOR_KAFKA__READINGS_TOPICS='["a", "B.c-d_e"]',
    )
    assert config.kafka.alerts_topic == "plant-1.alerts_v2"
    assert config.kafka.dead_letter_topic == longest


@pytest.mark.parametrize(
    "server", ["localhost:notaport", "broker:", ":9092", "broker:0", "broker:70000", "", "a b:9092"]
)
def test_malformed_bootstrap_server_is_a_config_error(server: str) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_servers"):
        _detector(DETECTOR_KAFKA__BOOTSTRAP_SERVERS=json.dumps([server]))


def test_bootstrap_server_forms_kafka_accepts() -> None:
    servers = ["broker", "broker-1.kafka.svc:9093", "10.0.0.7:9092", "[::1]:9092"]
    config = _detector(DETECTOR_KAFKA__BOOTSTRAP_SERVERS=json.dumps(servers))
    assert config.kafka.bootstrap_servers == servers


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
@pytest.mark.parametrize("field", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_missing_tls_file_is_a_config_error(tmp_path: Path, protocol: str, field: str) -> None:
    sasl = {
        "DETECTOR_KAFKA__SASL_MECHANISM": "PLAIN",
        "DETECTOR_KAFKA__SASL_USERNAME": "u",
        "DETECTOR_KAFKA__SASL_PASSWORD": "p",
    }
    for path in (tmp_path / "missing.pem", tmp_path):  # absent, and a directory
        with pytest.raises(ConfigError, match=rf"kafka\.{field}.*cannot read"):
            _detector(
                DETECTOR_KAFKA__SECURITY_PROTOCOL=protocol,
                **{f"DETECTOR_KAFKA__{field.upper()}": str(path)},
                **(sasl if protocol == "SASL_SSL" else {}),
            )


def test_readable_tls_files_are_accepted(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    config = _detector(
        DETECTOR_KAFKA__SECURITY_PROTOCOL="SSL",
        DETECTOR_KAFKA__SSL_CAFILE=str(pem),
        DETECTOR_KAFKA__SSL_CERTFILE=str(pem),
        DETECTOR_KAFKA__SSL_KEYFILE=str(pem),
    )
    assert config.kafka.ssl_cafile == pem


def test_tls_files_are_not_checked_without_tls(tmp_path: Path) -> None:
    config = _detector(DETECTOR_KAFKA__SSL_CAFILE=str(tmp_path / "for-later.pem"))
    assert config.kafka.security_protocol == "PLAINTEXT"


# --- issue 10 item 13: no configuration content in error messages --------------------------------

SECRET = "Zq9-hunter2"


@pytest.mark.parametrize(
    "line",
    [
        f"sasl_password: @{SECRET}: x",
        f"sasl_password: %{SECRET}",
        f"sasl_password: `{SECRET}",
        f"sasl_password: {SECRET}: x",
        f"sasl_password: *{SECRET}",
        f"sasl_password: !{SECRET} x",
        f'sasl_password: "{SECRET}\\q"',
        f"sasl_password: [{SECRET}",
    ],
)
def test_yaml_syntax_error_never_echoes_the_line(tmp_path: Path, line: str) -> None:
    path = _write(tmp_path, f"model: {{path: m}}\nkafka:\n  {line}\n")
    with pytest.raises(ConfigError) as info:
        _detector(path)
    message = str(info.value)
    assert "invalid YAML" in message and str(path) in message
    assert "line " in message and "column" in message
    assert "Zq9" not in message and "hunter" not in message
    assert "\n" not in message


def test_yaml_error_points_at_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, f"model: {{path: m}}\nkafka:\n  sasl_password: @{SECRET}: x\n")
    with pytest.raises(ConfigError, match=r"line 3, column 18"):
        _detector(path)


def test_yaml_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"model: {path: m}\nkafka: {sasl_password: caf\xe9}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        _detector(path)


@pytest.mark.parametrize(
    "kafka",
    [
        {"sasl_password": {SECRET: 1}},
        {"sasl_password": [SECRET]},
        {"security_protocol": SECRET},
        {"request_timeout_ms": SECRET},
        {"bootstrap_servers": SECRET},
    ],
)
def test_validation_errors_never_echo_values(tmp_path: Path, kafka: dict) -> None:
    path = _write(tmp_path, yaml.safe_dump({"model": {"path": "m"}, "kafka": kafka}))
    with pytest.raises(ConfigError) as info:
        _detector(path)
    assert "Zq9" not in str(info.value)


def test_every_error_is_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        _detector(DETECTOR_SCORING__MAX_BATCH_SIZE="0", DETECTOR_METRICS__PORT="70000")
    assert "\n" not in str(info.value)


# --- issue 10 item 14: environment variables that are not settings -----------------------------

# What Kubernetes injects into every pod of a namespace with a Service named "detector".
SERVICE_LINKS = {
    "DETECTOR_SERVICE_HOST": "10.96.0.12",
    "DETECTOR_SERVICE_PORT": "9108",
    "DETECTOR_SERVICE_PORT_METRICS": "9108",
    "DETECTOR_PORT": "tcp://10.96.0.12:9108",
    "DETECTOR_PORT_9108_TCP": "tcp://10.96.0.12:9108",
    "DETECTOR_PORT_9108_TCP_ADDR": "10.96.0.12",
    "DETECTOR_PORT_9108_TCP_PORT": "9108",
    "DETECTOR_PORT_9108_TCP_PROTO": "tcp",
}


def test_kubernetes_service_links_are_ignored_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="detector.settings"):
        config = _detector(**SERVICE_LINKS, DETECTOR_KAFKA__GROUP_ID="g")
    assert config.kafka.group_id == "g"
    warnings = [r.getMessage() for r in caplog.records if r.name == "detector.settings"]
    assert len(warnings) == 1
    assert all(name in warnings[0] for name in SERVICE_LINKS)
    assert "10.96.0.12" not in warnings[0] and "tcp:" not in warnings[0]  # names, not values


def test_trainer_ignores_service_links_too() -> None:
    config = load_settings(
        TrainerConfig,
        TRAINER_YAML,
        TRAINER_PREFIX,
        environ={"TRAINER_SERVICE_HOST": "10.0.0.1", "TRAINER_PORT": "tcp://10.0.0.1:80"},
    )
    assert config.training.epochs >= 1


@pytest.mark.parametrize("password", ["[Zq9", "{Zq9", '["Zq9"]', '{"Zq9": 1}', "[]"])
def test_string_settings_from_env_are_literal(password: str) -> None:
    config = _detector(
        DETECTOR_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        DETECTOR_KAFKA__SASL_MECHANISM="PLAIN",
        DETECTOR_KAFKA__SASL_USERNAME="{user}",
        DETECTOR_KAFKA__SASL_PASSWORD=password,
        DETECTOR_KAFKA__GROUP_ID="[group]",
    )
    assert config.kafka.sasl_password is not None
    assert config.kafka.sasl_password.get_secret_value() == password
    assert config.kafka.sasl_username == "{user}"
    assert config.kafka.group_id == "[group]"


def test_invalid_json_error_does_not_echo_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        _detector(DETECTOR_KAFKA__READINGS_TOPICS="[Zq9")
    assert "DETECTOR_KAFKA__READINGS_TOPICS" in str(info.value)
    assert "Zq9" not in str(info.value)
