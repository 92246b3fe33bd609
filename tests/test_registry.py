"""Model registry: history written by set_current, list/promote/rollback logic and CLI."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from detector.core.artifact import (
    CANDIDATE_POINTER,
    CURRENT_POINTER,
    HISTORY_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    DataSummary,
    ThresholdInfo,
    resolve_artifact_dir,
    resolve_candidate,
    save_artifact,
)
from detector.core.model import LSTMAutoencoder, ModelSpec
from detector.core.scaling import StandardScaler
from trainer.cli import main
from trainer.registry import (
    HistoryEntry,
    RegistryError,
    VersionInfo,
    clear_candidate,
    current_stack,
    list_versions,
    promote,
    promote_candidate,
    read_candidate,
    read_current,
    read_history,
    rollback,
    rollback_target,
    shadow,
)

SPEC = ModelSpec(n_features=2, hidden_size=4, latent_size=2)
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


def _save(root: Path, version: str, day: int, threshold: float = 0.5) -> None:
    """A tiny real artifact, created ``day`` days after T0 (so list order is known)."""
    torch.manual_seed(day)
    scaler = StandardScaler(mean=np.array([1.0, 2.0]), scale=np.array([1.0, 1.0]))
    metadata: dict[str, Any] = {
        "version": version,
        "created_at": T0 + timedelta(days=day),
        "feature_names": ["a", "b"],
        "window_length": 4,
        "model": SPEC,
        "scaler": scaler.to_dict(),
        "threshold": ThresholdInfo(method="quantile", value=threshold),
        "training_data": DataSummary(
            rows=10, devices=1, time_start=0.0, time_end=9.0, sha256="00" * 32, files=["x.csv"]
        ),
        "validation": {"validation_loss": 0.01 * (day + 1)},
        "torch_version": torch.__version__,
    }
    save_artifact(root, metadata, LSTMAutoencoder(SPEC))


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """Three versions trained in order a, b, c (so c is current)."""
    root = tmp_path / "models"
    for day, version in enumerate(["a", "b", "c"]):
        _save(root, version, day, threshold=0.1 * (day + 1))
    return root


def test_training_appends_history_and_points_current(registry: Path) -> None:
    assert read_current(registry) == "c"
    assert [(e.action, e.version) for e in read_history(registry)] == [
        ("save", "a"),
        ("save", "b"),
        ("save", "c"),
    ]
    stamp = read_history(registry)[0].at
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).tzinfo is not None


def test_list_versions_oldest_first_with_metadata(registry: Path) -> None:
    versions = list_versions(registry)
    assert [v.version for v in versions] == ["a", "b", "c"]
    assert versions[1].threshold == pytest.approx(0.2)
    assert versions[1].validation_loss == pytest.approx(0.02)
    assert versions[1].created_at == T0 + timedelta(days=1)
    assert all(v.error is None for v in versions)


def test_promote_checks_and_switches_what_the_detector_loads(registry: Path) -> None:
    assert promote(registry, "a") == "c"
    assert read_current(registry) == "a"
    assert resolve_artifact_dir(registry) == (registry / "a").resolve()
    assert read_history(registry)[-1].action == "promote"


def test_promote_unknown_or_path_like_version_is_refused(registry: Path) -> None:
    for bad in ("nope", "../models/a", "."):
        with pytest.raises(RegistryError, match="unknown version"):
            promote(registry, bad)
    assert read_current(registry) == "c"


def test_promote_refuses_a_version_that_does_not_load(registry: Path) -> None:
    weights = registry / "a" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(RegistryError, match="does not load"):
        promote(registry, "a")
    assert read_current(registry) == "c"
    assert len(read_history(registry)) == 3


def test_rollback_walks_back_through_history(registry: Path) -> None:
    assert rollback(registry) == ("c", "b")
    assert rollback(registry) == ("b", "a")
    with pytest.raises(RegistryError, match="no earlier version"):
        rollback(registry)
    assert read_current(registry) == "a"
    assert resolve_artifact_dir(registry) == (registry / "a").resolve()


def test_rollback_undoes_a_promote(registry: Path) -> None:
    promote(registry, "a")
    assert rollback(registry) == ("a", "c")


def test_rollback_skips_deleted_versions(registry: Path) -> None:
    shutil.rmtree(registry / "b")
    assert rollback(registry) == ("c", "a")


def test_rollback_without_history_goes_to_the_previous_creation(registry: Path) -> None:
    # Registries written before history existed still roll back, by created_at.
    (registry / HISTORY_FILE).unlink()
    assert rollback(registry) == ("c", "b")


def test_rollback_trusts_the_pointer_over_history(registry: Path) -> None:
    # Someone pointed current at "a" by hand: rolling back must leave "a", towards "c".
    (registry / CURRENT_POINTER).write_text("a\n")
    assert rollback(registry) == ("a", "c")


def test_current_stack_replays_pushes_and_pops() -> None:
    def entries(*pairs: tuple[str, str]) -> list[HistoryEntry]:
        return [HistoryEntry("t", action, version) for action, version in pairs]

    history = entries(("save", "a"), ("save", "b"), ("promote", "b"), ("save", "c"))
    assert current_stack(history, "c") == ["a", "b", "c"]
    history += entries(("rollback", "b"))
    assert current_stack(history, "b") == ["a", "b"]
    assert current_stack(history, "x") == ["a", "b", "x"]
    assert current_stack([], "a") == ["a"]
    versions = [VersionInfo("a"), VersionInfo("b"), VersionInfo("c")]
    assert rollback_target(history, "b", versions) == "a"


def test_cli_list_marks_current(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--models", str(registry)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "THRESHOLD", "VAL_LOSS"]
    rows = {line.split()[-4]: line for line in lines[1:]}
    assert rows["c"].startswith("*") and not rows["a"].startswith("*")
    assert "2024-03-02T12:00:00Z" in rows["b"] and "0.2" in rows["b"]


def test_cli_promote_and_rollback(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["promote", "a", "--models", str(registry)]) == 0
    assert "c -> a" in capsys.readouterr().out
    assert main(["rollback", "--models", str(registry)]) == 0
    assert "a -> c" in capsys.readouterr().out
    assert read_current(registry) == "c"


def test_cli_errors_exit_2_with_a_message(
    registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["promote", "zzz", "--models", str(registry)]) == 2
    assert "unknown version 'zzz'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["list", "--models", str(empty)]) == 2
    assert "no model versions" in capsys.readouterr().err
    assert main(["rollback", "--models", str(empty)]) == 2
    assert "no model versions" in capsys.readouterr().err
    assert main(["list", "--models", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_promote_the_file_system_refuses_is_one_line_and_leaves_current(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registry the trainer may not write (here its temporary pointer path is taken)."""
    (registry / ".current.tmp").mkdir()
    assert main(["promote", "a", "--models", str(registry)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the current pointer" in err and "current is c" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert read_current(registry) == "c"
    assert main(["rollback", "--models", str(registry)]) == 2
    assert "cannot write the current pointer" in capsys.readouterr().err


def test_list_does_not_parse_an_oversized_metadata_file(registry: Path) -> None:
    """``trainer list`` reads every version: a padded 8 MiB metadata.json is shown as an error."""
    path = registry / "b" / METADATA_FILE
    data = json.loads(path.read_text())
    data["validation"].update({f"pad{i:07d}": 0.0 for i in range(400_000)})
    path.write_text(json.dumps(data))
    versions = {v.version: v for v in list_versions(registry)}
    assert versions["b"].error is not None and "bytes" in versions["b"].error
    assert versions["a"].error is None and versions["c"].error is None
    assert rollback(registry) == ("c", "a")  # the unreadable version is skipped


def test_shadow_points_the_candidate_and_leaves_current_and_history(registry: Path) -> None:
    assert shadow(registry, "b") is None
    assert read_candidate(registry) == "b"
    assert resolve_candidate(registry) == (registry / "b").resolve()
    assert read_current(registry) == "c"
    assert len(read_history(registry)) == 3
    assert shadow(registry, "a") == "b"
    assert clear_candidate(registry) == "a"
    assert resolve_candidate(registry) is None
    assert clear_candidate(registry) is None  # clearing twice is not an error


def test_shadow_refuses_current_unknown_and_broken_versions(registry: Path) -> None:
    with pytest.raises(RegistryError, match="is the current version"):
        shadow(registry, "c")
    with pytest.raises(RegistryError, match="unknown version"):
        shadow(registry, "../models/a")
    weights = registry / "a" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(RegistryError, match="does not load, candidate unchanged"):
        shadow(registry, "a")
    assert read_candidate(registry) is None


def test_promote_candidate_makes_it_current_and_removes_the_pointer(registry: Path) -> None:
    shadow(registry, "a")
    assert promote_candidate(registry) == ("c", "a")
    assert read_current(registry) == "a"
    assert not (registry / CANDIDATE_POINTER).exists()
    assert (read_history(registry)[-1].action, read_history(registry)[-1].version) == (
        "promote",
        "a",
    )
    # Rollback returns to the version current before the candidate was promoted.
    assert rollback(registry) == ("a", "c")
    with pytest.raises(RegistryError, match="no candidate"):
        promote_candidate(registry)


def test_promoting_the_candidate_by_name_also_ends_its_shadowing(registry: Path) -> None:
    shadow(registry, "b")
    promote(registry, "b")
    assert read_candidate(registry) is None
    shadow(registry, "a")
    promote(registry, "c")  # another version: the candidate stays
    assert read_candidate(registry) == "a"


def test_cli_shadow_promote_candidate_and_list(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["shadow", "a", "--models", str(registry)]) == 0
    assert "candidate: (none) -> a" in capsys.readouterr().out
    assert main(["list", "--models", str(registry)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[-4]: line.split()[:-4] for line in lines[1:4]}
    assert rows == {"a": ["c"], "b": [], "c": ["*"]}
    assert "candidate (c): a" in lines[4]
    assert main(["promote", "--candidate", "--models", str(registry)]) == 0
    assert "current: c -> a" in capsys.readouterr().out
    assert read_current(registry) == "a" and read_candidate(registry) is None
    assert main(["shadow", "b", "--models", str(registry)]) == 0
    assert main(["shadow", "--clear", "--models", str(registry)]) == 0
    assert "candidate: b -> (none)" in capsys.readouterr().out.splitlines()[-1]
    assert read_candidate(registry) is None


def test_cli_candidate_errors_are_one_line_exit_2(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, message in [
        (["promote", "--candidate"], "no candidate in"),
        (["promote", "a", "--candidate"], "either VERSION or --candidate"),
        (["promote"], "either VERSION or --candidate"),
        (["shadow"], "either VERSION or --clear"),
        (["shadow", "a", "--clear"], "either VERSION or --clear"),
        (["shadow", "c"], "is the current version"),
        (["shadow", "zzz"], "unknown version 'zzz'"),
    ]:
        assert main([*argv, "--models", str(registry)]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert read_current(registry) == "c" and read_candidate(registry) is None


def _tiny_fit_config(tmp_path: Path, registry: Path) -> Path:
    """A trainer config that fits in about a second: 200 rows, two epochs, no step minimum."""
    steps = np.arange(200)
    rng = np.random.default_rng(0)
    csv = tmp_path / "normal.csv"
    pd.DataFrame(
        {"ts": steps.astype(float), "flow": np.sin(steps / 5) + 0.1 * rng.normal(size=200)}
    ).to_csv(csv, index=False)
    config = tmp_path / "trainer.yaml"
    config.write_text(
        f"data: {{paths: [{csv}]}}\n"
        "window: {length: 16, stride: 2}\n"
        "model: {hidden_size: 8, latent_size: 4}\n"
        "training: {epochs: 2, min_steps: 0, device: cpu}\n"
        f"output: {{dir: {registry}}}\n"
    )
    return config


def test_fit_promote_shadow_makes_the_new_version_the_candidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "models"
    config = _tiny_fit_config(tmp_path, registry)
    fit = ["fit", "--config", str(config), "--no-progress", "--promote", "shadow"]
    # The first version has nothing to be shadowed beside: it becomes current.
    assert main(fit) == 0
    assert "now current (no current model to shadow)" in capsys.readouterr().out
    first = read_current(registry)
    assert first is not None and read_candidate(registry) is None
    assert main(fit) == 0
    out = capsys.readouterr().out
    assert f"candidate, scored in shadow beside current {first}" in out
    assert read_current(registry) == first
    candidate = read_candidate(registry)
    assert candidate not in (None, first)
    assert resolve_candidate(registry) == (registry / str(candidate)).resolve()
    assert [e.action for e in read_history(registry)] == ["save"]
    assert main(["promote", "--candidate", "--models", str(registry)]) == 0
    assert read_current(registry) == candidate and read_candidate(registry) is None
