"""Hot reload: notice a new ``current`` model version and decide whether it can be swapped in."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from detector.core.artifact import ArtifactError, ArtifactMetadata, resolve_artifact_dir

__all__ = ["ModelWatcher", "swap_incompatibility"]


def swap_incompatibility(old: ArtifactMetadata, new: ArtifactMetadata) -> str | None:
    """Why ``new`` cannot replace ``old`` without a restart, or ``None`` if it can.

    Windows are kept across a swap, so the feature order and window length must not change.
    """
    if new.feature_names != old.feature_names:
        return f"feature order changed {old.feature_names} -> {new.feature_names}; restart needed"
    if new.window_length != old.window_length:
        return f"window length changed {old.window_length} -> {new.window_length}; restart needed"
    return None


class ModelWatcher:
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
        self.registry = registry
        self.interval_s = interval_s
        self.clock = clock
        self._offered = loaded.resolve()
        self._next_check = clock() + interval_s
        self._bad_pointer: str | None = None

    def candidate(self) -> Path | None:
        """The newly current artifact directory, when the pointer moved since the last offer.

        Raises :class:`ArtifactError` when the pointer cannot be followed (outside the registry,
        a missing or unreadable version), once per distinct problem; the next good pointer
        clears it.
        """
        if self.interval_s <= 0 or self.clock() < self._next_check:
            return None
        self._next_check = self.clock() + self.interval_s
        try:
            current = resolve_artifact_dir(self.registry).resolve()
        except ArtifactError as exc:
            if str(exc) == self._bad_pointer:
                return None
            self._bad_pointer = str(exc)
            raise
        self._bad_pointer = None
        if current == self._offered:
            return None
        self._offered = current
        return current
