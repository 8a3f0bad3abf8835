"""``python -m serve.offline.scan``: the same as ``sift scan``."""
from flows.core.cli import run_entry

from serve.offline.scan.job import main

raise SystemExit(run_entry(main, "scan"))
