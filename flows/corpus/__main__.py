"""``python -m flows.corpus``: the same as ``sift make-corpus``."""
from flows.core.cli import run_entry

from flows.corpus import main

raise SystemExit(run_entry(main, "make-corpus"))
