"""Hot reload: notice a registry's new ``current`` or ``candidate`` and decide whether it can be used.

Each profile's registry is polled every ``model.reload_interval_s``: a new ``current`` replaces
the model whose alerts are published, a new ``candidate`` the one scored in shadow beside it (a
removed ``candidate`` pointer stops shadow scoring). Loading is :func:`load_model`, the same for
start-up and reloads; on the running daemon it and the warm-up run on the
:class:`BackgroundLoader`'s thread, and the loop swaps the result in between polls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    "BackgroundLoader",
    "CandidateWatcher",
    "FinishedLoad",
    "LoadCancelled",
    "ModelWatcher",
    "PointerChange",
    "Role",
    "load_compatible",
    "load_model",
    "swap_incompatibility",
]

log = logging.getLogger(__name__)

Role = Literal["model", "candidate"]
"""What a loaded version becomes: the profile's current ``model`` or its shadowed ``candidate``."""


class LoadCancelled(Exception):
    """The load was cancelled (the loader closed) before its warm-up was done."""


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


def load_compatible(
    current: ArtifactMetadata,
    path: Path,
    scoring: ScoringConfig,
    cancel: threading.Event | None = None,
) -> Model:
    """The model at ``path``, loaded, checked to fit ``current``'s windows, and warmed up.

    What a new current version or a candidate must pass before it scores a window. Raises
    :class:`ArtifactError` for a bad or incompatible artifact, ``RuntimeError`` or
    ``MemoryError`` when its scorer cannot be built or run on ``scoring.device``, and
    :class:`LoadCancelled` when ``cancel`` is set before the warm-up is done.
    """
    model = load_model(path, scoring)
    reason = swap_incompatibility(current, model.artifact.metadata)
    if reason is not None:
        raise ArtifactError(reason)
    model.scorer.warm_up(model.artifact.metadata.window_length, cancel)
    if cancel is not None and cancel.is_set():
        raise LoadCancelled(f"loading {path.name} was cancelled")
    return model


@dataclass(frozen=True)
class FinishedLoad:
    """A background load that is done: the ``model`` to swap in, or the ``error`` refusing it."""

    profile: str
    role: Role
    path: Path
    model: Model | None
    error: ArtifactError | RuntimeError | MemoryError | None


class BackgroundLoader:
    """Loads, checks and warms up new versions on one worker thread, off the consumer loop.

    Done on the loop, a reload under load took 17 s, longer than ``max_poll_interval_ms``, and
    the group could drop the consumer. The loop now only hands a path over (:meth:`submit`) and
    collects what is done (:meth:`finished`) between polls, where it swaps models as before.

    One load counts per profile and role: a newer one supersedes the older, which is cancelled
    (if running, after its warm-up step in progress) and never handed back, so a stale version is
    never swapped in after a newer one. The methods are for the loop's thread only. The worker builds model
    objects nothing else holds until they are collected (torch runs separate modules on separate
    threads safely), at the process's intra-op thread count like the loop, so the per-shape
    primitives it warms up are the ones scoring looks up.
    """

    def __init__(self, scoring: ScoringConfig) -> None:
        self.scoring = scoring
        # The thread starts at the first submit: a detector that never reloads has none.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._pending: dict[tuple[str, Role], _Load] = {}

    def submit(
        self, profile: str, role: Role, current: ArtifactMetadata, path: Path
    ) -> Path | None:
        """Start loading ``path`` as the profile's ``role``, to fit ``current``'s windows.

        Returns the path of the load it superseded, if one was pending.
        """
        superseded = self.discard(profile, role)
        cancel = threading.Event()
        future = self._worker.submit(self._load, profile, role, current, path, cancel)
        self._pending[profile, role] = _Load(path, future, cancel)
        return superseded

    def discard(self, profile: str, role: Role) -> Path | None:
        """Forget the profile's pending ``role`` load, if any; returns its path."""
        load = self._pending.pop((profile, role), None)
        if load is None:
            return None
        load.future.cancel()  # one not started yet never starts
        load.cancel.set()  # a running one stops after its warm-up step in progress
        return load.path

    def finished(self) -> list[FinishedLoad]:
        """The pending loads that are done, in the order they were submitted.

        An unexpected exception of a load (a bug, not a bad model) is raised here, on the loop,
        as it was when loading ran there.
        """
        done: list[FinishedLoad] = []
        for (profile, role), load in list(self._pending.items()):
            if not load.future.done():
                continue
            del self._pending[profile, role]
            try:
                done.append(FinishedLoad(profile, role, load.path, load.future.result(), None))
            except (ArtifactError, RuntimeError, MemoryError) as exc:
                done.append(FinishedLoad(profile, role, load.path, None, exc))
        return done

    def close(self) -> None:
        """Cancel what is pending and return once the worker thread has ended.

        A running load stops after the step in progress (reading and checking the artifact, or
        one warm-up batch) rather than warming up a model nothing will use. The thread is joined,
        not left as a daemon thread: the interpreter would join it at exit anyway, and a thread
        still inside torch while the interpreter shuts down can crash the process.
        """
        for profile, role in list(self._pending):
            self.discard(profile, role)
        self._worker.shutdown(wait=True)

    def _load(
        self,
        profile: str,
        role: Role,
        current: ArtifactMetadata,
        path: Path,
        cancel: threading.Event,
    ) -> Model:
        # Logged when the worker starts it, not when it is queued: the time a load took is the
        # time from this line to the swap.
        log.info("loading %s %s for profile %s", role, path.name, profile)
        return load_compatible(current, path, self.scoring, cancel)


@dataclass(frozen=True)
class _Load:
    """A submitted load: what it loads, its result to come, and how to stop it early."""

    path: Path
    future: Future[Model]
    cancel: threading.Event


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
