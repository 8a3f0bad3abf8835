"""Turn an input (a labeled folder tree or a JSONL manifest) into a list of work items.

A work item is a small dict (no pixels): ``path, label, label_name, pool, group, source, score, tags``,
plus ``spans`` (JSON text, empty for plain items) and ``whole`` (whether the file itself is an input,
not only spans of it): see ``flows.ingest.spans``. Malformed manifest lines are not fatal: they become items
carrying a ``reject`` reason, so they end up in ``rejects`` like any other bad input.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from flows.core.errors import SiftError
from flows.core.schema import CLEAN, NO_LABEL, NOISY, UNLABELED, UNLABELED_POOL
from flows.ingest.spans import group_spans, has_span, span_item


class IngestError(SiftError, ValueError):
    """The input as a whole is unusable (missing, wrong folder names); the message says why."""

    reason = "bad_input"


def label_of(name: str | None, classes: tuple[str, ...], noisy: set[str]) -> tuple[int, str, str]:
    """Map a label name (case-insensitive) to ``(index, canonical name, pool)``.

    ``None``/``""``/``unlabeled`` is the unlabeled pool. Raises KeyError for unknown names.
    """
    if name is None or str(name).strip() == "" or str(name).strip().lower() == UNLABELED:
        return NO_LABEL, UNLABELED, UNLABELED_POOL
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    i = lookup[str(name).strip().lower()]
    return i, classes[i], NOISY if classes[i] in noisy else CLEAN


MAX_TAG_CHARS = 64


def parse_tags(value) -> str:
    """A manifest line's ``tags`` (a list of names) -> canonical JSON text: sorted, distinct,
    lower-cased. ValueError for anything else. ``""`` (no ``tags`` key) means "not annotated",
    ``"[]"`` means "annotated: none of the tags"."""
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise ValueError(f"tags must be a list of names, got {value!r}"[:200])
    tags = sorted({t.strip().lower() for t in value})
    if any(len(t) > MAX_TAG_CHARS for t in tags) or any(t == UNLABELED for t in tags):
        raise ValueError(f"a tag is longer than {MAX_TAG_CHARS} characters or reserved")
    return json.dumps(tags)


def _item(path: str, label: tuple[int, str, str], source: str, group: str = "",
          score: float = math.nan, reject: str = "", detail: str = "", tags: str = "", url: str = "") -> dict:
    """A work item. ``url``: the item is that URL, fetched into ``local`` by ``flows.ingest.download``
    before processing (``path`` stays the URL, so the output says where the item came from)."""
    idx, name, pool = label
    return {"path": path, "label": idx, "label_name": name, "pool": pool, "group": group,
            "source": source, "score": float(score), "tags": tags, "reject": reject, "detail": detail,
            "spans": "", "whole": True, "url": url, "local": ""}


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in p.relative_to(root).parts)


def scan_folder(root: Path, classes: tuple[str, ...], noisy: set[str]) -> list[dict]:
    """Items of a folder tree whose first-level folder names are labels.

    Files and folders whose names start with ``.`` or ``_`` are metadata and skipped. Files directly
    under ``root`` are unlabeled. Every other file is an input (its extension is *not* trusted:
    content decides later, so a mislabeled extension is still processed or rejected with a reason).
    """
    items = []
    allowed = sorted([*classes, UNLABELED])
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file():
            items.append(_item(str(entry), label_of(None, classes, noisy), source=str(root)))
            continue
        try:
            label = label_of(entry.name, classes, noisy)
        except KeyError:
            raise IngestError(
                f"folder {entry.name!r} in {root} is not a label; first-level folders must be one of "
                f"{allowed} (set classes=[...] to use another label set)") from None
        for f in sorted(entry.rglob("*")):
            if f.is_file() and not _hidden(f, root):
                items.append(_item(str(f), label, source=str(f.parent.relative_to(root))))
    return items


def read_manifest(path: Path, classes: tuple[str, ...], noisy: set[str]) -> list[dict]:
    """Items of a JSONL manifest: ``path`` or ``url``, optional ``label``, ``group``, ``source``, ``score``,
    ``tags`` (a list of names, multi-label, beside the class) and ``start``/``end`` (s) for a span of a video labeled ``label`` (see ``flows.ingest.spans``).

    Relative paths are relative to the manifest's folder. A line that cannot be used becomes an
    item with ``reject`` set (``bad_manifest_line``, ``bad_span``) rather than stopping the job.
    The span lines of one video are grouped into one item.
    """
    items = []
    base = path.parent
    unl = label_of(None, classes, noisy)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("a line must be a JSON object")
            except ValueError as exc:
                items.append(_item(where, unl, where, reject="bad_manifest_line", detail=str(exc)))
                continue
            target = rec.get("path") or rec.get("url")
            if not target:
                items.append(_item(where, unl, where, reject="bad_manifest_line", detail="no path or url"))
                continue
            try:
                label = label_of(rec.get("label"), classes, noisy)
            except KeyError:
                items.append(_item(str(target), unl, where, reject="bad_manifest_line",
                                   detail=f"label {rec.get('label')!r} is not one of {list(classes)}"))
                continue
            score = rec.get("score")
            try:
                score = math.nan if score is None else float(score)
            except (TypeError, ValueError):
                items.append(_item(str(target), label, where, reject="bad_manifest_line",
                                   detail=f"score {score!r} is not a number"))
                continue
            try:
                tags = parse_tags(rec["tags"]) if "tags" in rec else ""
            except ValueError as exc:
                items.append(_item(str(target), label, where, reject="bad_manifest_line", detail=str(exc)))
                continue
            source = str(rec.get("source") or "")
            if "url" in rec and not rec.get("path"):
                items.append(_item(str(target), label, source or where, group=str(rec.get("group") or source),
                                   score=score, tags=tags, url=str(target)))
                continue
            p = Path(str(target)).expanduser()
            p = p if p.is_absolute() else base / p
            # items of one source page share a split: the page is their default group
            group = str(rec.get("group") or source or "")
            item = _item(str(p), label, source or str(path), group=group, score=score, tags=tags)
            items.append(span_item(item, rec, where) if has_span(rec) else item)
    return group_spans(items)


def discover(inp: str | Path, classes: tuple[str, ...], noisy_pools) -> list[dict]:
    """Items from a folder tree or a ``.jsonl`` manifest."""
    inp = Path(inp)
    noisy = set(noisy_pools)
    if not inp.exists():
        raise IngestError(f"input {inp} does not exist")
    if inp.is_dir():
        items = scan_folder(inp, classes, noisy)
    elif inp.suffix.lower() in (".jsonl", ".ndjson"):
        items = read_manifest(inp, classes, noisy)
    else:
        raise IngestError(f"input {inp} must be a folder tree or a .jsonl manifest")
    if not items:
        raise IngestError(f"input {inp} holds no files")
    return items

