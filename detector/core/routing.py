"""Which device profile a reading belongs to: routing rules, first match wins (pure, no I/O).

A fleet of several kinds (pumps, fans...) is scored by one model per *profile*. A rule matches
a reading by the ``profile`` field it carries, by its device id (glob patterns or a regular
expression) or by the topic it came from; the first rule that matches decides, else the default
profile, else the reading is rejected as ``unknown_profile``. A reading whose ``profile`` field
names a profile that is not configured matches that rule and is unknown too: it said what it
is, and guessing another model for it would score it against the wrong normal.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_PROFILE", "RouteRule", "Router"]

# The one profile of a single-model configuration: its metric label and its alerts' field.
DEFAULT_PROFILE = "default"

RuleKind = Literal["reading", "devices", "device_regex", "topics"]
_CACHE_ENTRIES = 100_000  # routing answers remembered; the cache starts over when full


@dataclass(frozen=True)
class RouteRule:
    """One rule: ``kind`` says what it matches, ``patterns`` what against, ``profile`` where to.

    ``reading``: the reading's own ``profile`` field (no patterns, no profile);
    ``devices``: glob patterns of device ids (``pump-*``); ``device_regex``: one regular
    expression that must match the whole device id; ``topics``: topic names.
    """

    kind: RuleKind
    patterns: tuple[str, ...] = ()
    profile: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "reading":
            if self.patterns or self.profile is not None:
                raise ValueError("a reading rule takes the profile from the reading itself")
            return
        if self.profile is None or not self.patterns:
            raise ValueError(f"a {self.kind} rule needs a profile and at least one pattern")
        if self.kind == "device_regex":
            if len(self.patterns) != 1:
                raise ValueError("a device_regex rule has one expression")
            try:
                re.compile(self.patterns[0])
            except re.error as exc:
                raise ValueError(f"bad device_regex {self.patterns[0]!r}: {exc}") from None

    def matcher(self) -> re.Pattern[str] | None:
        """The compiled device-id expression (``None`` for rules that match no device id)."""
        if self.kind == "devices":
            return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns))
        if self.kind == "device_regex":
            return re.compile(self.patterns[0])
        return None


class Router:
    """Routes readings to the index of their profile in ``profiles``, ``None`` when unknown."""

    def __init__(
        self, profiles: Sequence[str], rules: Sequence[RouteRule], default: str | None = None
    ) -> None:
        self.profiles = list(profiles)
        index = {name: i for i, name in enumerate(self.profiles)}
        for rule in rules:
            if rule.profile is not None and rule.profile not in index:
                raise ValueError(f"route to unknown profile {rule.profile!r}")
        if default is not None and default not in index:
            raise ValueError(f"default profile {default!r} is not a profile")
        self._index = index
        self._rules = [(rule, rule.matcher()) for rule in rules]
        self._default = None if default is None else index[default]
        self._reads_field = any(rule.kind == "reading" for rule in rules)
        self._cache: dict[tuple[str, str, str | None], int | None] = {}

    @property
    def reads_field(self) -> bool:
        """Whether a reading's own ``profile`` field can decide (else it is ignored)."""
        return self._reads_field

    def route(self, topic: str, device_id: str, declared: str | None = None) -> int | None:
        """The profile index of a reading from ``topic`` by ``device_id`` claiming ``declared``."""
        key = (topic, device_id, declared if self._reads_field else None)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._decide(topic, device_id, key[2])
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _decide(self, topic: str, device_id: str, declared: str | None) -> int | None:
        for rule, matcher in self._rules:
            if rule.kind == "reading":
                if declared is not None:
                    return self._index.get(declared)
            elif rule.kind == "topics":
                if topic in rule.patterns:
                    return self._index[rule.profile]  # type: ignore[index]
            elif matcher is not None and matcher.fullmatch(device_id):
                return self._index[rule.profile]  # type: ignore[index]
        return self._default
