"""Layered settings: YAML file, then environment variables, validated by a pydantic model.

Both the detector and the trainer load their configuration through :func:`load_settings`, so the
override rules are the same everywhere: ``<PREFIX><SECTION>__<FIELD>`` (upper case, ``__`` between
nesting levels) replaces the value from the file. Values that start with ``[`` or ``{`` are parsed as
JSON, so lists and mappings can be overridden too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending field and its source."""


def _env_overrides(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix) or key == prefix:
            continue
        path = [part.lower() for part in key[len(prefix) :].split("__")]
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key}: value is not valid JSON: {exc}") from exc
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another override of {part!r}")
        node[path[-1]] = value
    return overrides


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _describe(error: ValidationError, prefix: str, env_keys: list[str]) -> str:
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        field = ".".join(location)
        # A variable is involved when it set this field, a value containing it (a JSON list or
        # mapping), or a field inside it (errors of a whole section, such as fire_k > fire_n).
        sources = []
        for key in env_keys:
            path = [part.lower() for part in key[len(prefix) :].split("__")]
            common = min(len(path), len(location))
            if path[:common] == location[:common]:
                sources.append(key)
        source = f" (from {', '.join(sorted(sources))})" if sources else ""
        lines.append(f"  {field}: {item['msg']}{source}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    model: type[ModelT],
    path: Path | None,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
) -> ModelT:
    """Build ``model`` from the YAML file at ``path`` (optional) overlaid with environment variables.

    Raises :class:`ConfigError` with one line per invalid field, naming the environment variable
    when the bad value came from one.
    """
    file_values = _read_yaml(path) if path is not None else {}
    environ = os.environ if environ is None else environ
    env_values = _env_overrides(env_prefix, environ)
    try:
        return model.model_validate(_deep_merge(file_values, env_values))
    except ValidationError as exc:
        env_keys = [key for key in environ if key.startswith(env_prefix) and key != env_prefix]
        raise ConfigError(_describe(exc, env_prefix, env_keys)) from None
