"""Typed, frozen configuration loaded from YAML with ``key=value`` overrides.

Every stage declares a frozen dataclass, and each default is written once, there: on the field,
with its range or choices (:func:`knob`) and its documentation (help text, or the comments written
with the field), which ``sift <stage> --knobs`` prints (``flows.core.knobs``). A YAML file
(``--config``) and ``key=value`` overrides set values; ranges are checked on load and unknown keys
are rejected with the list of known ones: a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from flows.core.errors import SiftError

T = TypeVar("T")


class ConfigError(SiftError, ValueError):
    """A config file or override is wrong; the message says which key and why."""

    reason = "bad_config"


def knob(default: Any, *, lo: float | None = None, hi: float | None = None,
         choices: Iterable[Any] | None = None, help: str = "") -> Any:
    """A dataclass field with a checked range (inclusive) or a set of allowed values."""
    meta = {"lo": lo, "hi": hi, "choices": tuple(choices) if choices else None, "help": help}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples / mappings via default_factory-free immutable values")
    return dataclasses.field(default=default, metadata=meta)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "classes=[X, Y]"]`` -> ``{"a": 1, "classes": ["X", "Y"]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {pair!r}: value is not valid YAML ({exc})") from None
    return out


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def as_bool(value: Any) -> bool | None:
    """A YAML bool, 0 / 1, or one of true/false/yes/no/on/off/1/0 (any case) -> that bool; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
    return None


def _bool_choice(value: Any, choices: tuple | None) -> Any:
    """For a str knob whose choices spell both a true and a false word (``use_gpu``: auto|true|false):
    a boolean-looking value -> that choice as written (``True``, ``"yes"``, ``1`` -> ``"true"``), so a YAML
    ``use_gpu: true`` (a bool) and ``use_gpu=yes`` land on the same string. Other values pass unchanged."""
    if not choices or isinstance(value, str) and value in choices:
        return value
    spelled = {w: c for c in choices if isinstance(c, str) for w in (c.lower(),) if w in TRUE_WORDS + FALSE_WORDS}
    yes = next((c for w, c in spelled.items() if w in TRUE_WORDS), None)
    no = next((c for w, c in spelled.items() if w in FALSE_WORDS), None)
    b = as_bool(value) if yes is not None and no is not None else None
    return value if b is None else (yes if b else no)


def _coerce(name: str, value: Any, hint: Any, choices: tuple | None = None) -> Any:
    """Convert a YAML value to the field's declared type; raise ConfigError if it cannot be.

    Booleans are lenient the same way from a file and from ``key=value``: a bool knob takes YAML
    bools and true/false/yes/no/on/off/1/0; a str knob with boolean-looking choices maps those onto
    its choices (:func:`_bool_choice`)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0], choices)
    if hint is bool:
        b = as_bool(value)
        if b is not None:
            return b
        raise ConfigError(f"{name}: expected true/false (or yes/no, on/off, 1/0), got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        value = _bool_choice(value, choices)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(f"{name}[{i}]", v, item, choices) for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(f"{name}.{k}", v, vt) for k, v in value.items()}
    return value


def _check(name: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if choices is not None and v not in choices:
            raise ConfigError(f"{name}: {v!r} is not one of {list(choices)}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo:
                raise ConfigError(f"{name}: {v} is below the minimum {lo}")
            if hi is not None and v > hi:
                raise ConfigError(f"{name}: {v} is above the maximum {hi}")


def build(cls: type[T], values: dict[str, Any], *, where: str = "config",
          explicit: Iterable[str] | None = None) -> T:
    """Make ``cls`` from a flat mapping: unknown keys rejected, types coerced, ranges checked.

    Calls ``cls.validate()`` afterwards when defined, for checks across fields. ``explicit`` names the
    keys the user wrote (default: every key of ``values``); :func:`explicit` reads them back, so a
    check against the data can tell a user's setting (refused when it does not fit) from a default
    (which steps aside).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values, explicit = _gather_prefixed(fields, values, explicit)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        coerced = _coerce(name, value, hints[name], fields[name].metadata.get("choices"))
        _check(name, coerced, fields[name].metadata)
        kwargs[name] = coerced
    obj = cls(**kwargs)
    # not a field: it is not a setting, never logged, and equal configs stay equal
    object.__setattr__(obj, "_explicit", frozenset(values if explicit is None else explicit))
    for f in fields.values():  # defaults are checked too: a bad default is a bug to surface
        if f.name not in kwargs:
            _check(f.name, getattr(obj, f.name), f.metadata)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return obj


def _gather_prefixed(fields: dict, values: dict[str, Any], explicit: Iterable[str] | None):
    """``threshold_BAD=0.6`` -> ``thresholds={"BAD": 0.6}`` for a mapping field declared with
    ``metadata={"prefix": "threshold_"}``: a key that is not a field but starts with the prefix
    becomes an entry of that mapping (and the mapping counts as written by the user)."""
    prefixed = {f.metadata["prefix"]: name for name, f in fields.items() if f.metadata.get("prefix")}
    if not prefixed:
        return values, explicit
    values, user = dict(values), set(values if explicit is None else explicit)
    for key in [k for k in values if k not in fields]:
        for prefix, name in prefixed.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                entry = dict(values.get(name) or {})
                entry[key[len(prefix):]] = values.pop(key)
                values[name] = entry
                if key in user:
                    user.discard(key)
                    user.add(name)
                break
    return values, user


def load(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] | dict = (),
         *, default_path: str | Path | None = None) -> T:
    """Load ``cls``: its field defaults, then a base YAML ``default_path`` (a scrape recipe's), then
    ``path`` (if given), then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    user: set[str] = set()
    for p, users in ((default_path, False), (path, True)):
        if p is None:
            continue
        p = Path(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of key: value")
        values.update(data)
        if users:
            user |= set(data)
    more = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    values.update(more)
    return build(cls, values, where=cls.__name__, explicit=user | set(more))


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that keeps the record of which keys the user wrote."""
    new = dataclasses.replace(cfg, **changes)
    object.__setattr__(new, "_explicit", explicit(cfg))
    return new


def explicit(cfg: Any) -> frozenset[str]:
    """The keys of ``cfg`` the user wrote (a config file or ``key=value``), not taken from defaults.

    A config made by ``dataclasses.replace`` or by hand has none recorded: every key then counts as
    a default.
    """
    return getattr(cfg, "_explicit", frozenset())


def flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config to ``{key: scalar}`` for ``mlflow.log_params`` (mappings become ``a.b``)."""
    out: dict[str, Any] = {}
    items = dataclasses.asdict(cfg).items() if dataclasses.is_dataclass(cfg) else cfg.items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = value
    return out


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # flows/configs: recipes
