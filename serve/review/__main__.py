"""``python -m serve.review``: the same as ``sift review``."""
from flows.core.cli import run_entry

from serve.review import main

raise SystemExit(run_entry(main, "review"))
