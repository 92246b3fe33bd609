"""Start-up runs for tests: start many commands at once and read how each ended.

Each ``python -m detector run`` pays seconds of torch imports before it fails, so the start-up
suites (tests/test_startup_errors.py, tests/test_kafka_security.py) start all their cases
together and then collect them.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from detector.exits import EXIT_CONFIG
from tests.conftest import ROOT

__all__ = ["Run", "run_all"]

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Run:
    """How one start-up ended: exit code (``None``: still running at the deadline), stderr, time."""

    code: int | None
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        """Non-empty stderr lines."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def error_line(self, program: str = "detector", code: int = EXIT_CONFIG) -> str:
        """The single line saying why; fails unless the exit is ``code``, with one line, no traceback."""
        assert self.code == code, f"exit {self.code} after {self.seconds:.1f} s:\n{self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        mine = [line for line in self.lines if line.startswith(f"{program}")]
        assert len(mine) == 1, self.stderr
        assert self.lines[-1] == mine[0], self.stderr
        return mine[0]


def run_all(
    cases: Mapping[Key, tuple[list[str], Mapping[str, str]]], deadline_s: float
) -> dict[Key, Run]:
    """Run every ``(argv, env)`` at once from the repository root, each with this environment
    less its ``DETECTOR_`` and ``TRAINER_`` variables plus ``env``; kill what is left at the
    deadline."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DETECTOR_", "TRAINER_"))}
    started = time.monotonic()
    processes = {
        key: subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**clean, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, (argv, env) in cases.items()
    }
    results: dict[Key, Run] = {}
    for key, process in processes.items():
        try:
            _, stderr = process.communicate(
                timeout=max(deadline_s - (time.monotonic() - started), 1)
            )
            results[key] = Run(process.returncode, stderr, time.monotonic() - started)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            results[key] = Run(None, stderr, time.monotonic() - started)
    return results
