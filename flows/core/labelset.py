"""The label set of a preprocessing run: what the data says, checked against what the user wrote.

Rules (the README's "Your own labels" section):

* With no ``classes=`` the label set is the data's: the first-level folder names of a folder tree
  (the ImageFolder convention; ``unlabeled/`` and names starting with ``.``/``_`` excepted) or the
  distinct ``label`` values of a JSONL manifest, compared case-insensitively and sorted. With
  ``classes=`` that list fixes the order, and folders / labels outside it are refused (a folder) or
  rejected line by line (a manifest).
* A default that belongs to the default label set (the NEUTRAL noisy pool,
  ``PreprocessConfig.noisy_pools``) steps aside when a class it names is absent; the same setting
  written by the user (a ``--config`` file or ``key=value``) is refused, in one line naming the key,
  the value and the classes present.

Everything here runs before Ray starts and reads only names (no pixels).
"""
from __future__ import annotations

import json
from pathlib import Path

from flows.core.config import ConfigError, explicit, replace
from flows.ingest.inputs import IngestError
from flows.core.schema import UNLABELED


def label_names(inp: str | Path) -> list[str]:
    """The label names the input carries, in the order met: folder names or manifest labels.

    Unreadable manifest lines are skipped here (ingest turns them into reject rows later).
    """
    inp = Path(inp)
    if not inp.exists():
        raise IngestError(f"input {inp} does not exist")
    if inp.is_dir():
        return [e.name for e in sorted(inp.iterdir())
                if e.is_dir() and not e.name.startswith((".", "_")) and e.name.lower() != UNLABELED]
    names = []
    if inp.suffix.lower() not in (".jsonl", ".ndjson"):
        raise IngestError(f"input {inp} must be a folder tree or a .jsonl manifest")
    with open(inp, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            label = rec.get("label") if isinstance(rec, dict) else None
            if isinstance(label, str) and label.strip() and label.strip().lower() != UNLABELED:
                names.append(label.strip())
    return names


def data_classes(names: list[str]) -> tuple[str, ...]:
    """Distinct names, case-insensitively (the first spelling met wins), sorted case-insensitively."""
    first: dict[str, str] = {}
    for n in names:
        first.setdefault(n.lower(), n)
    return tuple(sorted(first.values(), key=str.lower))


def resolve(cfg, names: list[str]):
    """``cfg`` with its label set fixed from the data's label ``names`` and its noisy pools checked.

    Raises ConfigError for a user setting that does not fit the data. The returned config has
    non-empty ``classes`` and only noisy pools whose classes are all present.
    """
    present = data_classes(names)
    user = explicit(cfg)
    classes = tuple(cfg.classes) or present
    if not classes:
        raise ConfigError("classes: the input has no labeled items (no class folders, no manifest labels) "
                          "and classes= is not set; name the label set, e.g. classes=[NSFW, SFW]")
    canon = {c.lower(): c for c in classes}
    pools = {}
    for pool, prior in cfg.noisy_pools.items():
        named = list(dict.fromkeys([pool, *prior]))
        missing = [c for c in named if c.lower() not in canon]
        if missing and "noisy_pools" in user:
            raise ConfigError(f"noisy_pools: {pool}: {dict(prior)} names {missing}, not in the classes "
                              f"{list(classes)}")
        if missing:  # the default label set's pool: not this data's
            continue
        pools[canon[pool.lower()]] = {canon[c.lower()]: float(p) for c, p in prior.items()}
    return replace(cfg, classes=classes, noisy_pools=pools)


def for_input(cfg, inp: str | Path):
    """:func:`resolve` against the labels of ``inp`` (a folder tree or a JSONL manifest)."""
    return resolve(cfg, label_names(inp))


def dropped_defaults(before, after) -> list[str]:
    """Noisy pools of the defaults that stepped aside (for the run's log line)."""
    kept = {p.lower() for p in after.noisy_pools}
    return [p for p in before.noisy_pools if p.lower() not in kept]
