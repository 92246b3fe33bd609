"""Layered settings: YAML file, then environment variables, validated by a pydantic model.

Both the detector and the trainer load their configuration through :func:`load_settings`, so the
override rules are the same everywhere: ``<PREFIX><SECTION>__<FIELD>`` (upper case, ``__`` between
nesting levels) replaces the value from the file. A variable whose first level names no setting
(Kubernetes injects ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT``, ... into every pod) is ignored
with a warning. Values of list, mapping and section settings are JSON; a list may also be given as
every Kafka tool takes one, comma-separated (``kafka:9092,kafka-2:9092``); every other value is
taken literally, so a password may start with ``[`` or ``{``.

Error messages never quote the configuration's content (a syntax error may be on a password's
line): they name the file, line and column, or the field and the variable it came from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "load_settings", "validate_settings"]

ModelT = TypeVar("ModelT", bound=BaseModel)

log = logging.getLogger(__name__)

_CONTAINERS = (list, tuple, set, frozenset, dict)
# PyYAML quotes the offending token (a password's first character, an alias or tag name).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending field and its source."""


def _field_type(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation of the setting at ``path``, or ``None`` if no field has that path."""
    annotation: Any = model
    for part in path:
        sections = [arg for arg in _members(annotation) if _is_model(arg)]
        field = next((s.model_fields[part] for s in sections if part in s.model_fields), None)
        if field is None:
            return None
        annotation = field.annotation
    return annotation


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a union (``X | None``), or the annotation itself."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(arg for arg in get_args(annotation) if arg is not type(None))
    return (annotation,)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _takes_json(annotation: Any) -> bool:
    """Whether a variable for this setting holds JSON: lists, mappings and whole sections do."""
    return any(
        _is_model(arg) or arg in _CONTAINERS or get_origin(arg) in _CONTAINERS
        for arg in _members(annotation)
    )


def _is_plain_list(annotation: Any) -> bool:
    """Whether the setting is a list (or ``list | None``) of plain values, not of sections."""
    lists = [arg for arg in _members(annotation) if get_origin(arg) is list or arg is list]
    return len(lists) == 1 and not any(_is_model(arg) for arg in get_args(lists[0]))


def _env_overrides(
    model: type[BaseModel], prefix: str, environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """The overrides the variables make, and the names of the variables they come from."""
    overrides: dict[str, Any] = {}
    used: list[str] = []
    ignored: list[str] = []
    for key, raw in environ.items():
        if not key.startswith(prefix) or key == prefix:
            continue
        path = [part.lower() for part in key[len(prefix) :].split("__")]
        if path[0] not in model.model_fields:
            ignored.append(key)
            continue
        used.append(key)
        value: Any = raw
        annotation = _field_type(model, path)
        if _is_plain_list(annotation) and not raw.lstrip().startswith("["):
            value = [item.strip() for item in raw.split(",") if item.strip()]
        elif _takes_json(annotation):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{key}: value is not valid JSON (line {exc.lineno}, column {exc.colno})"
                ) from None
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another override of {part!r}")
        node[path[-1]] = value
    if ignored:
        log.warning(
            "ignoring environment variables that name no setting: %s (settings are "
            "%s<SECTION>__<FIELD>)",
            ", ".join(sorted(ignored)),
            prefix,
        )
    return overrides, used


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _yaml_problem(path: Path, error: yaml.YAMLError) -> str:
    """File, line, column and what is wrong; never the offending text."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if isinstance(error, yaml.reader.ReaderError):
        where, problem = f" at character {error.position}", "unacceptable character"
    what = f": {_QUOTED.sub('…', problem)}" if problem else ""
    hint = (
        " (quote values that start with @ % ` or contain ': ')"
        if isinstance(error, yaml.scanner.ScannerError)
        else ""
    )
    return f"{path}: invalid YAML{where}{what}{hint}"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _describe(error: ValidationError, prefix: str, env_keys: list[str]) -> str:
    """One line naming every invalid field; pydantic's messages, never the input values."""
    problems = []
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
        problems.append(f"{field or 'configuration'}: {item['msg']}{source}")
    return "invalid configuration: " + "; ".join(problems)


def validate_settings(
    model: type[ModelT],
    values: Mapping[str, Any],
    prefix: str = "",
    env_keys: Sequence[str] = (),
) -> ModelT:
    """``model`` built from ``values``; raises :class:`ConfigError` with a one-line description."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, prefix, list(env_keys))) from None


def load_settings(
    model: type[ModelT],
    path: Path | None,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
) -> ModelT:
    """Build ``model`` from the YAML file at ``path`` (optional) overlaid with environment variables.

    Raises :class:`ConfigError` with one line naming every invalid field and the environment
    variable when the bad value came from one.
    """
    file_values = _read_yaml(path) if path is not None else {}
    environ = os.environ if environ is None else environ
    env_values, env_keys = _env_overrides(model, env_prefix, environ)
    return validate_settings(model, _deep_merge(file_values, env_values), env_prefix, env_keys)
