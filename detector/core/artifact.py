"""The versioned model artifact: ``weights.safetensors`` + ``metadata.json`` in one directory.

The trainer writes it with :func:`save_artifact` and the detector reads it with
:func:`load_artifact`; feature order, window length, scaler statistics, how errors become a score
and the threshold live here and nowhere else. Weights are safetensors (no pickle); their sha256 is
checked before they are read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from detector.core.model import LSTMAutoencoder, ModelSpec, ScoreSpec, weight_shapes
from detector.core.scaling import StandardScaler

__all__ = [
    "CANDIDATE_POINTER",
    "CURRENT_POINTER",
    "DIR_MODE",
    "FILE_MODE",
    "FORMAT_VERSION",
    "HISTORY_FILE",
    "MAX_METADATA_BYTES",
    "MAX_POINTER_BYTES",
    "MAX_WEIGHTS_HEADER_BYTES",
    "MAX_WINDOW_LENGTH",
    "METADATA_FILE",
    "WEIGHTS_FILE",
    "Artifact",
    "ArtifactError",
    "ArtifactMetadata",
    "DataSummary",
    "InputRange",
    "ScoreDistribution",
    "ThresholdInfo",
    "check_weights_header",
    "describe",
    "load_artifact",
    "read_metadata",
    "resolve_artifact_dir",
    "resolve_candidate",
    "save_artifact",
    "set_candidate",
    "set_current",
    "sha256_file",
]

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "weights.safetensors"
CURRENT_POINTER = "current"
# A version scored in shadow beside ``current`` (alerts only counted, never published) until it
# is promoted or the pointer is removed.
CANDIDATE_POINTER = "candidate"
# Every change of ``current`` is appended here (``<utc time>\t<action>\t<version>``), so an
# operator can see what ran when and ``trainer rollback`` can return to the version before.
HISTORY_FILE = "history"

# The trainer and the daemon often run as different users (the daemon as its own in the systemd
# setup), and safetensors writes 0600 whatever the umask: every file is made readable by all and
# every directory the trainer creates traversable. An operator restricts access with the mode of
# the registry directory itself (e.g. 0750 and the detector's group), which is never changed.
FILE_MODE = 0o644
DIR_MODE = 0o755

# Bounds checked before anything is read or allocated for a version: generous for a sensor
# autoencoder, small enough that a corrupt or hostile one cannot take the daemon's memory.
MAX_METADATA_BYTES = 4 << 20
MAX_POINTER_BYTES = 1024
MAX_WEIGHTS_HEADER_BYTES = 1 << 20
# An LSTM over more steps is impractical to train, and the daemon holds this many readings per
# device and scores batches of max_batch_size such windows (warm-up alone meets every size).
MAX_WINDOW_LENGTH = 4096
# Scoring runs in float32: statistics outside its range become 0 or inf there.
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


class ArtifactError(Exception):
    """The model artifact is missing, corrupt, tampered with or inconsistent."""


class ThresholdInfo(BaseModel):
    """The alert threshold and how it was derived from validation reconstruction errors."""

    model_config = ConfigDict(extra="forbid")

    method: str
    value: float = Field(gt=0, le=_FLOAT32_MAX, allow_inf_nan=False)
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


class ScoreDistribution(BaseModel):
    """The validation windows' scores in bins: what the daemon's drift watch compares with.

    Bin ``i`` holds scores in ``(edges[i-1], edges[i]]`` (see :mod:`detector.core.drift`).
    """

    model_config = ConfigDict(extra="forbid")

    edges: list[float] = Field(min_length=1, max_length=254)
    shares: list[float]
    windows: int = Field(ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ScoreDistribution:
        if len(self.shares) != len(self.edges) + 1:
            raise ValueError("shares must have one more value than edges")
        if not all(math.isfinite(v) for v in self.edges) or self.edges != sorted(set(self.edges)):
            raise ValueError("edges must be finite and strictly increasing")
        if not all(0 <= v <= 1 for v in self.shares) or abs(sum(self.shares) - 1) > 1e-6:
            raise ValueError("shares must be in [0, 1] and sum to 1")
        return self


class InputRange(BaseModel):
    """Each sensor's least and greatest reading in the training data, in feature order.

    Where a device's range starts (:mod:`detector.core.extremes`): a reading well outside what
    the model was trained on is news from the first window, not only after the device has shown
    its own range.
    """

    model_config = ConfigDict(extra="forbid")

    low: list[float] = Field(min_length=1)
    high: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> InputRange:
        if len(self.low) != len(self.high):
            raise ValueError("low and high must have one value per sensor")
        if not all(math.isfinite(v) for v in (*self.low, *self.high)):
            raise ValueError("low and high must be finite")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError("low must not exceed high")
        return self


class ArtifactMetadata(BaseModel):
    """Contents of ``metadata.json``."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    version: str = Field(min_length=1)
    created_at: datetime
    feature_names: list[str] = Field(min_length=1)
    window_length: int = Field(ge=2, le=MAX_WINDOW_LENGTH)
    model: ModelSpec
    # Absent in artifacts written before it existed: those load with the default mean score.
    scoring: ScoreSpec = Field(default_factory=ScoreSpec)
    scaler: dict[str, list[float]]
    threshold: ThresholdInfo
    training_data: DataSummary
    validation: dict[str, float] = Field(default_factory=dict)
    # Absent in artifacts written before drift watch: the daemon then reports no drift.
    score_distribution: ScoreDistribution | None = None
    # Absent in artifacts written before it existed: the extremes rule then builds each
    # device's range from its own first windows.
    input_range: InputRange | None = None
    # How it was trained: the trainer's settings (window, model, training, scaling, scoring,
    # threshold; the data's columns and sensors, not its files), so a refit on newer data needs
    # nothing else. Absent in artifacts written before it existed: those cannot be refitted.
    training_config: dict[str, Any] | None = None
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
        # A scale of 0 or a NaN mean scores every window NaN (never an alert, a poisoned score
        # sum); an infinite divisor scores them all 0.
        if not all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in self.scaler["mean"]):
            raise ValueError("scaler.mean must be finite float32 values")
        if not all(_positive_float32(v) for v in self.scaler["scale"]):
            raise ValueError(f"scaler.scale must be finite float32 values >= {_FLOAT32_TINY:.3g}")
        if self.input_range is not None and len(self.input_range.low) != n:
            raise ValueError(f"input_range must have {n} values per bound")
        divisors = self.scoring.sensor_scale
        if divisors is not None and (
            len(divisors) != n or not all(_positive_float32(v) for v in divisors)
        ):
            raise ValueError(
                f"scoring.sensor_scale must have {n} finite float32 values >= {_FLOAT32_TINY:.3g}"
            )
        scoring = self.scoring
        if scoring.aggregation == "mahalanobis":
            center, whitening = scoring.error_center, scoring.error_whitening
            if (
                center is None
                or whitening is None
                or len(center) != n
                or len(whitening) != n
                or any(len(row) != n for row in whitening)
                or not all(math.isfinite(v) for v in center)
                or not all(math.isfinite(v) for row in whitening for v in row)
            ):
                raise ValueError(
                    f"scoring: mahalanobis needs a finite error_center of {n} values and an "
                    f"error_whitening of {n} x {n}"
                )
        if Path(self.weights_file).name != self.weights_file or self.weights_file in (
            "",
            ".",
            "..",
        ):
            raise ValueError("weights_file must be a plain file name inside the artifact directory")
        return self


