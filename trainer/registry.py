"""The model registry on disk: list versions, promote one to ``current``, roll back, shadow.

A registry is the directory the trainer writes to (``output.dir``)::

    models/pumps/
      <version>/metadata.json, weights.safetensors   one directory per trained version
      current                                        the version the detector loads
      candidate                                      optional: a version scored in shadow
      history                                        every change of current, one per line

``history`` lines are ``<utc time>\\t<action>\\t<version>`` (written by
:func:`detector.core.artifact.set_current`). Rollback treats the history as a stack: a ``save`` or
``promote`` pushes a version, a ``rollback`` pops the current one, so repeated rollbacks walk
further back (C -> B -> A), and ``promote`` is the way forward again.

The daemon scores the ``candidate`` beside ``current`` on the same windows and only counts its
alerts, until ``trainer promote --candidate`` makes it current or the pointer is removed. The
candidate is never the current version: making a version current removes a candidate naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from detector.core.artifact import (
    CANDIDATE_POINTER,
    CURRENT_POINTER,
    HISTORY_FILE,
    METADATA_FILE,
    ArtifactError,
    load_artifact,
    read_metadata,
    set_candidate,
    set_current,
)

__all__ = [
    "HistoryEntry",
    "RegistryError",
    "VersionInfo",
    "clear_candidate",
    "current_stack",
    "list_versions",
    "promote",
    "promote_candidate",
    "read_candidate",
    "read_current",
    "read_history",
    "rollback",
    "rollback_target",
    "shadow",
]


class RegistryError(Exception):
    """The registry cannot do what was asked (unknown version, empty, nothing to roll back to)."""


@dataclass(frozen=True)
class VersionInfo:
    """One version directory as ``trainer list`` shows it; ``error`` is set when unreadable."""

    version: str
    created_at: datetime | None = None
    threshold: float | None = None
    threshold_method: str | None = None
    validation_loss: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One line of ``history``: when ``current`` changed, why, and to which version."""

    at: str
    action: str
    version: str


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise RegistryError(f"{root} is not a directory (expected a model registry)")


def read_current(root: Path) -> str | None:
    """The version named by ``root/current``, or None when there is no pointer yet."""
    return _read_pointer(root / CURRENT_POINTER)


def read_candidate(root: Path) -> str | None:
    """The version named by ``root/candidate``, or None when nothing is shadowed."""
    return _read_pointer(root / CANDIDATE_POINTER)


def _read_pointer(pointer: Path) -> str | None:
    if not pointer.is_file():
        return None
    return pointer.read_text().strip() or None


def _version_info(directory: Path) -> VersionInfo:
    try:
        meta = read_metadata(directory)
    except ArtifactError as exc:
        # Listed anyway: an operator looking for a broken version must see it, not miss it.
        return VersionInfo(directory.name, error=f"unreadable {METADATA_FILE}: {exc}")
    created = meta.created_at
    if created.tzinfo is None:
        # The trainer writes UTC; a naive time from elsewhere must still sort with the others.
        created = created.replace(tzinfo=timezone.utc)
    return VersionInfo(
        version=directory.name,
        created_at=created,
        threshold=meta.threshold.value,
        threshold_method=meta.threshold.method,
        validation_loss=meta.validation.get("validation_loss"),
    )


def list_versions(root: Path) -> list[VersionInfo]:
    """Every version directory in ``root``, oldest first (by ``created_at``, then name).

    Hidden entries are skipped: ``save_artifact`` stages new versions in ``.<version>.*``.
    """
    _require_dir(root)
    versions = [
        _version_info(entry)
        for entry in root.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / METADATA_FILE).exists()
    ]
    return sorted(versions, key=lambda v: (v.created_at is None, v.created_at or 0, v.version))


def read_history(root: Path) -> list[HistoryEntry]:
    """The entries of ``root/history`` in order; an absent file is an empty history."""
    path = root / HISTORY_FILE
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        # Lines that are not ours (hand edits, a torn last line) are skipped, not fatal:
        # the pointer, not the history, decides what runs.
        if len(parts) == 3 and all(parts):
            entries.append(HistoryEntry(*parts))
    return entries


def current_stack(history: list[HistoryEntry], current: str | None) -> list[str]:
    """Replay ``history`` into the stack of versions that were current, newest last.

    ``save``/``promote`` push (unless the version is already on top), ``rollback`` pops the top
    and lands on its version. If the pointer disagrees with the result (edited by hand, or a
    crash between pointer and history write), the pointer wins and goes on top.
    """
    stack: list[str] = []
    for entry in history:
        if entry.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != entry.version:
                stack.append(entry.version)
        elif not stack or stack[-1] != entry.version:
            stack.append(entry.version)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    return stack


