"""The versioned model artifact: ``weights.safetensors`` + ``metadata.json`` in one directory.

The trainer writes it with :func:`save_artifact` and the detector reads it with
:func:`load_artifact`; feature order, window length, scaler statistics, how errors become a score
and the threshold live here and nowhere else. Weights are safetensors (no pickle); their sha256 is
checked before they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from detector.model import LSTMAutoencoder, ModelSpec, ScoreSpec
from detector.scaling import StandardScaler

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "weights.safetensors"
CURRENT_POINTER = "current"
# Every change of ``current`` is appended here (``<utc time>\t<action>\t<version>``), so an
# operator can see what ran when and ``trainer rollback`` can return to the version before.
HISTORY_FILE = "history"


class ArtifactError(Exception):
    """The model artifact is missing, corrupt, tampered with or inconsistent."""


class ThresholdInfo(BaseModel):
    """The alert threshold and how it was derived from validation reconstruction errors."""

    model_config = ConfigDict(extra="forbid")

    method: str
    value: float = Field(gt=0)
    params: dict[str, float] = Field(default_factory=dict)
    error_summary: dict[str, float] = Field(default_factory=dict)


class DataSummary(BaseModel):
    """What the model was trained on, so a user can tell two versions apart."""

    model_config = ConfigDict(extra="forbid")

    rows: int
    devices: int
    time_start: float
    time_end: float
    sha256: str
    files: list[str]


class ArtifactMetadata(BaseModel):
    """Contents of ``metadata.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    version: str = Field(min_length=1)
    created_at: datetime
    feature_names: list[str] = Field(min_length=1)
    window_length: int = Field(ge=2)
    model: ModelSpec
    # Absent in artifacts written before it existed: those load with the default mean score.
    scoring: ScoreSpec = Field(default_factory=ScoreSpec)
    scaler: dict[str, list[float]]
    threshold: ThresholdInfo
    training_data: DataSummary
    validation: dict[str, float] = Field(default_factory=dict)
    torch_version: str
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str

    @model_validator(mode="after")
    def _consistent(self) -> ArtifactMetadata:
        n = len(self.feature_names)
        if len(set(self.feature_names)) != n:
            raise ValueError("feature_names contains duplicates")
        if self.model.n_features != n:
            raise ValueError(f"model.n_features={self.model.n_features} but {n} feature names")
        for key in ("mean", "scale"):
            if len(self.scaler.get(key, [])) != n:
                raise ValueError(f"scaler.{key} must have {n} values")
        divisors = self.scoring.sensor_scale
        if divisors is not None and (len(divisors) != n or min(divisors) <= 0):
            raise ValueError(f"scoring.sensor_scale must have {n} values > 0")
        if Path(self.weights_file).name != self.weights_file or self.weights_file in (
            "",
            ".",
            "..",
        ):
            raise ValueError("weights_file must be a plain file name inside the artifact directory")
        return self


@dataclass(frozen=True)
class Artifact:
    """A loaded artifact: metadata, the scaler and the model in eval mode on the CPU."""

    path: Path
    metadata: ArtifactMetadata
    scaler: StandardScaler
    model: LSTMAutoencoder

    @property
    def version(self) -> str:
        """The model version id carried by every alert."""
        return self.metadata.version


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_artifact(
    parent: Path, metadata: dict[str, Any], model: LSTMAutoencoder, make_current: bool = True
) -> Path:
    """Write ``parent/<version>/`` atomically and (by default) point ``parent/current`` at it.

    ``metadata`` holds every :class:`ArtifactMetadata` field except the weights hash, which is
    computed here. The directory appears complete or not at all (temp dir + rename).
    """
    parent.mkdir(parents=True, exist_ok=True)
    version = metadata["version"]
    final = parent / version
    if final.exists():
        raise ArtifactError(f"artifact {final} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=parent))
    try:
        weights = staging / WEIGHTS_FILE
        state = {
            name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
        }
        save_file(state, str(weights), metadata={"version": version})
        complete = ArtifactMetadata.model_validate(
            {**metadata, "weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(weights)}
        )
        (staging / METADATA_FILE).write_text(complete.model_dump_json(indent=2) + "\n")
        staging.chmod(0o755)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if make_current:
        set_current(parent, version)
    return final


def set_current(parent: Path, version: str, action: str = "save") -> None:
    """Atomically point ``parent/current`` (a one-line text file) at ``version``.

    The change is then appended to ``parent/history`` with ``action`` (``save`` from training,
    ``promote``/``rollback`` from the registry commands). The pointer is written first and is the
    truth: a crash in between leaves the history one entry short, and the registry treats the
    pointer as the newest entry when they disagree.
    """
    if not (parent / version / METADATA_FILE).is_file():
        raise ArtifactError(f"no artifact {version!r} in {parent}")
    pointer = parent / f".{CURRENT_POINTER}.tmp"
    pointer.write_text(version + "\n")
    os.replace(pointer, parent / CURRENT_POINTER)
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with (parent / HISTORY_FILE).open("a") as history:
        history.write(f"{stamp}\t{action}\t{version}\n")


def resolve_artifact_dir(path: Path) -> Path:
    """An artifact directory itself, or the version named by ``path/current`` in a registry dir."""
    if (path / METADATA_FILE).is_file():
        return path
    pointer = path / CURRENT_POINTER
    if pointer.is_file():
        version = pointer.read_text().strip()
        candidate = (path / version).resolve()
        if candidate.parent != path.resolve():
            raise ArtifactError(f"{pointer} points outside {path}: {version!r}")
        if (candidate / METADATA_FILE).is_file():
            return candidate
        raise ArtifactError(f"{pointer} names {version!r}, which has no {METADATA_FILE}")
    raise ArtifactError(
        f"{path} is not a model artifact (no {METADATA_FILE} and no {CURRENT_POINTER})"
    )


def load_artifact(path: Path) -> Artifact:
    """Load and verify an artifact; raises :class:`ArtifactError` with the reason."""
    directory = resolve_artifact_dir(Path(path))
    try:
        metadata = ArtifactMetadata.model_validate_json((directory / METADATA_FILE).read_bytes())
    except ValidationError as exc:
        raise ArtifactError(f"{directory / METADATA_FILE} is invalid: {exc}") from None
    if metadata.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format {metadata.format_version} is not supported (expected {FORMAT_VERSION})"
        )
    weights = directory / metadata.weights_file
    if not weights.is_file():
        raise ArtifactError(f"weights file {weights} is missing")
    actual = sha256_file(weights)
    if actual != metadata.weights_sha256:
        raise ArtifactError(
            f"weights file {weights} does not match metadata sha256 "
            f"(expected {metadata.weights_sha256[:12]}…, got {actual[:12]}…): modified or truncated"
        )
    model = LSTMAutoencoder(metadata.model)
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"weights in {weights} do not fit the model spec: {exc}") from None
    model.eval()
    return Artifact(
        path=directory,
        metadata=metadata,
        scaler=StandardScaler.from_dict(metadata.scaler),
        model=model,
    )


def describe(artifact: Artifact) -> str:
    """One line for logs: version, features, window length and threshold."""
    meta = artifact.metadata
    return json.dumps(
        {
            "version": meta.version,
            "features": meta.feature_names,
            "window_length": meta.window_length,
            "threshold": meta.threshold.value,
            "threshold_method": meta.threshold.method,
            "aggregation": meta.scoring.aggregation,
            "normalised": meta.scoring.normalised,
        }
    )
