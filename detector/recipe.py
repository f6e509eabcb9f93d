"""Reading recipes: YAML files with ``base:``, dotted overrides, errors that name the key.

A recipe is a YAML mapping whose top-level keys are the fields of :class:`TrainConfig`.
It may name one ``base:`` recipe (a path relative to itself) whose values it overrides,
key by key, at any depth. Overrides given as ``"loss.gamma=1.5"`` are applied last; the
value is parsed as YAML, so ``1.5`` is a float, ``[16, 32]`` a list and ``null`` None.

Every error names the full dotted path of the offending key and, where there is a fixed set,
the allowed keys or values; nesting no recipe has is refused.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from detector.config import TrainConfig

MAX_NESTING = 16
"""Recipes nest three levels deep; a value nested deeper than this is refused (the parsers and
the error messages recurse)."""
MAX_VALUES = 100_000
"""The most values (counted through lists and mappings) a recipe override may hold: YAML
aliases can make a short text a huge value."""


class RecipeError(ValueError):
    """A recipe that cannot be read or does not validate; the message names the key."""


def load_recipe(
    path: str | Path, overrides: Iterable[str] = (), *, update: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Read a YAML recipe (following ``base:``), apply dotted overrides, and validate it.

    ``update``: nested sections merged over the file's values before the dotted overrides.
    """
    raw = _read_with_bases(Path(path), seen=())
    if update:
        _deep_merge(raw, check_nesting(update))
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return recipe_from_dict(raw)


def check_nesting(value: Any, *, what: str = "the value") -> Any:
    """``value``, unless it nests deeper than :data:`MAX_NESTING` or holds more than
    :data:`MAX_VALUES` values (:class:`RecipeError`). Walks without recursing."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if depth > MAX_NESTING:
            raise RecipeError(f"{what} nests deeper than {MAX_NESTING} levels")
        if seen > MAX_VALUES:
            raise RecipeError(f"{what} holds more than {MAX_VALUES} values")
        if isinstance(item, Mapping):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
    return value


def recipe_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Validate a plain mapping as a :class:`TrainConfig`, with errors that name the key."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, TrainConfig)) from None


def parse_override(item: str) -> tuple[str, Any]:
    """``"solver.lr=0.02"`` -> ``("solver.lr", 0.02)``; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {_short(item)} is not of the form key.path=value")
    if key.count(".") >= MAX_NESTING:
        raise RecipeError(f"override {_short(item)}: the key nests deeper than {MAX_NESTING}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {_short(item)}: value is not valid YAML ({exc})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise RecipeError(
            f"override {_short(item)}: the value nests deeper than {MAX_NESTING}"
        ) from None
    return key.strip(), check_nesting(value, what=f"override {key.strip()}")


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    """One line per problem: ``loss.gammma: unknown key (allowed: alpha, box, ...)``."""
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        dotted = ".".join(loc) or "<recipe>"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_model_at(root, loc[:-1]).model_fields))
            lines.append(f"{dotted}: unknown key (allowed: {allowed})")
        else:
            lines.append(f"{dotted}: {err['msg']} (got {_short(err.get('input'))})")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def _short(value: object) -> str:
    """A bounded repr: what a user sent may be huge or nested."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 80, 80
    return short.repr(value)


def _model_at(root: type[BaseModel], loc: list[str]) -> type[BaseModel]:
    model = root
    for part in loc:
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:  # an optional sub-model such as ``DatasetSource | None``
            model = next(
                a
                for a in getattr(annotation, "__args__", ())
                if isinstance(a, type) and issubclass(a, BaseModel)
            )
    return model


def _read_with_bases(path: Path, *, seen: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in (*seen, resolved))
        raise RecipeError(f"recipe bases form a cycle: {chain}")
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError(f"recipe {path}: base must be a path, got {base!r}")
    merged = _read_with_bases(resolved.parent / base, seen=(*seen, resolved))
    _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise RecipeError(f"override {key}: {prefix} is a value, not a section")
        node = child
    node[parts[-1]] = value
