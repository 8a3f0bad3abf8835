"""Typed, frozen configuration loaded from YAML with ``key=value`` overrides.

Every stage declares a frozen dataclass, and each default is written once, there: on the field,
with its range or choices (:func:`knob`) and its documentation (help text, or the comments written
with the field), which ``sift <stage> --knobs`` prints (:func:`knobs_table`). A YAML file
(``--config``) and ``key=value`` overrides set values; ranges are checked on load and unknown keys
are rejected with the list of known ones: a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import os
import sys
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


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a YAML value to the field's declared type; raise ConfigError if it cannot be."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value))
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
        coerced = _coerce(name, value, hints[name])
        _check(name, coerced, fields[name].metadata)
        kwargs[name] = coerced
    obj = cls(**kwargs)
    # not a field: it is not a setting, never logged, and equal configs stay equal
    object.__setattr__(obj, "_explicit", frozenset(values if explicit is None else explicit))
    for f in fields.values():  # defaults are checked too: a bad YAML default is a bug to surface
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
    """Load ``cls`` from the default YAML, then ``path`` (if given), then ``key=value`` overrides."""
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


def source_comments(cls: type) -> dict[str, tuple[list[str], str]]:
    """{field: (the comment lines just above it, its same-line comment)} read from the source of
    ``cls`` and its dataclass bases: a config class documents its knobs where their defaults are
    written, and :func:`knobs_table` shows that documentation."""
    import inspect
    import io
    import re
    import tokenize

    out: dict[str, tuple[list[str], str]] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        lines = src.splitlines()
        names = {f.name for f in dataclasses.fields(klass)}
        for no, line in enumerate(lines, start=1):
            m = re.match(r"^\s+([A-Za-z_]\w*)\s*:", line)
            if not m or m.group(1) not in names:
                continue
            block, k = [], no - 1
            while k >= 1 and lines[k - 1].lstrip().startswith("#"):
                block.insert(0, comments.get(k, ""))
                k -= 1
            out[m.group(1)] = (block, comments.get(no, "") if not line.lstrip().startswith("#") else "")
    return out


def knobs_table(cfg: Any) -> str:
    """Every knob of a loaded config (its values are the defaults a user starts from): name, type,
    default, range or choices, help text (else the field's same-line comment), one aligned line each,
    under the comments written above the fields in the config class, as ``sift <stage> --knobs`` prints."""
    hints = typing.get_type_hints(type(cfg))
    notes = source_comments(type(cfg))
    rows = []
    for f in dataclasses.fields(cfg):
        meta = f.metadata
        rng = ""
        if meta.get("choices"):
            rng = "|".join(map(str, meta["choices"]))
        elif meta.get("lo") is not None and meta.get("hi") is not None:
            rng = f"[{meta['lo']}, {meta['hi']}]"
        elif meta.get("lo") is not None:
            rng = f">= {meta['lo']}"
        elif meta.get("hi") is not None:
            rng = f"<= {meta['hi']}"
        kind = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
        value = getattr(cfg, f.name)
        shown = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        block, inline = notes.get(f.name, ([], ""))
        rows.append((f.name, kind, shown or "''", rng, meta.get("help") or inline, block))
    widths = [min(32, max(len(r[i]) for r in rows)) for i in range(4)]
    head = ("knob", "type", "default", "range")
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  help"]
    for r in rows:
        lines += [f"# {c}" if c else "#" for c in r[5]]
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + ("  " + r[4] if r[4] else ""))
    return "\n".join(line.rstrip() for line in lines)


def _plain(value: Any) -> Any:
    """Tuples and mappings as plain lists and dicts, for YAML."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, typing.Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def add_knobs_flag(ap, defaults) -> None:
    """``--knobs`` on a stage's argparse parser: print :func:`knobs_table` of ``defaults()`` (the
    stage's loaded default config, or a tuple of them) and exit 0, before any required argument is
    checked (as --help)."""
    import argparse

    class _Knobs(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            cfgs = defaults()
            tables = [knobs_table(c) for c in (cfgs if isinstance(cfgs, tuple) else (cfgs,))]
            try:
                print(f"{parser.prog}: every knob, set as key=value (defaults as loaded)\n" + "\n\n".join(tables))
            except BrokenPipeError:  # `sift train --knobs | head`: the reader left, nothing to report
                sys.stdout = open(os.devnull, "w")
            parser.exit(0)

    ap.add_argument("--knobs", action=_Knobs, nargs=0, help="list every config knob: default, range, help")


# --------------------------------------------------------------------------------------------
# The preprocessing stage's config.

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # flows/configs


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    # label set: any names, empty = what the data says (first-level folders / manifest labels); a
    # class may be declared a noisy pool with a prior over true classes
    # The label set. Any names work (NSFW/SFW, indoor/outdoor, ...). Empty: what the data says, i.e. the
    # first-level folder names (`unlabeled/` excepted) or the manifest's labels, sorted. Set it to fix the
    # order or to refuse strays: folder names / manifest labels must then be one of these or `unlabeled`.
    classes: tuple[str, ...] = ()
    # A class can be a *noisy pool*: its items are labeled, but the label is only a prior over the true
    # classes (the user's own estimate). Training uses the prior, not the label, for these items.
    # This default belongs to the BAD/NEUTRAL/GOOD label set: it steps aside when a class it names is
    # absent from the data. A noisy_pools you write that names an absent class is refused.
    noisy_pools: dict[str, dict[str, float]] = dataclasses.field(  # steps aside when NEUTRAL is absent
        default_factory=lambda: {"NEUTRAL": {"NEUTRAL": 0.65, "BAD": 0.30, "GOOD": 0.05}})
    # Images are stored as RGB JPEG, shortest edge <= short_edge, within byte_budget bytes.
    short_edge: int = knob(448, lo=16, hi=8192, help="shortest edge of stored images (never upscaled)")
    byte_budget: int = knob(200_000, lo=2_000, hi=50_000_000, help="max bytes of a stored JPEG")
    max_quality: int = knob(90, lo=10, hi=100)
    min_quality: int = knob(40, lo=5, hi=100)
    # Validation (every failure becomes a reject row with a reason, never a failed job).
    max_bytes: int = knob(50_000_000, lo=1, help="max input file size for images")  # per image file
    max_video_bytes: int = knob(2_000_000_000, lo=1)
    max_pixels: int = knob(50_000_000, lo=1, help="decompression-bomb guard")  # decompression-bomb guard
    min_side: int = knob(16, lo=1)
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
    video_formats: tuple[str, ...] = ("mp4", "mov", "webm", "mkv")
    # video: "keyframes" = a thumbnail + scene keyframes; "sample" = frames on an even grid (frames
    # from folder videos, e.g. an indoor/outdoor task), from video_start_s, every 1/video_fps s or
    # every video_every_n_frames frames, at most video_max_frames (spread over the whole video)
    # Video: a thumbnail plus up to video_keyframes frames at scene changes (padded with evenly
    # spaced frames when the video has few scenes), or (video_mode: sample) frames sampled evenly.
    # or `sample`: frames on an even grid instead (no thumbnail)
    video_mode: str = knob("keyframes", choices=("keyframes", "sample"))
    video_start_s: float = knob(0.0, lo=0.0, help="sample mode: skip this much (an intro)")  # sample: skip an intro
    # sample: frames per second (0: use video_every_n_frames)
    video_fps: float = knob(1.0, lo=0.0, hi=240.0, help="sample mode: frames per second (0: use every_n)")
    # sample: every Nth decoded frame instead
    video_every_n_frames: int = knob(0, lo=0, help="sample mode: every Nth frame instead of video_fps")
    # sample: at most this many per video, spread over its whole length
    video_max_frames: int = knob(32, lo=1, hi=100_000, help="sample mode: cap per video (sampled sparser)")
    video_keyframes: int = knob(8, lo=0, hi=256, help="keyframes at scene changes per video")
    scene_threshold: float = knob(0.3, lo=0.0, hi=1.0)
    max_video_seconds: float = knob(3600.0, lo=0.1)
    max_video_pixels: int = knob(3840 * 2160, lo=1)  # 3840x2160
    ffmpeg_timeout: float = knob(120.0, lo=1.0)
    # manifest URLs: fetched by the guarded downloader (flows.scrape.fetch) into OUT/downloads/, resumable
    # Manifest lines with a `url` (an img2dataset-style list) are fetched before processing by the same
    # guarded downloader as `sift scrape` into OUT/downloads/ (resumable: a second run fetches only what
    # is missing); a URL that fails is a `fetch_failed` reject with the fetcher's reason.
    user_agent: str = "sift-preprocess/0.1"
    robots: bool = True  # honour robots.txt (RFC 9309)
    # minimum seconds between two requests to one host
    rate_limit_s: float = knob(0.25, lo=0.0, hi=600.0, help="min seconds between two requests to one host")
    timeout_s: float = knob(15.0, lo=0.1, hi=600.0)
    max_redirects: int = knob(5, lo=0, hi=50)  # followed by hand; every hop is checked again
    retries: int = knob(2, lo=0, hi=10)  # on 5xx, 429, timeouts and connection errors
    backoff_s: float = knob(0.5, lo=0.0, hi=60.0)  # first retry after backoff_s, then x2
    allow_hosts: tuple[str, ...] = ()  # names, .suffixes, addresses or networks allowed to be private/loopback
    allow_private: bool = False  # true: no address policy at all (only for trusted intranets)
    download_threads: int = knob(8, lo=1, hi=256, help="downloads in flight")
    # one URL's download is held in memory while it is fetched
    max_download_bytes: int = knob(200_000_000, lo=1, help="cap of one URL's download (held in memory)")
    # span labels (manifest lines with start/end): frames sampled inside each span
    # Span labels: a manifest line with start/end (seconds) labels a span of a video; frames are sampled
    # inside each span at span_fps, at most span_max_frames per span (a longer span is sampled more
    # sparsely). All frames of one video share its group, hence its split.
    span_fps: float = knob(1.0, lo=0.01, hi=60.0, help="frames per second sampled inside a span")
    span_max_frames: int = knob(32, lo=1, hi=10_000, help="cap per span (sampled more sparsely)")
    # dedupe + split
    # Near duplicates: 64-bit perceptual hashes within this Hamming distance are one cluster.
    near_dup_distance: int = knob(4, lo=0, hi=32, help="max Hamming distance of 64-bit pHashes")
    val_frac: float = knob(0.15, lo=0.0, hi=0.9)
    test_frac: float = knob(0.15, lo=0.0, hi=0.9)
    split_seed: str = "sift"
    # Ray
    # Ray: the CPU actor pool autoscales between min_actors and max_actors.
    min_actors: int = knob(1, lo=1, hi=1024)
    max_actors: int = knob(2, lo=1, hi=1024)
    actor_cpus: float = knob(1.0, lo=0.05, hi=64)
    batch_size: int = knob(16, lo=1, hi=4096)
    io_cpus: float = knob(0.1, lo=0.01, hi=8, help="CPUs reserved by each read/write task")
    rows_per_file: int = knob(2000, lo=1)

    def validate(self) -> None:
        """Checks that need no data; the label set is checked against the data by
        ``flows.core.labelset.resolve`` (before Ray starts)."""
        lowered = [c.strip().lower() for c in self.classes]
        if len(set(lowered)) != len(lowered) or any(not c for c in lowered):
            raise ValueError(f"classes must be unique (case-insensitively) and non-empty: {list(self.classes)}")
        if "unlabeled" in lowered:
            raise ValueError("'unlabeled' is reserved for the unlabeled pool, not a class")
        for pool, prior in self.noisy_pools.items():
            if not isinstance(prior, dict):
                raise ValueError(f"noisy_pools.{pool}: expected a mapping class: probability, got {prior!r}")
            if any(p < 0 for p in prior.values()) or abs(sum(prior.values()) - 1.0) > 1e-3:
                raise ValueError(f"noisy pool {pool!r}: prior must be >= 0 and sum to 1, got {prior}")
        if self.min_quality > self.max_quality:
            raise ValueError("min_quality must be <= max_quality")
        if self.min_actors > self.max_actors:
            raise ValueError("min_actors must be <= max_actors")
        if self.video_mode == "sample" and not (self.video_fps > 0) == (self.video_every_n_frames == 0):
            raise ValueError("video_mode=sample needs exactly one of video_fps > 0 or video_every_n_frames > 0")
        if self.val_frac + self.test_frac >= 1.0:
            raise ValueError("val_frac + test_frac must be < 1")

    def prior(self, pool: str) -> list[float]:
        """The noisy pool's prior as a vector over ``classes`` (one-hot if not a noisy pool)."""
        p = self.noisy_pools.get(pool, {pool: 1.0})
        return [float(p.get(c, 0.0)) for c in self.classes]


def load_preprocess(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> PreprocessConfig:
    return load(PreprocessConfig, path, overrides)
