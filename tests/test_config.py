"""Layered configuration (YAML + environment) for the detector and the trainer, and CLI exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
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
    assert config.alerts.resolve_after == 5
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


def test_env_overrides_nested_mapping_as_json() -> None:
    config = _detector(DETECTOR_ALERTS='{"fire_k": 2, "fire_n": 3}')
    assert (config.alerts.fire_k, config.alerts.fire_n) == (2, 3)
    assert config.alerts.resolve_after == 5  # merged with the file, not replaced


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
