"""``sift promote RUN_ID [--force]``: move ``@champion`` to a run's model if it beats the champion.

The comparison is on ``val_selection``, the model-selection metric the run was trained for
(default: BAD recall at GOOD->BAD <= 5% on val). ``--force`` promotes regardless.
"""
from __future__ import annotations

import argparse

from .config import load_train
from .tracking import promote


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift promote", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_id")
    ap.add_argument("--force", action="store_true", help="promote even if it does not beat the champion")
    ap.add_argument("--model-name", default=load_train().model_name)
    ap.add_argument("--tracking-uri")
    args = ap.parse_args(argv)
    moved, message = promote(args.run_id, args.model_name, force=args.force, uri=args.tracking_uri)
    print(message)
    return 0 if moved or "already" in message else 1


if __name__ == "__main__":
    raise SystemExit(main())
