"""``sift <stage> --knobs``: every knob of a stage's config, read from the config class itself.

A knob's default, range and help live on its dataclass field (``flows.core.config.knob``); the
comments written with the fields are its longer documentation. This module prints both.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import typing
from typing import Any

import yaml


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