def _positive_float32(value: float) -> bool:
    return math.isfinite(value) and _FLOAT32_TINY <= value <= _FLOAT32_MAX


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


def _make_dirs(path: Path) -> None:
    """Create ``path`` and missing parents as :data:`DIR_MODE`; existing ones keep their mode."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        directory.chmod(DIR_MODE)


def save_artifact(
    parent: Path, metadata: dict[str, Any], model: LSTMAutoencoder, make_current: bool = True
) -> Path:
    """Write ``parent/<version>/`` atomically and (by default) point ``parent/current`` at it.

    ``metadata`` holds every :class:`ArtifactMetadata` field except the weights hash, which is
    computed here. The directory appears complete or not at all (temp dir + rename), readable
    by other users (:data:`FILE_MODE`, :data:`DIR_MODE`).
    """
    _make_dirs(parent)
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
        weights.chmod(FILE_MODE)
        complete = ArtifactMetadata.model_validate(
            {**metadata, "weights_file": WEIGHTS_FILE, "weights_sha256": sha256_file(weights)}
        )
        text = complete.model_dump_json(indent=2) + "\n"
        if len(text.encode()) > MAX_METADATA_BYTES:
            raise ArtifactError(
                f"{METADATA_FILE} would be {len(text.encode())} bytes, more than the detector "
                f"reads ({MAX_METADATA_BYTES})"
            )
        (staging / METADATA_FILE).write_text(text)
        (staging / METADATA_FILE).chmod(FILE_MODE)
        staging.chmod(DIR_MODE)
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
    pointer.chmod(FILE_MODE)
    os.replace(pointer, parent / CURRENT_POINTER)
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    history = os.open(parent / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        # Created under the umask, or by an older trainer: made readable again by its owner.
        if os.fstat(history).st_uid == os.geteuid():
            os.fchmod(history, FILE_MODE)
        os.write(history, f"{stamp}\t{action}\t{version}\n".encode())
    finally:
        os.close(history)


def _read_pointer(pointer: Path) -> str:
    with pointer.open("rb") as handle:
        raw = handle.read(MAX_POINTER_BYTES + 1)
    if len(raw) > MAX_POINTER_BYTES:
        raise ArtifactError(f"{pointer} is longer than {MAX_POINTER_BYTES} bytes")
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        raise ArtifactError(f"{pointer} is not UTF-8 text: {raw[:40]!r}") from None


def resolve_artifact_dir(path: Path, pointer_name: str = CURRENT_POINTER) -> Path:
    """An artifact directory itself, or the version named by ``path/current`` in a registry dir.

    ``pointer_name`` :data:`CANDIDATE_POINTER` follows the shadow candidate instead. Every way
    the pointer can fail to name a readable version in ``path`` is an :class:`ArtifactError`,
    including file-system errors (a name too long, a symlink loop, no permission).
    """
    pointer = path / pointer_name
    try:
        if pointer_name == CURRENT_POINTER and (path / METADATA_FILE).is_file():
            return path
        if not pointer.is_file():
            raise ArtifactError(
                f"{path} is not a model artifact (no {METADATA_FILE} and no {pointer_name})"
            )
        version = _read_pointer(pointer)
        candidate = (path / version).resolve()
        if candidate.parent != path.resolve():
            raise ArtifactError(f"{pointer} points outside {path}: {version!r}")
        if (candidate / METADATA_FILE).is_file():
            return candidate
    except (OSError, RuntimeError) as exc:  # pathlib reports a symlink loop as RuntimeError
        raise ArtifactError(f"cannot follow {pointer}: {_reason(exc)}") from None
    raise ArtifactError(f"{pointer} names {version!r}, which has no {METADATA_FILE}")


def resolve_candidate(path: Path) -> Path | None:
    """The version the registry's ``candidate`` pointer names; ``None`` when there is none.

    A plain artifact directory has no candidate. A pointer that cannot be followed is an
    :class:`ArtifactError`, as for :func:`resolve_artifact_dir`.
    """
    try:
        if (path / METADATA_FILE).is_file() or not (path / CANDIDATE_POINTER).is_file():
            return None
    except OSError as exc:
        raise ArtifactError(f"cannot read {path / CANDIDATE_POINTER}: {_reason(exc)}") from None
    return resolve_artifact_dir(path, CANDIDATE_POINTER)


def set_candidate(parent: Path, version: str | None) -> None:
    """Atomically point ``parent/candidate`` at ``version``, or remove it (``None``).

    The candidate is only ever scored in shadow, so its changes are not part of ``history``
    (which records what was current, for rollback).
    """
    pointer = parent / CANDIDATE_POINTER
    if version is None:
        pointer.unlink(missing_ok=True)
        return
    if not (parent / version / METADATA_FILE).is_file():
        raise ArtifactError(f"no artifact {version!r} in {parent}")
    staging = parent / f".{CANDIDATE_POINTER}.tmp"
    staging.write_text(version + "\n")
    staging.chmod(FILE_MODE)
    os.replace(staging, pointer)


def _reason(exc: BaseException) -> str:
    """An OS error as ``strerror: file`` (no errno noise), anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def read_metadata(directory: Path) -> ArtifactMetadata:
    """Validated ``metadata.json`` of an artifact directory, refused unread when oversized."""
    path = directory / METADATA_FILE
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_METADATA_BYTES:
                raise ArtifactError(
                    f"{path} is {size} bytes, more than the {MAX_METADATA_BYTES} allowed"
                )
            raw = handle.read(MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {_reason(exc)}") from None
    if len(raw) > MAX_METADATA_BYTES:  # grew while being read
        raise ArtifactError(f"{path} is more than the {MAX_METADATA_BYTES} bytes allowed")
    try:
        return ArtifactMetadata.model_validate_json(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path} is invalid: {_one_line(exc)}") from None


def _one_line(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'metadata'}: {item['msg']}"
        for item in error.errors()
    )