def rollback_target(history: list[HistoryEntry], current: str, versions: list[VersionInfo]) -> str:
    """The version ``trainer rollback`` switches to (pure: no file access).

    The newest version below the current one on the history stack that still exists (deleted
    versions are skipped). A registry without history (written before history existed) falls
    back to the newest version created before the current one.
    """
    available = {v.version for v in versions if v.error is None}
    if history:
        for version in reversed(current_stack(history, current)[:-1]):
            if version != current and version in available:
                return version
        raise RegistryError(
            f"no earlier version in the history to roll back to from {current}; "
            "use `trainer promote VERSION` to pick one"
        )
    ordered = [v for v in versions if v.error is None and v.created_at is not None]
    names = [v.version for v in ordered]
    if current in names:
        earlier = ordered[: names.index(current)]
        if earlier:
            return earlier[-1].version
    raise RegistryError(f"no version older than {current} to roll back to")


def _check_version(root: Path, version: str, pointer: str = CURRENT_POINTER) -> None:
    known = [v.version for v in list_versions(root)]
    # Membership in the listing (not a path test) also rejects "../x" and other path tricks.
    if version not in known:
        listing = ", ".join(known) if known else "none"
        raise RegistryError(f"unknown version {version!r} in {root} (versions: {listing})")
    try:
        load_artifact(root / version)
    except ArtifactError as exc:
        raise RegistryError(
            f"version {version} does not load, {pointer} unchanged: {exc}"
        ) from None


def promote(root: Path, version: str) -> str | None:
    """Point ``current`` at ``version`` after checking it loads; returns the previous current."""
    _require_dir(root)
    _check_version(root, version)
    previous = read_current(root)
    _switch(root, version, "promote")
    return previous


def promote_candidate(root: Path) -> tuple[str | None, str]:
    """Make the shadow candidate current (checked like :func:`promote`) and remove the pointer.

    Returns (previous current, the promoted version).
    """
    _require_dir(root)
    candidate = read_candidate(root)
    if candidate is None:
        raise RegistryError(
            f"no {CANDIDATE_POINTER} in {root}: `trainer fit --promote shadow` or "
            "`trainer shadow VERSION` sets one"
        )
    return promote(root, candidate), candidate


def shadow(root: Path, version: str) -> str | None:
    """Point ``candidate`` at ``version`` after checking it loads; returns the previous candidate.

    The current version is refused: shadowing it would compare a model with itself.
    """
    _require_dir(root)
    _check_version(root, version, CANDIDATE_POINTER)
    if version == read_current(root):
        raise RegistryError(f"{version} is the current version in {root}; shadow another one")
    previous = read_candidate(root)
    _write_candidate(root, version)
    return previous


def clear_candidate(root: Path) -> str | None:
    """Remove the ``candidate`` pointer (shadow scoring stops); returns what it named, if any."""
    _require_dir(root)
    previous = read_candidate(root)
    _write_candidate(root, None)
    return previous


def rollback(root: Path) -> tuple[str, str]:
    """Point ``current`` back at the version current before; returns (from, to)."""
    versions = list_versions(root)
    if not versions:
        raise RegistryError(f"no model versions in {root}")
    current = read_current(root)
    if current is None:
        raise RegistryError(f"{root} has no {CURRENT_POINTER} pointer; nothing to roll back")
    target = rollback_target(read_history(root), current, versions)
    _check_version(root, target)
    _switch(root, target, "rollback")
    return current, target


def _switch(root: Path, version: str, action: str) -> None:
    """:func:`set_current`, with a file system refusal (permissions, a full disk) as one line.

    A candidate naming the new current version is removed: it has nothing left to be compared
    with (current is written first, so a crash in between leaves both naming it, which is
    harmless).
    """
    try:
        set_current(root, version, action=action)
    except OSError as exc:
        now = read_current(root) or "(none)"
        raise RegistryError(
            f"cannot write the {CURRENT_POINTER} pointer in {root} ({exc.strerror or exc}); "
            f"current is {now}: run as a user who may write the registry"
        ) from None
    if read_candidate(root) == version:
        _write_candidate(root, None)


def _write_candidate(root: Path, version: str | None) -> None:
    """:func:`set_candidate`, with a file system refusal as one line."""
    try:
        set_candidate(root, version)
    except OSError as exc:
        now = read_candidate(root) or "(none)"
        raise RegistryError(
            f"cannot write the {CANDIDATE_POINTER} pointer in {root} ({exc.strerror or exc}); "
            f"candidate is {now}: run as a user who may write the registry"
        ) from None
