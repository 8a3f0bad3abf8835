"""``python -m serve.scan``: the same as ``sift scan``."""
from flows.cli import run_entry

from serve.scan.job import main

raise SystemExit(run_entry(main, "scan"))