def check_weights_header(weights: Path, spec: ModelSpec) -> None:
    """Refuse a weights file whose tensors are not exactly those of ``spec``, reading only its header.

    A safetensors file is an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the data: the names, shapes and the file's size
    are all known before any tensor is read or any model built.
    """
    with weights.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ArtifactError(f"weights file {weights} is truncated ({size} bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_WEIGHTS_HEADER_BYTES or 8 + length > size:
            raise ArtifactError(f"weights file {weights} declares a header of {length} bytes")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
        tensors = {
            name: (entry["dtype"], tuple(entry["shape"]))
            for name, entry in header.items()
            if name != "__metadata__"
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ArtifactError(f"weights file {weights} has no valid safetensors header") from None
    expected = weight_shapes(spec)
    wrong = [
        f"{name}: spec {shape}, file {tensors[name][1] if name in tensors else 'none'}"
        for name, shape in expected.items()
        if name not in tensors or tensors[name][1] != shape
    ]
    wrong += [f"{name}: not in the spec" for name in sorted(tensors.keys() - expected.keys())]
    if wrong:
        raise ArtifactError(f"weights in {weights} do not fit the model spec: {'; '.join(wrong)}")
    if any(dtype not in _DTYPE_BYTES for dtype, _ in tensors.values()):
        raise ArtifactError(f"weights in {weights} are not all floating point")
    data = sum(_DTYPE_BYTES[dtype] * math.prod(shape) for dtype, shape in tensors.values())
    if size != 8 + length + data:
        raise ArtifactError(
            f"weights file {weights} is {size} bytes, its header describes {8 + length + data}: "
            "modified or truncated"
        )


def load_artifact(path: Path) -> Artifact:
    """Load and verify an artifact; raises :class:`ArtifactError` with the reason.

    Everything about the weights that the metadata and the file header tell is checked before
    the model is built, so a version declaring a huge model costs nothing to refuse.
    """
    directory = resolve_artifact_dir(Path(path))
    metadata = read_metadata(directory)
    if metadata.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format {metadata.format_version} is not supported (expected {FORMAT_VERSION})"
        )
    weights = directory / metadata.weights_file
    try:
        if not weights.is_file():
            raise ArtifactError(f"weights file {weights} is missing")
        check_weights_header(weights, metadata.model)
        actual = sha256_file(weights)
    except OSError as exc:
        raise ArtifactError(f"cannot read weights file {weights}: {_reason(exc)}") from None
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
        # torch lists every mismatch on a line of its own: one line for logs and stderr.
        detail = " ".join(str(exc).split())
        raise ArtifactError(f"weights in {weights} do not fit the model spec: {detail}") from None
    # Checked as float32, after the copy into the model: a float64 1e300 is inf there.
    broken = [
        name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()
    ]
    if broken:
        raise ArtifactError(f"weights in {weights} are not finite: {', '.join(broken)}")
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
