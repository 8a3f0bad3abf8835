"""``sift``: one console script, one subcommand per stage.

Each subcommand is a ``main(argv=None)`` in a module (``python -m <module>`` runs the same).
Modules are imported only when their subcommand runs, so ``sift --help`` is instant and the
import direction flows <- train <- serve holds (this table names modules, it imports none).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

COMMANDS = {
    "make-corpus": ("flows.corpus", "write the deterministic synthetic media corpus"),
    "scrape": ("flows.scrape", "visit feeds in headless Chromium, collect + compress media, filtered feed"),
    "preprocess": ("flows.ingest.preprocess", "raw media -> deduplicated, split parquet shards (Ray Data)"),
    "train": ("train.main", "train the classifier on Ray Train, tracked and registered in MLflow"),
    "tune": ("train.tune", "Ray Tune search (ASHA) over the training knobs; best trial -> @candidate"),
    "mlflow-server": ("train.mlflow_server", "the MLflow tracking server (SQLite under .sift, loopback by default)"),
    "promote": ("train.promote", "move the @champion alias to a run's model if it is better"),
    "export": ("train.runtime.main", "add ONNX fp32 + INT8 graphs (agreement measured) to an older model"),
    "runs": ("train.runs", "compare MLflow runs: key metrics, differing params, a plot"),
    "serve": ("serve.main", "start the HTTP API on Ray Serve (batched, GPU when present)"),
    "scan": ("serve.offline.scan.job", "long videos -> cuts, scored frames, labelled segments, plot (+ --reel)"),
    "predict": ("serve.offline.predict", "a model over an image folder or parquet dataset -> one parquet (Ray Data)"),
    "classify": ("serve.client:classify_main", "classify files/folders via a server or locally"),
    "score-folder": ("serve.client:score_folder_main", "score a folder by one class, copy those in range"),
    "review": ("serve.review", "web page to review uncertain/disputed/reported items; labels feed training"),
}


PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return (f"usage: sift COMMAND [ARGS...]   (sift --version: the installed version)\n\ncommands:\n{rows}"
            "\n\n`sift COMMAND --help` for details.")


def version(dist: str = "sift") -> str:
    """The installed distribution's version; from a checkout that is not installed, pyproject's
    ``[project] version`` (``"unknown"`` when neither is there)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])
    except (ImportError, OSError, KeyError, ValueError):  # tomllib: Python >= 3.11
        return "unknown"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"sift {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sift: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from flows.core.runtime import quiet_env

    quiet_env()
    module_name, _, func = COMMANDS[name][0].partition(":")
    return run_entry(getattr(importlib.import_module(module_name), func or "main"), name, rest)


def run_entry(entry, name: str, argv=None) -> int:
    """Run a stage's ``main(argv)``: its return code, or 2 and one line on stderr for a
    :class:`~flows.core.errors.SiftError` (the one error convention). ``python -m <module>`` runs it too."""
    from flows.core.errors import SiftError

    try:
        return int(entry(argv) or 0)
    except SiftError as exc:
        print(f"sift {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
