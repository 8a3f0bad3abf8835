"""``sift promote RUN_ID [--force]``: move ``@champion`` to a run's model if it beats the champion.

The comparison is on ``val_selection``, the model-selection metric the run was trained for (the
worst-mistake operating point, e.g. BAD recall at GOOD->BAD <= 5% on val, or macro-F1). Runs of another
label set or selection criterion do not compare and are not promoted over the champion. ``--force``
promotes regardless.
"""
from __future__ import annotations

import argparse

from flows.core.errors import SiftError

from .config import load_train
from .tracking import promote, use


def latest_run(model_name: str, uri: str | None) -> str:
    """Run id of the newest registered version of ``model_name``."""
    versions = use(uri).MlflowClient().search_model_versions(f"name='{model_name}'")
    if not versions:
        raise SiftError(f"no registered versions of {model_name!r} yet: run `sift train` first",
                        reason="no_registered_model")
    return max(versions, key=lambda v: int(v.version)).run_id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift promote", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_id", nargs="?", help="the training run (see `sift runs`)")
    ap.add_argument("--latest", action="store_true", help="the most recent run with a registered model")
    ap.add_argument("--force", action="store_true", help="promote even if it does not beat the champion")
    ap.add_argument("--model-name", default=load_train().model_name)
    ap.add_argument("--tracking-uri")
    args = ap.parse_args(argv)
    if not args.run_id and not args.latest:
        ap.error("give a RUN_ID or --latest")
    run_id = args.run_id or latest_run(args.model_name, args.tracking_uri)
    moved, message = promote(run_id, args.model_name, force=args.force, uri=args.tracking_uri)
    print(message)
    return 0  # "not better than the champion" is an answer, not an error


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "promote"))
