"""Start ``python -m detector run`` as a child process, as deployed (demo, soak, benchmarks, tests).

Settings reach the child as ``DETECTOR_*`` environment overrides of a YAML config, the same way
an operator's deployment sets them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["daemon_env", "spawn_daemon"]


def daemon_env(
    bootstrap: str,
    readings_topic: str,
    alerts_topic: str,
    model: Path,
    metrics_port: int,
    **overrides: str,
) -> dict[str, str]:
    """This process's environment plus the overrides that point a daemon at one broker.

    The consumer-group timeouts are short so that a group on a local broker forms in about
    3 s instead of about 23 s; ``overrides`` (``DETECTOR_...`` names) win over everything.
    """
    return {
        **os.environ,
        "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": json.dumps(bootstrap.split(",")),
        "DETECTOR_KAFKA__READINGS_TOPICS": json.dumps([readings_topic]),
        "DETECTOR_KAFKA__ALERTS_TOPIC": alerts_topic,
        "DETECTOR_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DETECTOR_KAFKA__HEARTBEAT_INTERVAL_MS": "2000",
        "DETECTOR_MODEL__PATH": str(model),
        "DETECTOR_METRICS__HOST": "127.0.0.1",
        "DETECTOR_METRICS__PORT": str(metrics_port),
        **overrides,
    }


def spawn_daemon(
    config: Path, env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the daemon with ``config`` and ``env``; its stdout and stderr go to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "detector", "run", "--config", str(config)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
