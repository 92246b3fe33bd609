"""Model artifact save/load/verification, and the Scorer built on a loaded artifact."""

from __future__ import annotations

import json
import os
import pickle
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from detector.core.artifact import (
    CURRENT_POINTER,
    HISTORY_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    Artifact,
    ArtifactError,
    ArtifactMetadata,
    DataSummary,
    ThresholdInfo,
    load_artifact,
    resolve_artifact_dir,
    save_artifact,
    set_current,
    sha256_file,
)
from detector.core.model import LSTMAutoencoder, ModelSpec, weight_shapes
from detector.core.scaling import StandardScaler
from detector.core.scoring import Scorer, top_sensor_shares, window_scores

FEATURES = ["temperature", "pressure", "vibration"]
WINDOW = 5
SPEC = ModelSpec(n_features=3, hidden_size=4, latent_size=2)


def _model(seed: int = 0, spec: ModelSpec = SPEC) -> LSTMAutoencoder:
    torch.manual_seed(seed)
    return LSTMAutoencoder(spec)


def _scaler() -> StandardScaler:
    return StandardScaler(mean=np.array([60.0, 1.5, 0.2]), scale=np.array([5.0, 0.1, 0.05]))


def _metadata(version: str = "v1", **changes: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "version": version,
        "created_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "feature_names": FEATURES,
        "window_length": WINDOW,
        "model": SPEC,
        "scaler": _scaler().to_dict(),
        "threshold": ThresholdInfo(
            method="quantile",
            value=0.25,
            params={"quantile": 0.99, "margin": 1.2},
            error_summary={"mean": 0.1, "p99": 0.2},
        ),
        "training_data": DataSummary(
            rows=1000,
            devices=2,
            time_start=1.7e9,
            time_end=1.7e9 + 999,
            sha256="ab" * 32,
            files=["data/normal.csv"],
        ),
        "validation": {"validation_loss": 0.05},
        "torch_version": torch.__version__,
    }
    metadata.update(changes)
    return metadata


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry directory with one saved version ``v1``."""
    save_artifact(tmp_path / "models", _metadata(), _model())
    return tmp_path / "models"


def _edit_metadata(directory: Path, **changes: Any) -> None:
    path = directory / METADATA_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_round_trip(tmp_path: Path) -> None:
    model = _model()
    path = save_artifact(tmp_path / "models", _metadata(), model)
    assert path == tmp_path / "models" / "v1"
    assert (tmp_path / "models" / CURRENT_POINTER).read_text().strip() == "v1"

    artifact = load_artifact(tmp_path / "models")
    assert artifact.version == "v1"
    assert artifact.path == path.resolve()
    meta = artifact.metadata
    assert meta.feature_names == FEATURES
    assert meta.window_length == WINDOW
    assert meta.model == SPEC
    assert meta.threshold.value == 0.25
    assert meta.threshold.params == {"quantile": 0.99, "margin": 1.2}
    assert meta.training_data.files == ["data/normal.csv"]
    assert meta.created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert meta.weights_sha256 == sha256_file(path / WEIGHTS_FILE)
    np.testing.assert_array_equal(artifact.scaler.mean, _scaler().mean)
    np.testing.assert_array_equal(artifact.scaler.scale, _scaler().scale)
    _assert_same_weights(artifact.model, model)
    assert not artifact.model.training


def test_loaded_model_reconstructs_like_the_saved_one(registry: Path) -> None:
    windows = torch.randn(4, WINDOW, 3)
    with torch.no_grad():
        expected = _model()(windows)
        actual = load_artifact(registry).model(windows)
    assert torch.equal(actual, expected)


def test_resolve_artifact_dir_accepts_registry_and_version_dir(registry: Path) -> None:
    version_dir = registry / "v1"
    assert resolve_artifact_dir(registry) == version_dir.resolve()
    assert resolve_artifact_dir(version_dir) == version_dir
    assert load_artifact(version_dir).version == "v1"


def test_current_follows_the_newest_save_and_set_current(registry: Path) -> None:
    save_artifact(registry, _metadata("v2"), _model(seed=1))
    assert load_artifact(registry).version == "v2"
    set_current(registry, "v1")
    assert load_artifact(registry).version == "v1"
    with pytest.raises(ArtifactError):
        set_current(registry, "v9")
    assert load_artifact(registry).version == "v1"


def test_existing_version_is_not_overwritten(registry: Path) -> None:
    before = {p.name: p.read_bytes() for p in (registry / "v1").iterdir()}
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(registry, _metadata(), _model(seed=1))
    assert {p.name: p.read_bytes() for p in (registry / "v1").iterdir()} == before
    _assert_same_weights(load_artifact(registry).model, _model())
    # No staging leftovers, and the refused save did not touch the pointer or its history.
    assert sorted(p.name for p in registry.iterdir()) == [CURRENT_POINTER, HISTORY_FILE, "v1"]
    assert len((registry / HISTORY_FILE).read_text().splitlines()) == 1


def test_invalid_metadata_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="n_features"):
        save_artifact(tmp_path, _metadata(feature_names=["a", "b"]), _model())
    assert not (tmp_path / "v1").exists()
    assert list(tmp_path.iterdir()) == []  # no staging leftovers, no pointer


def test_flipped_byte_in_weights_is_rejected(registry: Path) -> None:
    weights = registry / "v1" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256") as info:
        load_artifact(registry)
    assert "modified" in str(info.value)


def test_truncated_weights_are_rejected(registry: Path) -> None:
    weights = registry / "v1" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(registry)


def test_missing_weights_are_rejected(registry: Path) -> None:
    (registry / "v1" / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(registry)


def test_weights_of_another_architecture_are_rejected(registry: Path, tmp_path: Path) -> None:
    """Even with a matching hash, weights must fit the spec exactly (strict load)."""
    other_spec = ModelSpec(n_features=3, hidden_size=5, latent_size=2)
    other = save_artifact(tmp_path / "other", _metadata(model=other_spec), _model(spec=other_spec))
    target = registry / "v1" / WEIGHTS_FILE
    target.write_bytes((other / WEIGHTS_FILE).read_bytes())
    _edit_metadata(registry / "v1", weights_sha256=sha256_file(target))
    with pytest.raises(ArtifactError, match="do not fit the model spec"):
        load_artifact(registry)


def test_metadata_with_mismatched_feature_count_is_rejected(registry: Path) -> None:
    _edit_metadata(registry / "v1", feature_names=["temperature", "pressure"])
    with pytest.raises(ArtifactError, match="n_features"):
        load_artifact(registry)


def test_metadata_with_duplicate_features_is_rejected(registry: Path) -> None:
    _edit_metadata(registry / "v1", feature_names=["a", "a", "b"])
    with pytest.raises(ArtifactError, match="duplicates"):
        load_artifact(registry)


@pytest.mark.parametrize("weights_file", ["../x", "/etc/passwd", "..", "sub/weights.safetensors"])
def test_weights_file_outside_the_directory_is_rejected(registry: Path, weights_file: str) -> None:
    _edit_metadata(registry / "v1", weights_file=weights_file)
    with pytest.raises(ArtifactError, match="weights_file"):
        load_artifact(registry)


def test_unsupported_format_version_is_rejected(registry: Path) -> None:
    _edit_metadata(registry / "v1", format_version=99)
    with pytest.raises(ArtifactError, match="format 99"):
        load_artifact(registry)


@pytest.mark.parametrize("target", ["../elsewhere", "..", ".", "/tmp", "v1/../../elsewhere"])
def test_current_pointing_outside_the_registry_is_rejected(
    registry: Path, tmp_path: Path, target: str
) -> None:
    # A real artifact outside the registry, so only the containment check can stop it.
    save_artifact(tmp_path / "elsewhere-parent", _metadata("elsewhere"), _model())
    (tmp_path / "elsewhere").symlink_to(tmp_path / "elsewhere-parent" / "elsewhere")
    (registry / CURRENT_POINTER).write_text(target + "\n")
    with pytest.raises(ArtifactError, match="outside"):
        resolve_artifact_dir(registry)


def test_current_naming_a_missing_version_is_rejected(registry: Path) -> None:
    (registry / CURRENT_POINTER).write_text("v7\n")
    with pytest.raises(ArtifactError, match="v7"):
        load_artifact(registry)


def test_directory_without_artifact_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a model artifact"):
        load_artifact(tmp_path)


def test_weights_are_safetensors_not_pickle(registry: Path) -> None:
    data = (registry / "v1" / WEIGHTS_FILE).read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    assert data[8:9] == b"{"
    header = json.loads(data[8 : 8 + header_length])
    assert header["__metadata__"] == {"version": "v1"}
    assert {name for name in header if name != "__metadata__"} == set(_model().state_dict())
    assert not data.startswith(b"\x80")  # pickle protocol 2+ opcode
    assert not data.startswith(b"PK")  # torch.save zip container


def test_loading_never_unpickles(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the artifact loader must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    artifact = load_artifact(registry)
    _assert_same_weights(artifact.model, _model())


# --- Scorer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    parent = tmp_path_factory.mktemp("models")
    save_artifact(parent, _metadata(), _model())
    return load_artifact(parent)


def _raw_windows(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scaler = _scaler()
    return (rng.normal(size=(count, WINDOW, 3)) * scaler.scale + scaler.mean).astype(np.float32)


def test_scorer_sensor_errors_shape_and_meaning(artifact: Artifact) -> None:
    scorer = Scorer.from_artifact(artifact, device="cpu")
    windows = _raw_windows(7)
    errors = scorer.sensor_errors(windows)
    assert errors.shape == (7, 3)
    assert errors.dtype == np.float32
    assert (errors >= 0).all()
    # Same numbers as scaling by hand and reconstructing with the model.
    scaled = torch.from_numpy(artifact.scaler.transform(windows))
    with torch.no_grad():
        expected = (artifact.model(scaled) - scaled).pow(2).mean(dim=1).numpy()
    np.testing.assert_allclose(errors, expected, rtol=1e-5, atol=1e-6)


def test_scorer_empty_batch(artifact: Artifact) -> None:
    errors = Scorer.from_artifact(artifact, device="cpu").sensor_errors(
        np.empty((0, WINDOW, 3), np.float32)
    )
    assert errors.shape == (0, 3)


def test_scorer_chunking_does_not_change_results(artifact: Artifact) -> None:
    windows = _raw_windows(9, seed=1)
    small = Scorer.from_artifact(artifact, device="cpu", max_batch_size=2).sensor_errors(windows)
    large = Scorer.from_artifact(artifact, device="cpu", max_batch_size=1024).sensor_errors(windows)
    np.testing.assert_allclose(small, large, rtol=0, atol=1e-6)


def test_window_scores_is_mean_over_sensors(artifact: Artifact) -> None:
    errors = Scorer.from_artifact(artifact, device="cpu").sensor_errors(_raw_windows(5, seed=2))
    scores = window_scores(errors)
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores, errors.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(window_scores(np.array([[1.0, 2.0, 6.0]])), [3.0])


def test_scorer_rejects_cuda_when_unavailable(artifact: Artifact) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="cuda"):
        Scorer.from_artifact(artifact, device="cuda")


def test_top_sensor_shares_known_values() -> None:
    shares = top_sensor_shares(np.array([1.0, 6.0, 3.0]), FEATURES, 2)
    assert shares == [{"sensor": "pressure", "share": 0.6}, {"sensor": "vibration", "share": 0.3}]
    assert top_sensor_shares(np.zeros(3), FEATURES, 3)[0]["share"] == 0.0


@settings(max_examples=200)
@given(
    errors=arrays(np.float64, 3, elements=st.floats(0, 1e6, allow_nan=False)),
    count=st.integers(1, 3),
)
def test_top_sensor_shares_are_sorted_and_bounded(errors: np.ndarray, count: int) -> None:
    shares = top_sensor_shares(errors, FEATURES, count)
    assert len(shares) == count
    values = [float(item["share"]) for item in shares]
    assert values == sorted(values, reverse=True)
    assert all(0.0 <= value <= 1.0 for value in values)
    # Shares are rounded to 4 decimals, so the sum may exceed 1 by at most the rounding.
    assert sum(values) <= 1.0 + 0.5e-4 * count
    assert len({item["sensor"] for item in shares}) == count
    assert errors[FEATURES.index(str(shares[0]["sensor"]))] == errors.max()


# --- Hostile or broken artifacts (issue 10, items 8-10) ------------------------------------------

NAN, INF = float("nan"), float("inf")


def _edit_nested(directory: Path, section: str, key: str, value: Any) -> None:
    path = directory / METADATA_FILE
    data = json.loads(path.read_text())
    data[section][key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("scaler", "scale", [5.0, 0.0, 0.05], "scale"),
        ("scaler", "scale", [5.0, -0.1, 0.05], "scale"),
        ("scaler", "scale", [5.0, 1e-50, 0.05], "scale"),  # 0 in float32: divides by zero
        ("scaler", "scale", [5.0, INF, 0.05], "scale"),
        ("scaler", "mean", [60.0, NAN, 0.2], "mean"),
        ("scaler", "mean", [60.0, -INF, 0.2], "mean"),
        ("scaler", "mean", [60.0, 1e39, 0.2], "mean"),  # inf in float32
        ("threshold", "value", INF, "threshold"),
        ("scoring", "sensor_scale", [1.0, NAN, 1.0], "sensor_scale"),
        ("scoring", "sensor_scale", [1.0, INF, 1.0], "sensor_scale"),
        ("scoring", "sensor_scale", [1.0, 1e-50, 1.0], "sensor_scale"),
    ],
)
def test_numbers_that_make_scoring_blind_are_refused(
    registry: Path, section: str, key: str, value: Any, reason: str
) -> None:
    """Item 8: a version whose scores would be NaN, inf or never over threshold does not load."""
    if section == "scoring":
        _edit_metadata(registry / "v1", scoring={"aggregation": "mean", key: value})
    else:
        _edit_nested(registry / "v1", section, key, value)
    with pytest.raises(ArtifactError, match=reason):
        load_artifact(registry)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ([0.0, 1.0], [1.0, 2.0]),
        ([0.0, NAN, 1.0], [1.0, 2.0, 3.0]),
        ([0.0, 3.0, 1.0], [1.0, 2.0, 3.0]),
    ],
)
def test_a_training_range_that_does_not_fit_the_sensors_is_refused(
    registry: Path, low: list[float], high: list[float]
) -> None:
    _edit_metadata(registry / "v1", input_range={"low": low, "high": high})
    with pytest.raises(ArtifactError, match="input_range"):
        load_artifact(registry)


def test_weights_with_non_finite_values_are_refused(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    save_artifact(tmp_path / "models", _metadata(), model)
    with pytest.raises(ArtifactError, match="not finite"):
        load_artifact(tmp_path / "models")


def test_spec_is_checked_against_the_weights_header_before_building(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 9: a spec that does not fit the weights is refused without building its model."""
    built: list[ModelSpec] = []
    monkeypatch.setattr(
        "detector.core.artifact.LSTMAutoencoder",
        lambda spec: built.append(spec) or _model(spec=spec),
    )
    _edit_metadata(registry / "v1", model={**SPEC.model_dump(), "hidden_size": 1000})
    with pytest.raises(ArtifactError, match=r"encoder.weight_ih_l0.*4000, 3.*16, 3"):
        load_artifact(registry)
    assert built == []


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ({"hidden_size": 12_000}, "parameters"),
        ({"latent_size": 5_000_000}, "parameters"),
        ({"num_layers": 1000}, "num_layers"),
    ],
)
def test_oversized_model_spec_is_refused(registry: Path, model: dict, reason: str) -> None:
    _edit_metadata(registry / "v1", model={**SPEC.model_dump(), **model})
    with pytest.raises(ArtifactError, match=reason):
        load_artifact(registry)


