"""``sift tune``: a Ray Tune search with ASHA over the training recipe; every trial is a ``sift train`` run.

    sift tune --data OUT [--config FILE] [--space FILE] [--samples N] [--max-concurrent K] [key=value ...]

Each trial is a Tune function trainable that calls ``train.main.run``, the TorchTrainer of ``sift
train`` (the same data, cache, worker loop, calibration and registration), with Ray Tune's
``TuneReportCallback`` in its RunConfig: every epoch the worker reports ``val_selection`` and Train
hands it to Tune, where ASHA stops the weak trials. Every trial is an MLflow run nested under one
parent run (tag ``mlflow.parentRunId``); at the end the best trial's model version gets ``@candidate``,
and the parent run holds the best trial's knobs and score and a plot of every trial's curve.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import uuid
from pathlib import Path

import pandas as pd

from flows.core.config import build, parse_overrides

from flows.core.knobs import add_knobs_flag
from flows.core.errors import SiftError

from . import search
from .config import for_classes, load_train, state_dir
from .main import read_data_manifest


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the search needs, checked before Ray starts."""
    cfg: object                    # the base TrainConfig (label-set checked)
    config: str | None             # --config FILE, absolute
    overrides: dict                # key=value overrides of the base recipe
    data: Path
    space: tuple                   # search.Dim, ...
    settings: search.SearchConfig  # samples, concurrency, ASHA's grace period and reduction factor


