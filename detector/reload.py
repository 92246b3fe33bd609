"""Hot reload: notice a registry's new ``current`` or ``candidate`` and decide whether it can be used.

Each profile's registry is polled every ``model.reload_interval_s``: a new ``current`` replaces
the model whose alerts are published, a new ``candidate`` the one scored in shadow beside it (a
removed ``candidate`` pointer stops shadow scoring). Loading is :func:`load_model`, the same for
start-up and reloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from detector.config import ScoringConfig
from detector.core.artifact import (
    ArtifactError,
    ArtifactMetadata,
    load_artifact,
    resolve_artifact_dir,
    resolve_candidate,
)
from detector.core.scoring import Scorer
from detector.lane import Model

__all__ = [
    "CandidateWatcher",
    "ModelWatcher",
    "PointerChange",
    "load_compatible",
    "load_model",
    "swap_incompatibility",
]


def swap_incompatibility(old: ArtifactMetadata, new: ArtifactMetadata) -> str | None:
    """Why ``new`` cannot replace (or shadow) ``old`` without a restart, or ``None`` if it can.

    Windows are kept across a swap, and a candidate scores the current model's windows, so the
    feature order and window length must not change.
    """
    if new.feature_names != old.feature_names:
        return f"feature order changed {old.feature_names} -> {new.feature_names}; restart needed"
    if new.window_length != old.window_length:
        return f"window length changed {old.window_length} -> {new.window_length}; restart needed"
    return None


def load_model(path: Path, scoring: ScoringConfig) -> Model:
    """Load and verify the artifact at ``path`` and build its scorer.

    Raises :class:`ArtifactError` for a bad artifact, ``RuntimeError`` or ``MemoryError`` when
    the scorer cannot be built on ``scoring.device``.
    """
    artifact = load_artifact(path)
    scorer = Scorer.from_artifact(artifact, scoring.device, scoring.max_batch_size, scoring.threads)
    return Model(artifact, scorer)


def load_compatible(current: ArtifactMetadata, path: Path, scoring: ScoringConfig) -> Model:
    """The model at ``path``, loaded, checked to fit ``current``'s windows, and warmed up.

    What a new current version or a candidate must pass before it scores a window. Raises
    :class:`ArtifactError` for a bad or incompatible artifact, ``RuntimeError`` or
    ``MemoryError`` when its scorer cannot be built or run on ``scoring.device``.
    """
    model = load_model(path, scoring)
    reason = swap_incompatibility(current, model.artifact.metadata)
    if reason is not None:
        raise ArtifactError(reason)
    model.scorer.warm_up(model.artifact.metadata.window_length)
    return model


class _PointerWatch:
    """Polling on an interval, and problems reported once each until the pointer changes."""

    def __init__(self, registry: Path, interval_s: float, clock: Callable[[], float]) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.clock = clock
        self._next_check = clock() + interval_s
        self._bad_pointer: str | None = None

    def _due(self) -> bool:
        if self.interval_s <= 0 or self.clock() < self._next_check:
            return False
        self._next_check = self.clock() + self.interval_s
        return True

    def _resolve(self, resolve: Callable[[Path], Path | None]) -> tuple[bool, Path | None]:
        """(followed, where the pointer leads); raises a new problem, swallows a known one."""
        try:
            found = resolve(self.registry)
        except ArtifactError as exc:
            if str(exc) == self._bad_pointer:
                return False, None
            self._bad_pointer = str(exc)
            raise
        self._bad_pointer = None
        return True, None if found is None else found.resolve()


class ModelWatcher(_PointerWatch):
    """Polls a model registry's ``current`` pointer every ``interval_s`` seconds.

    A version is offered once: after a failed load it is not retried until the pointer names
    something else, so a bad model costs one attempt and one log line, not one per poll. A
    pointer that cannot be followed is reported the same way: once, until it changes.
    """

    def __init__(
        self,
        registry: Path,
        loaded: Path,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(registry, interval_s, clock)
        self._offered = loaded.resolve()

    def candidate(self) -> Path | None:
        """The newly current artifact directory, when the pointer moved since the last offer.

        Raises :class:`ArtifactError` when the pointer cannot be followed (outside the registry,
        a missing or unreadable version), once per distinct problem; the next good pointer
        clears it.
        """
        if not self._due():
            return None
        followed, current = self._resolve(resolve_artifact_dir)
        if not followed or current is None or current == self._offered:
            return None
        self._offered = current
        return current


@dataclass(frozen=True)
class PointerChange:
    """The ``candidate`` pointer now names ``path`` (``None``: it was removed)."""

    path: Path | None


class CandidateWatcher(_PointerWatch):
    """Polls a registry's ``candidate`` pointer; each change is offered once, like :class:`ModelWatcher`."""

    def __init__(
        self,
        registry: Path,
        loaded: Path | None,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(registry, interval_s, clock)
        self._offered = None if loaded is None else loaded.resolve()

    def change(self) -> PointerChange | None:
        """The pointer's new target when it changed since the last offer (removal included).

        Raises :class:`ArtifactError` for a pointer that cannot be followed, once per problem.
        """
        if not self._due():
            return None
        followed, candidate = self._resolve(resolve_candidate)
        if not followed or candidate == self._offered:
            return None
        self._offered = candidate
        return PointerChange(candidate)