@pytest.mark.parametrize("length", [4097, 10**9])
def test_window_length_is_bounded(registry: Path, length: int) -> None:
    """Item 9: the daemon allocates per-device buffers of this length; 10^9 exited with 1."""
    _edit_metadata(registry / "v1", window_length=length)
    with pytest.raises(ArtifactError, match="window_length"):
        load_artifact(registry)


def test_oversized_metadata_is_refused_before_it_is_read(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 9: a valid but huge metadata.json (a padded ``validation`` section) is not parsed."""
    _edit_metadata(registry / "v1", validation={f"k{i:07d}": 0.5 for i in range(300_000)})
    assert (registry / "v1" / METADATA_FILE).stat().st_size > 4 << 20
    parsed: list[bytes] = []
    real = ArtifactMetadata.model_validate_json
    monkeypatch.setattr(
        ArtifactMetadata,
        "model_validate_json",
        lambda data, **kw: parsed.append(data) or real(data, **kw),
    )
    with pytest.raises(ArtifactError, match="bytes"):
        load_artifact(registry)
    assert parsed == []


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_saved_artifact_is_readable_by_other_users_under_a_strict_umask(tmp_path: Path) -> None:
    """Item 10: the daemon runs as its own user; safetensors writes 0600 whatever the umask."""
    previous = os.umask(0o077)
    try:
        registry = tmp_path / "registry" / "models"
        save_artifact(registry, _metadata(), _model())
        save_artifact(registry, _metadata("v2"), _model())
        set_current(registry, "v1", action="promote")
    finally:
        os.umask(previous)
    modes = {
        path.relative_to(tmp_path).as_posix(): _mode(path)
        for path in [tmp_path / "registry", *sorted((tmp_path / "registry").rglob("*"))]
    }
    assert modes == {
        "registry": 0o755,
        "registry/models": 0o755,
        f"registry/models/{CURRENT_POINTER}": 0o644,
        f"registry/models/{HISTORY_FILE}": 0o644,
        "registry/models/v1": 0o755,
        f"registry/models/v1/{METADATA_FILE}": 0o644,
        f"registry/models/v1/{WEIGHTS_FILE}": 0o644,
        "registry/models/v2": 0o755,
        f"registry/models/v2/{METADATA_FILE}": 0o644,
        f"registry/models/v2/{WEIGHTS_FILE}": 0o644,
    }
    # An existing registry keeps its mode: operators restrict who reads models with it (for
    # example 0750 and the detector's group).
    restricted = tmp_path / "restricted"
    restricted.mkdir()
    restricted.chmod(0o750)
    save_artifact(restricted, _metadata(), _model())
    assert _mode(restricted) == 0o750


@pytest.mark.parametrize(
    "pointer", [b"x" * 300 + b"\n", b"\xff\xfe\n", b"v1" * 5000], ids=["long", "binary", "huge"]
)
def test_unusable_current_pointer_is_an_artifact_error(registry: Path, pointer: bytes) -> None:
    """A name too long for the file system raised OSError; a non-UTF-8 one UnicodeDecodeError."""
    (registry / CURRENT_POINTER).write_bytes(pointer)
    with pytest.raises(ArtifactError, match=CURRENT_POINTER):
        load_artifact(registry)


def test_current_naming_a_symlink_loop_is_an_artifact_error(registry: Path) -> None:
    """Path.resolve raised RuntimeError ("Symlink loop"), which the model watcher let through."""
    (registry / "loop").symlink_to(registry / "loop")
    (registry / CURRENT_POINTER).write_text("loop\n")
    with pytest.raises(ArtifactError, match="loop"):
        load_artifact(registry)


@pytest.mark.parametrize(
    "spec",
    [SPEC, ModelSpec(n_features=8, hidden_size=24, latent_size=8, num_layers=3)],
    ids=["small", "three-layers"],
)
def test_weight_shapes_are_those_of_the_built_model(spec: ModelSpec) -> None:
    built = {name: tuple(t.shape) for name, t in LSTMAutoencoder(spec).state_dict().items()}
    assert weight_shapes(spec) == built