def plan(args: argparse.Namespace) -> Plan:
    """Config, data, space and search settings from the command line; ConfigError on any of them."""
    config = str(Path(args.config).resolve()) if args.config else None
    overrides = parse_overrides(args.overrides)
    data = Path(args.data).resolve()
    classes = read_data_manifest(data)["classes"]
    cfg = for_classes(load_train(config, overrides), classes)
    space = search.read_space(args.space)
    search.check_values(space, lambda extra: for_classes(load_train(config, {**overrides, **extra}), classes),
                        where=str(args.space or search.DEFAULT_SPACE))
    given = {"samples": args.samples, "max_concurrent": args.max_concurrent,
             "grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    settings = build(search.SearchConfig, {k: v for k, v in given.items() if v is not None}, where="sift tune")
    return Plan(cfg, config, overrides, data, space, settings)


def param_space(space) -> dict:
    """The Dims as Ray Tune distributions."""
    import ray.tune

    make = {"loguniform": ray.tune.loguniform, "uniform": ray.tune.uniform, "quniform": ray.tune.quniform,
            "randint": ray.tune.randint, "choice": lambda *v: ray.tune.choice(list(v)),
            "grid": lambda *v: ray.tune.grid_search(list(v))}
    return {d.knob: make[d.kind](*d.args) for d in space}


def warm_cache(cfg, data: Path, tracking_uri: str | None) -> None:
    """Build the embedding cache once before the trials start (they would race to write it): the
    cache of ``train.main.run`` itself, so every trial reuses it."""
    from .main import run

    run(cfg, data, tracking_uri, cache_only=True)


def _plain(value):
    """A numpy scalar from a Tune sampler as the Python value the config expects."""
    return value.item() if hasattr(value, "item") else value


def trial(config: dict, job: dict) -> None:
    """One trial (a Tune function trainable): ``sift train`` with this trial's knobs. Runs in a Tune
    actor, so the driver's state dir and working directory come with ``job``."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .main import run

    os.environ["SIFT_HOME"] = job["home"]
    os.chdir(job["cwd"])
    trial_id = ray.tune.get_context().get_trial_id()
    knobs = {k: _plain(v) for k, v in config.items()}
    cfg = load_train(job["config"], {**job["overrides"], **knobs, "run_name": f"{job['name']}-{trial_id}"})
    run(cfg, job["data"], job["uri"], callbacks=[TuneReportCallback()],
        tags={"mlflow.parentRunId": job["parent"], "sift.tune": job["name"], "sift.trial": trial_id})


def tuner(p: Plan, job: dict, concurrent: int, fn=None):
    """The Ray Tune search: ``fn`` (default: ``trial``) over the space, ASHA on the per-epoch
    ``val_selection``, at most ``concurrent`` trials at once."""
    import ray.tune
    import ray.tune.schedulers
    import ray.tune.search

    trainable = ray.tune.with_resources(ray.tune.with_parameters(fn or trial, job=job),
                                        {"CPU": search.TRIAL_DRIVER_CPUS})
    return ray.tune.Tuner(
        trainable, param_space=param_space(p.space),
        tune_config=ray.tune.TuneConfig(
            num_samples=p.settings.samples,
            scheduler=ray.tune.schedulers.ASHAScheduler(**search.asha_settings(p.cfg.epochs, p.settings)),
            # the concurrency limit lives here: Tune ignores max_concurrent_trials beside a search_alg
            search_alg=ray.tune.search.BasicVariantGenerator(max_concurrent=concurrent, random_state=p.cfg.seed)),
        run_config=ray.tune.RunConfig(name=job["name"], storage_path=str(state_dir() / "ray_results"), verbose=1,
                                      failure_config=ray.tune.FailureConfig(max_failures=0)))


def reported(results) -> dict[str, list[dict]]:
    """{trial id: the epochs it reported to Tune, in order (epoch, step, val_selection, ...)}: what
    ASHA saw. A stopped trial's worker may log an epoch more to MLflow before it is shut down."""
    out = {}
    for r in results:
        df = r.metrics_dataframe
        if df is not None and {"trial_id", "epoch", "step", "val_selection"} <= set(df.columns) and len(df):
            out[str(df["trial_id"].iloc[-1])] = df[["epoch", "step", "val_selection"]].to_dict("records")
    return out


def collect(client, exp_id: str, parent: str, model_name: str, knobs: list[str], epochs: dict) -> list[dict]:
    """The parent's child runs as trials: run, status, epochs reported to Tune (``epochs``: trial id ->
    count), best score, registered version, the knobs. A run ASHA stopped (or that failed) is left
    RUNNING by its killed worker: it is marked KILLED here."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                              order_by=["attributes.start_time ASC"])
    trials = []
    for r in runs:
        versions = client.search_model_versions(f"name='{model_name}' and run_id='{r.info.run_id}'")
        status = r.info.status
        if status == "RUNNING":
            client.set_terminated(r.info.run_id, "KILLED")
            status = "KILLED"
        trials.append({"trial": r.data.tags.get("sift.trial", ""), "run": r.info.run_name, "run_id": r.info.run_id,
                       "status": status, "epochs": epochs.get(r.data.tags.get("sift.trial"), 0),
                       "score": r.data.metrics.get("best_val_selection"),
                       "version": max((v.version for v in versions), key=int, default=""),
                       **{k: r.data.params.get(k) for k in knobs}})
    return trials


def trial_label(t: dict, knobs: list[str]) -> str:
    """A trial's name in the plot: its id, the knobs that varied, and whether ASHA stopped it."""
    values = " ".join(f"{k}={t[k]}" for k in knobs)
    stopped = "" if t["status"] == "FINISHED" else f" (stopped after epoch {t['epochs']})"
    return f"{t['trial']} {values}{stopped}".strip()


def report(client, parent: str, trials: list[dict], best: dict, p: Plan, lines: dict, out_dir: Path) -> None:
    """The parent run: the best trial's knobs and score, every trial's curve, the trials' table."""
    knobs = [d.knob for d in p.space]
    client.log_param(parent, "best_run_id", best["run_id"])
    client.log_param(parent, "best_trial", best["trial"])
    for k in knobs:
        client.log_param(parent, f"best.{k}", best[k])
    client.log_metric(parent, "best_val_selection", best["score"])
    client.log_metric(parent, "trials_finished", sum(t["status"] == "FINISHED" for t in trials))
    client.log_metric(parent, "trials_stopped", sum(t["status"] != "FINISHED" for t in trials))
    shown = search.varied(trials, knobs) or knobs
    labels = {t["trial"]: trial_label(t, shown) for t in trials}
    out_dir.mkdir(parents=True, exist_ok=True)
    search.trials_plot({labels.get(tid, tid): pts for tid, pts in lines.items()}, out_dir / "trials.png",
                       title=f"{out_dir.name}: val_selection per epoch", best=labels[best["trial"]])
    (out_dir / "trials.json").write_text(json.dumps({"best": best, "trials": trials}, indent=2, default=str))
    for name in ("trials.png", "trials.json"):
        client.log_artifact(parent, str(out_dir / name))


def table(trials: list[dict], knobs: list[str]) -> str:
    """The trials side by side: status, epochs, best score, the knobs that varied."""
    cols = ["trial", "status", "epochs", "score", "version", *search.varied(trials, knobs)]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        return pd.DataFrame(trials, columns=cols).to_string(index=False)


def start_parent(mlflow, p: Plan, name: str) -> str:
    """The parent MLflow run of the search; its params say what was searched and how."""
    from . import tracking

    client = mlflow.MlflowClient()
    run = client.create_run(tracking.experiment(mlflow, p.cfg.experiment), run_name=name, tags={"sift.stage": "tune"})
    asha = search.asha_settings(p.cfg.epochs, p.settings)
    params = {"data": str(p.data), "epochs": p.cfg.epochs, **dataclasses.asdict(p.settings),
              **{f"asha.{k}": v for k, v in asha.items()}, "asha.rungs": search.rungs(asha),
              **{f"space.{d.knob}": d.describe() for d in p.space}}
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v)
    client.log_dict(run.info.run_id, {"config": p.config, "overrides": p.overrides}, "base_config.json")
    return run.info.run_id


