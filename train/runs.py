"""``sift runs``: compare MLflow runs — key metrics, the params that differ, and a plot.

    sift runs [--experiment sift] [--last 10] [--plot runs.png]
    sift runs --parent RUN_ID|latest      # the trials of a `sift tune` search, the knobs that varied
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from flows.core.errors import SiftError

from .config import load_train, state_dir
from .metrics import metric_name
from .tracking import SELECTION, use

SUMMARY_METRICS = ["test_macro_f1", "test_accuracy", "test_ece"]


def key_metrics(runs: pd.DataFrame) -> list[str]:
    """The metrics worth a column for these runs, whatever their label sets: the selection score,
    each worst-mistake operating point logged, macro-F1 / accuracy / ECE, then F1 of every class
    of every run (in the order the runs name them)."""
    logged = [c[len("metrics."):] for c in runs.columns if c.startswith("metrics.")]
    points = sorted(m for m in logged if m.startswith("test_") and "_recall_at_" in m)
    classes: list[str] = []
    for names in runs.get("params.classes_list", pd.Series(dtype=str)).dropna():
        classes += [c for c in str(names).split(",") if c and c not in classes]
    per_class = [f"test_f1_{metric_name(c)}" for c in classes]
    return [m for m in [SELECTION, *points, *SUMMARY_METRICS, *per_class] if m in logged]


def compare(runs: pd.DataFrame, metrics: list[str], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Runs (as from ``mlflow.search_runs``) -> one row per run: name, classes, selection criterion,
    metrics, differing params (``extra``: more of the frame's columns, e.g. ``status``, after the id)."""
    params = [c for c in runs.columns if c.startswith("params.")]
    always = ["params.classes_list", "params.selection"]
    shown = [*always, "params.run_name"]  # the run's name is the first column already
    differing = [c for c in params if c not in shown and runs[c].astype(str).nunique(dropna=False) > 1]
    cols = {"tags.mlflow.runName": "run", "run_id": "run_id", **{c: c for c in extra if c in runs.columns}}
    cols.update({c: c[len("params."):].replace("_list", "") for c in always if c in runs.columns})
    cols.update({f"metrics.{m}": m for m in metrics if f"metrics.{m}" in runs.columns})
    cols.update({c: c[len("params."):] for c in differing})
    table = runs[list(cols)].rename(columns=cols)
    table["run_id"] = table["run_id"].str[:8]
    return table


def tune_parent(mlflow, exp_id: str, parent: str) -> str:
    """The run id of a ``sift tune`` parent run: ``parent`` itself, or the newest one for 'latest'."""
    if parent != "latest":
        return parent
    runs = mlflow.search_runs([exp_id], filter_string="tags.`sift.stage` = 'tune'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if runs.empty:
        raise SiftError("no `sift tune` search in this experiment yet", reason="no_search")
    return str(runs.iloc[0]["run_id"])


def trial_runs(mlflow, exp_id: str, parent: str, last: int | None) -> pd.DataFrame:
    """The trials of a search: its child runs (tag ``mlflow.parentRunId``), oldest first."""
    return mlflow.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                              order_by=["attributes.start_time ASC"], max_results=last or 1000)


def trial_metrics(runs: pd.DataFrame) -> list[str]:
    """The columns of a search's trials: the registered model's score (its best epoch), the epochs
    run, macro-F1 / accuracy / ECE on test (a trial ASHA stopped has none)."""
    return [m for m in ["best_val_selection", "epoch", *SUMMARY_METRICS] if f"metrics.{m}" in runs.columns]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift runs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default=load_train().experiment)
    ap.add_argument("--last", type=int, default=None, help="how many recent runs (default 10; all trials)")
    ap.add_argument("--parent", help="a `sift tune` run id, or 'latest': compare the trials of that search")
    ap.add_argument("--metric", action="append", help="metrics to compare (repeatable)")
    ap.add_argument("--plot", default=None, help="PNG path (default: .sift/runs_comparison.png)")
    ap.add_argument("--tracking-uri")
    args = ap.parse_args(argv)
    mlflow = use(args.tracking_uri)
    exp = mlflow.get_experiment_by_name(args.experiment)
    if exp is None:
        print(f"no experiment {args.experiment!r} at {mlflow.get_tracking_uri()}")
        return 1
    if args.parent:
        runs = trial_runs(mlflow, exp.experiment_id, tune_parent(mlflow, exp.experiment_id, args.parent), args.last)
    else:
        runs = mlflow.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=args.last or 10)
    if runs.empty:
        print(f"no trials under {args.parent}" if args.parent else "no runs yet: sift train --data …")
        return 1
    metrics = args.metric or (trial_metrics(runs) if args.parent else key_metrics(runs))
    table = compare(runs, metrics, extra=("status",) if args.parent else ())
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    from .plots import runs_comparison_plot

    path = Path(args.plot) if args.plot else state_dir() / "runs_comparison.png"
    rows = [{"run": r["run"], **{m: r.get(m) for m in metrics if m in table.columns}} for _, r in table.iterrows()]
    runs_comparison_plot(rows, [m for m in metrics if m in table.columns], path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "runs"))
