"""Security settings reach kafka-python; secrets come from env or files and are never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.clients.kafka_python import security_kwargs
from detector.config import DetectorConfig, KafkaConfig
from detector.settings import ConfigError, load_settings
from tests.conftest import ROOT, DemoData

SECRET = "pa55-w0rd-for-tests"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_settings_pass_through(tmp_path: Path, mechanism: str) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    config = KafkaConfig(
        bootstrap_servers=["kafka:9093"],
        security_protocol="SASL_SSL",
        ssl_cafile=ca,
        ssl_check_hostname=False,
        sasl_mechanism=mechanism,
        sasl_username="detector",
        sasl_password=SECRET,
    )
    kwargs = security_kwargs(config)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["ssl_cafile"] == str(ca)
    assert kwargs["ssl_check_hostname"] is False
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "detector"
    assert kwargs["sasl_plain_password"] == SECRET


def test_plaintext_passes_no_security_settings() -> None:
    kwargs = security_kwargs(KafkaConfig())
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert not any(key.startswith(("ssl_", "sasl_")) for key in kwargs)


def test_password_from_a_file_and_from_the_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    base = {
        "DETECTOR_MODEL__PATH": "models",
        "DETECTOR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "DETECTOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "DETECTOR_KAFKA__SASL_USERNAME": "detector",
    }
    from_file = load_settings(
        DetectorConfig,
        None,
        "DETECTOR_",
        {**base, "DETECTOR_KAFKA__SASL_PASSWORD_FILE": str(secret_file)},
    )
    from_env = load_settings(
        DetectorConfig, None, "DETECTOR_", {**base, "DETECTOR_KAFKA__SASL_PASSWORD": SECRET}
    )
    for config in (from_file, from_env):
        assert security_kwargs(config.kafka)["sasl_plain_password"] == SECRET
        assert SECRET not in repr(config) and SECRET not in str(config)
        assert SECRET not in config.model_dump_json()


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sasl_password_file"):
        load_settings(
            DetectorConfig,
            None,
            "DETECTOR_",
            {
                "DETECTOR_MODEL__PATH": "m",
                "DETECTOR_KAFKA__SASL_PASSWORD_FILE": str(tmp_path / "no"),
            },
        )


def test_model_with_other_features_than_configured_is_refused(
    tmp_path: Path, demo_data: DemoData
) -> None:
    config = tmp_path / "detector.yaml"
    config.write_text(
        f"model:\n  path: {demo_data.model.path}\n  expected_features: [pressure, temperature]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "detector", "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "differ from model.expected_features" in result.stderr