def conclude(client, p: Plan, parent: str, name: str, results) -> tuple[list[dict], dict]:
    """After the search: the trials from MLflow, ``@candidate`` on the best one, the parent's report."""
    knobs, seen = [d.knob for d in p.space], reported(results)
    trials = collect(client, client.get_run(parent).info.experiment_id, parent, p.cfg.model_name, knobs,
                     {tid: int(max(row["epoch"] for row in rows)) for tid, rows in seen.items()})
    best = search.best_trial(trials)
    if best is None:
        raise SiftError(f"no trial finished ({len(trials)} started; see {results.experiment_path})",
                        reason="no_trial_finished")
    client.set_registered_model_alias(p.cfg.model_name, "candidate", best["version"])
    lines = {tid: [(row["step"], row["val_selection"]) for row in rows] for tid, rows in seen.items()}
    report(client, parent, trials, best, p, lines, state_dir() / "runs" / name)
    return trials, best


def execute(p: Plan, tracking_uri: str | None = None, num_cpus: int | None = None) -> dict:
    """Run the search: Ray, the concurrency budget, the cache, the parent run, the trials, the
    candidate. Returns a summary."""
    from flows.core.gpus import cluster_view, reachable, use_gpu
    from flows.core.runtime import init_ray

    from . import tracking

    mlflow = tracking.use(tracking_uri)
    client = mlflow.MlflowClient()
    name = p.cfg.run_name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    init_ray(num_cpus)
    # an autoscaling cluster is sized by what it can grow to (its node types at their limits), not by
    # the nodes up now: the head alone has no CPU for trials in cluster.yaml, and no GPU until asked
    resources, node_types, max_workers = cluster_view()
    gpu = use_gpu(p.cfg.use_gpu, resources, node_types)
    need = search.per_trial(p.cfg.num_workers, p.cfg.cpus_per_worker, gpu)
    concurrent = search.concurrency(reachable(resources, node_types, max_workers), need, p.settings.max_concurrent)
    warm_cache(p.cfg, p.data, tracking_uri)
    parent = start_parent(mlflow, p, name)
    job = {"config": p.config, "overrides": p.overrides, "data": str(p.data), "parent": parent, "name": name,
           "uri": tracking.tracking_uri(tracking_uri), "home": str(state_dir()), "cwd": os.getcwd()}
    print(f"[tune] {name}: {p.settings.samples} samples x space {[d.knob for d in p.space]}, {concurrent} at once "
          f"({need} each), ASHA rungs at epochs {search.rungs(search.asha_settings(p.cfg.epochs, p.settings))}",
          flush=True)
    try:
        trials, best = conclude(client, p, parent, name, tuner(p, job, concurrent).fit())
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return {"name": name, "parent_run_id": parent, "best": best, "trials": trials, "model_name": p.cfg.model_name,
            "out_dir": str(state_dir() / "runs" / name)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift tune", description=__doc__.split("\n\n")[0])
    add_knobs_flag(ap, load_train)
    ap.add_argument("--data", required=True, help="output folder of `sift preprocess`")
    ap.add_argument("--config", help="YAML of settings, e.g. train/configs/small.yaml (--knobs lists every knob)")
    ap.add_argument("--space", help=f"YAML search space (default: {search.DEFAULT_SPACE.name})")
    ap.add_argument("--samples", type=int, help="trials to sample (default 8; times the grid size with grids)")
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster allows)")
    ap.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial (default 1)")
    ap.add_argument("--reduction-factor", type=float, help="ASHA keeps the best 1/FACTOR at each rung (default 2)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or .sift/mlflow.db)")
    ap.add_argument("--num-cpus", type=int, help="logical CPUs for a local Ray (default: 2 x cores)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the training recipe")
    args = ap.parse_args(argv)
    p = plan(args)
    s = execute(p, args.tracking_uri, args.num_cpus)
    print(table(s["trials"], [d.knob for d in p.space]))
    best = s["best"]
    print(f"best trial {best['trial']} ({best['run_id']}): best_val_selection={best['score']:.4f}; "
          f"{s['model_name']} v{best['version']} @candidate; plot {s['out_dir']}/trials.png")
    print(f"compare: sift runs --parent {s['parent_run_id']}    promote: sift promote {best['run_id']}")
    return 0


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "tune"))
