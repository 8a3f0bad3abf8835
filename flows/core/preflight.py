"""Checks of a command's paths before any work starts (before Ray, a browser or a model load).

Every ``main()`` calls these on its arguments first, so ``sift train --data /nope`` is one line and exit
2 within a second, not a traceback after a Ray start. Each raises a :class:`~flows.core.errors.SiftError`
(reason ``not_found`` or ``bad_output``) whose message names the flag.
"""
from __future__ import annotations

import os
from pathlib import Path

from flows.core.errors import SiftError


def existing(path: str | Path, what: str, kind: str = "any") -> Path:
    """``path`` as a Path when it exists and is of ``kind`` ("file", "dir" or "any").

    ``what`` names it in the message (``--input``, ``video``): ``--input /nope: no such file or folder``."""
    p = Path(path)
    if not p.exists():
        noun = {"file": "file", "dir": "folder"}.get(kind, "file or folder")
        raise SiftError(f"{what} {p}: no such {noun}", reason="not_found")
    if kind == "file" and not p.is_file():
        raise SiftError(f"{what} {p}: is a folder, expected a file", reason="not_found")
    if kind == "dir" and not p.is_dir():
        raise SiftError(f"{what} {p}: is a file, expected a folder", reason="not_found")
    return p


def output(path: str | Path, what: str, kind: str = "dir", create: bool = False) -> Path:
    """``path`` as a Path when it can be written as a ``kind`` ("dir" or "file"): it is absent or of that
    kind, and its nearest existing ancestor is a writable folder. Nothing is created unless ``create``
    (a "dir": made with its parents, an OSError becoming the one-line SiftError)."""
    p = Path(path)
    if p.exists() and (p.is_dir() != (kind == "dir")):
        raise SiftError(f"{what} {p}: is a {'file' if kind == 'dir' else 'folder'}, expected a "
                        f"{'folder' if kind == 'dir' else 'file'}", reason="bad_output")
    base = p if p.exists() else p.absolute().parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise SiftError(f"{what} {p}: {base} is a file, not a folder", reason="bad_output")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SiftError(f"{what} {p}: {base} is not writable", reason="bad_output")
    if create and kind == "dir":
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SiftError(f"{what} {p}: cannot create it ({exc.strerror or exc})", reason="bad_output") from None
    return p
