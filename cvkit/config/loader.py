"""Load a YAML config into a validated :class:`~cvkit.config.schema.Config`.

A file may name a ``base:`` file (relative to itself) that it extends; mappings merge key by key
and the child wins. ``--set a.b=v`` overrides are applied last; their values are parsed as YAML
(``3`` is an int, ``[1, 2]`` a list) and then type-checked by the schema. Every error names the
offending key, the file (or ``--set``) it came from, and the keys allowed there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cvkit.config.base import Section
from cvkit.config.schema import Config
from cvkit.errors import ConfigError

BASE_KEY = "base"
Key = tuple[str, ...]


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML file that must hold a mapping (an empty file is an empty mapping)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two mappings; values in ``child`` win, nested mappings merge recursively."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """Return ``[(file, mapping), ...]`` from the root base file down to ``path``."""
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"{path}: 'base' files form a cycle: {cycle}")
    raw = read_yaml(path)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return [(path, raw)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file path, got {base!r}")
    return [*_resolve_chain(path.parent / base, (*seen, path)), (path, raw)]


def parse_overrides(overrides: Iterable[str]) -> list[tuple[Key, Any]]:
    """Parse ``["train.epochs=3", ...]`` into ``[(("train", "epochs"), 3), ...]``."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        keys = tuple(key.strip().split("."))
        if not sep or not all(keys):
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
        parsed.append((keys, value))
    return parsed


def _set_nested(data: dict[str, Any], keys: Key, value: Any, origin: str) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            path = ".".join(keys[: depth + 1])
            raise ConfigError(f"{origin}: '{path}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def _has_key(data: Mapping[str, Any], keys: Sequence[str | int]) -> bool:
    node: Any = data
    for key in keys:
        in_mapping = isinstance(node, Mapping) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
        if in_mapping or in_list:
            node = node[key]
        else:
            return False
    return True


def _allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys of the section that ``loc`` points into (``loc[-1]`` is the bad key),
    registered models' sections included (:meth:`Section.allowed_keys`)."""
    section: type[BaseModel] | None = model
    for key in loc[:-1]:
        section = section.subsection(str(key)) if issubclass(section, Section) else None
        if section is None:
            return []
    return section.allowed_keys() if issubclass(section, Section) else sorted(section.model_fields)


def _describe(
    error: Mapping[str, Any],
    sources: Sequence[tuple[str, Mapping[str, Any]]],
) -> str:
    loc = [part for part in error["loc"] if not (isinstance(part, str) and "[" in part)]
    dotted = ".".join(str(part) for part in loc) or "(top level)"
    origin = next((name for name, data in reversed(sources) if _has_key(data, loc)), sources[-1][0])
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(Config, loc)) or "none"
        section = ".".join(str(part) for part in loc[:-1]) or "the top level"
        return f"{origin}: unknown key '{dotted}' in {section}; allowed keys: {allowed}"
    value = error.get("input")
    return f"{origin}: {dotted}: {error['msg']} (got {value!r})"


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load, merge and validate a config.

    Args:
        path: YAML file, or None for the defaults of the schema.
        overrides: ``KEY=VALUE`` strings with dotted keys (``train.epochs=3``), applied last.

    Returns:
        The validated config.

    Raises:
        ConfigError: unreadable file, ``base`` cycle, unknown key or wrong type; the message
            names the key and the file or override it came from.
    """
    chain = _resolve_chain(Path(path)) if path is not None else []
    sources: list[tuple[str, Mapping[str, Any]]] = [(str(p), data) for p, data in chain]
    merged: dict[str, Any] = {}
    for _, data in chain:
        merged = merge(merged, data)
    for keys, value in parse_overrides(overrides):
        origin = f"--set {'.'.join(keys)}"
        _set_nested(merged, keys, value, origin)
        single: dict[str, Any] = {}
        _set_nested(single, keys, value, origin)
        sources.append((origin, single))
    if not sources:
        sources.append(("(defaults)", {}))
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        messages = [_describe(error, sources) for error in exc.errors()]
        raise ConfigError("\n".join(messages)) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain YAML/JSON types (paths become strings)."""
    return config.model_dump(mode="json")


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML; loading that file gives an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path
