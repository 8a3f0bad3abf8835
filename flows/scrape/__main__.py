"""``python -m flows.scrape``: the same as ``sift scrape``."""
from flows.core.cli import run_entry

from flows.scrape import main

raise SystemExit(run_entry(main, "scrape"))
