"""The layout keeps its promise: the pure cores import no Kafka, the daemon no developer tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_cores_import_no_kafka() -> None:
    modules = sorted(
        p.stem for p in (ROOT / "detector" / "core").glob("*.py") if p.stem != "__init__"
    )
    assert len(modules) >= 10
    imported = _imported_after("\n".join(f"import detector.core.{m}" for m in modules))
    assert not {m for m in imported if m == "kafka" or m.startswith("kafka.")}
    assert "detector.core.scoring" in imported


def test_the_daemon_and_trainer_import_no_developer_tools() -> None:
    imported = _imported_after("import detector.daemon, detector.cli, trainer.cli, trainer.fit")
    assert "detector.daemon" in imported
    assert not {m for m in imported if m.startswith("detector_devtools")}
