"""``sift train``: preprocessed data -> embedding cache -> Ray Train (mean teacher) -> MLflow.

    sift train --data OUT_OF_PREPROCESS [--config FILE] [key=value ...]
    ray job submit --working-dir . -- sift train --data /shared/data backbone=openai/clip-vit-base-patch32
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import torch

from flows.core.config import ConfigError

from flows.core.knobs import add_knobs_flag
from flows.core.errors import SiftError
from flows.core.runtime import init_ray

from .augment import augment_kwargs
from .config import for_classes, load_train, state_dir
from .context import RunContext
from .loop import LossSpec
from .losses import default_cost_matrix
from .metrics import metric_name
from .model import load_backbone, resolve_backbone


def balanced_weights(counts: list[int], power: float) -> torch.Tensor | None:
    """(C,) class weights (N / (C n_c))^power, renormalised to a count-weighted mean of 1: power 1
    makes each class count as much as any other in the loss, 0 leaves the data's proportions. A class
    without labeled items gets weight 1. None when power is 0 or there is no item."""
    n = torch.tensor(counts, dtype=torch.float64)
    if power == 0 or n.sum() == 0:
        return None
    w = torch.where(n > 0, (n.sum() / (len(n) * n.clamp(min=1))) ** power, torch.ones_like(n))
    return (w / ((w * n).sum() / n.sum().clamp(min=1))).float()


def loss_spec(cfg, classes: list[str], priors: dict[str, list[float]],
              score_range: tuple[float, float] = (0.0, 1.0), class_counts: list[int] | None = None) -> LossSpec:
    gamma = torch.tensor([cfg.class_gamma.get(c, cfg.gamma_pos) for c in classes]) if cfg.class_gamma else cfg.gamma_pos
    return LossSpec(
        gamma_pos=gamma, gamma_neg=cfg.gamma_neg, eps=cfg.label_smoothing,
        cost=default_cost_matrix(classes, negative=cfg.negative, positive=cfg.positive, worst=cfg.cost_worst),
        cost_weight=cfg.cost_weight,
        priors={classes.index(k): torch.tensor(v, dtype=torch.float32) for k, v in priors.items()},
        mean_teacher=cfg.mean_teacher, consistency=cfg.consistency, consistency_weight=cfg.consistency_weight,
        rampup=cfg.consistency_rampup, confidence_threshold=cfg.confidence_threshold,
        noisy_sharpen=cfg.noisy_sharpen, ema_decay=cfg.ema_decay, score_range=score_range,
        tag_weight=cfg.tag_weight, noisy_pool=cfg.noisy_pool,
        class_weight=balanced_weights(class_counts, cfg.balance) if class_counts else None)


def zero_shot_seed(cfg, classes: list[str], backbone_dir: str) -> dict | None:
    """The prompt embeddings that seed the head (``zero_shot_prompts``), or None; ConfigError when
    the backbone has no text tower."""
    if not cfg.zero_shot_prompts:
        return None
    from .zeroshot import class_prompts, has_text_tower, prompt_embeddings

    if not has_text_tower(backbone_dir):
        raise ConfigError(f"zero_shot_prompts needs a CLIP checkpoint with a text tower; backbone={cfg.backbone} "
                          "has none (use an HF CLIP id or local copy, or tiny-clip for a test)")
    texts = class_prompts(classes, cfg.zero_shot_prompts)
    emb, scale = prompt_embeddings(backbone_dir, texts)
    return {"prompts": texts, "embeddings": emb, "scale": scale}


def class_counts(meta, n_classes: int) -> list[int]:
    """Clean labeled train items per class (what balanced class weights divide by)."""
    lab = meta[(meta.split == "train") & (meta.label >= 0) & (meta.pool == "clean")]
    return [int((lab.label == k).sum()) for k in range(n_classes)]


def read_data_manifest(data: Path) -> dict:
    """``DATA/manifest.json`` of ``sift preprocess``; ConfigError when it is missing or unreadable."""
    path = Path(data) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--data {data}: no manifest.json (is it an output folder of `sift preprocess`?)") \
            from None
    except ValueError as exc:
        raise ConfigError(f"--data {data}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not manifest.get("classes"):
        raise ConfigError(f"--data {data}: manifest.json names no classes")
    return manifest


def read_truth(path: str, classes: list[str], base: Path) -> dict[str, int]:
    """``{"path", "true"}`` JSONL -> {absolute path: class index} (relative paths from ``base``)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if rec.get("true") in classes:
            p = Path(rec["path"])
            out[str(p if p.is_absolute() else (base / p).resolve())] = classes.index(rec["true"])
    return out


def face_spec(cfg) -> dict | None:
    if not cfg.faces:
        return None
    from .faces import default_weights

    weights = default_weights() if cfg.face_weights == "nudenet" else Path(cfg.face_weights)
    return {"weights": str(weights), "face_classes": tuple(cfg.face_classes),
            "extra_classes": tuple(cfg.face_extra_classes), "conf": cfg.face_conf}


def run(cfg, data: str | Path, tracking_uri: str | None = None, num_cpus: int | None = None, *,
        callbacks: list | None = None, tags: dict | None = None, cache_only: bool = False) -> dict:
    """Train on a preprocess output; returns the summary written by rank 0.

    ``callbacks`` go to Ray Train's RunConfig (``sift tune`` passes Tune's report callback), ``tags``
    to the MLflow run (``sift tune``: ``mlflow.parentRunId``); ``cache_only`` stops once the embedding
    cache is built and returns ``{"cache": path}`` (``sift tune`` builds it before its trials start)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from flows.core.gpus import resolve_use_gpu

    from . import corrections, tracking
    from .cache import build_cache, cache_key
    from .faces import feature_names
    from .worker import train_loop_per_worker

    data = Path(data).resolve()
    manifest = read_data_manifest(data)
    classes, priors = manifest["classes"], manifest.get("priors", {})
    cfg = for_classes(cfg, classes)  # the label set's checks, before Ray starts
    if cfg.score_head and manifest.get("scored") == 0:
        raise ConfigError(f"score_head=true: no item of {data} has a score (manifest lines with \"score\")")
    home = state_dir()
    backbone_dir = resolve_backbone(cfg.backbone, home, image_size=cfg.image_size)
    prompts = zero_shot_seed(cfg, classes, backbone_dir)
    _, preproc = load_backbone(backbone_dir)
    if cfg.image_size and preproc.crop != cfg.image_size:
        raise ConfigError(f"image_size={cfg.image_size}: backbone {cfg.backbone} takes {preproc.crop} px "
                          "(image_size applies to torchvision CNNs; an HF checkpoint has its own)")
    preproc = dataclasses.replace(preproc, fit=cfg.image_fit)
    aug = augment_kwargs(cfg.aug_min_area, cfg.aug_jitter, cfg.aug_saturation, cfg.aug_hue, cfg.aug_invert)
    init_ray(num_cpus)
    faces = face_spec(cfg)
    n_face = len(feature_names(tuple(cfg.face_extra_classes))) if faces else 0
    key = cache_key(data, backbone_dir, preproc, cfg.cache_views, faces, cfg.seed, aug, cfg.colour_stats,
                    cfg.cache_runtime)
    cache = build_cache(data, home / "cache" / key, backbone_dir, preproc, cfg.cache_views, faces, cfg.seed,
                        actors=cfg.cache_actors, local_max=cfg.cache_local_max, aug=aug, stats=cfg.colour_stats,
                        runtime=cfg.cache_runtime)
    if cache_only:
        return {"cache": str(cache)}
    meta = pads.dataset(str(cache), format="parquet").to_table(
        columns=["id", "path", "split", "label", "pool", "score"]).to_pandas()
    score_range = (0.0, 1.0)
    if cfg.score_head:
        targets = meta.loc[(meta.split == "train") & meta.score.notna(), "score"]
        if targets.empty:
            raise ConfigError("score_head=true: no train item has a score (manifest lines with \"score\")")
        score_range = (float(targets.min()), float(targets.max()))
    # human corrections (sift review): applied to the labels as training reads them, see train/corrections.py
    corr = corrections.load(cfg, classes)
    used = corrections.summarize(meta, corr) if corr is not None else None
    if used and used["used"]:
        meta["label"] = corrections.apply(meta["id"], meta["path"], meta["label"], meta["pool"], corr)[0]
        print(f"[train] {used['used']} corrected items from {used['labels_db']}: {used['by_class']}", flush=True)
    counts = {"n_labeled": int(((meta.split == "train") & (meta.label >= 0)).sum()),
              "n_unlabeled": int(((meta.split == "train") & (meta.label < 0)).sum()),
              "n_val": int(((meta.split == "val") & (meta.label >= 0)).sum())}
    if counts["n_labeled"] == 0 or counts["n_val"] == 0:
        raise SiftError(f"need labeled train and val items, have {counts}", reason="no_labeled_items")
    # from here on progress is our per-epoch line; Ray Data's bars for every small read are noise
    ray.data.DataContext.get_current().enable_progress_bars = False
    # blocks in a fixed order: with the seeded shuffles, the same seed gives the same batches
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.read_parquet(str(cache), num_cpus=0.1)
    if used and used["used"]:
        ds = ds.map_batches(corrections.apply_table, fn_kwargs={"corr": corr}, batch_format="pyarrow", num_cpus=0.1)
    # The labeled pool, val and test are small next to the unlabeled pool and are read every epoch
    # (the labeled one many times): materialise them once instead of re-reading parquet each pass.
    # The unlabeled pool streams.
    datasets = {
        "labeled": ds.filter(expr="split == 'train' and label >= 0", num_cpus=0.1).materialize(),
        "unlabeled": ds.filter(expr="split == 'train' and label < 0", num_cpus=0.1),
        "val": ds.filter(expr="split == 'val'", num_cpus=0.1).materialize(),
        "test": ds.filter(expr="split == 'test'", num_cpus=0.1).materialize(),
    }
    if cfg.predictions:  # every item once, unsplit: rank 0 writes predictions.parquet for `sift review`
        datasets["predict"] = ds
    run_name = cfg.run_name or f"train-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    relabel = read_truth(cfg.eval_truth, classes, Path(manifest["input"])) if cfg.eval_truth else None
    ctx = RunContext(
        cfg=cfg, classes=classes, backbone_dir=backbone_dir, preproc=preproc, n_face=n_face, faces=faces,
        spec=loss_spec(cfg, classes, priors, score_range, class_counts(meta, len(classes))), augment=aug,
        score_range=score_range, tags=list(manifest.get("tags", [])) if cfg.tag_head else [],
        tracking_uri=tracking.tracking_uri(tracking_uri), run_name=run_name, out_dir=str(home / "runs" / run_name),
        data_dir=str(data), short_edge=int(manifest["config"]["short_edge"]), columns=list(ds.schema().names),
        relabel=relabel, corrections=used, zero_shot=prompts, mlflow_tags=dict(tags or {}), **counts)
    if used is not None:
        corrections.write(used, Path(ctx.out_dir))
    gpu = resolve_use_gpu(cfg.use_gpu)  # auto: GPUs now, or GPU nodes the autoscaler can add
    print(f"[train] {run_name}: {counts} backbone={cfg.backbone} faces={bool(faces)} "
          f"workers={cfg.num_workers} gpu={gpu} mean_teacher={cfg.mean_teacher}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"ctx": ctx},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        datasets=datasets,
        # one worker reads whole datasets: a split would only add a coordinator actor (~10 s to start here)
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["labeled", "unlabeled"] if cfg.num_workers > 1 else []),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(home / "ray_results"), worker_runtime_env=worker_env(),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2), callbacks=callbacks))
    trainer.fit()
    return json.loads((Path(ctx.out_dir) / "summary.json").read_text())


# MLflow's credentials for a guarded tracking server (rank 0 logs the run), and fault injection for tests
WORKER_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "SIFT_FAIL_AFTER_EPOCH")


def worker_env() -> dict | None:
    """Environment the train workers need from this process. A worker is started by its node's
    raylet, not by this process: a Ray that was up before the token was exported here (a cluster
    joined with RAY_ADDRESS, a long-lived local one) would give it an environment without it."""
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    return {"env_vars": env} if env else None


def table(summary: dict) -> str:
    """The evaluation table printed at the end of a run."""
    m = summary["metrics"]
    classes = summary["classes"]
    rows = [f"{'class':<10} {'n':>5} {'precision':>9} {'recall':>7} {'f1':>6}   (test split, clean labels only)"]
    for c in classes:
        k = metric_name(c)
        n = m.get(f"test_n_{k}")
        if n == 0:  # e.g. a class whose only labels are a noisy pool: nothing to measure it on
            rows.append(f"{c:<10} {0:>5}   no clean test items: not measured (macro_f1 counts it as 0)")
            continue
        rows.append(f"{c:<10} {'?' if n is None else int(n):>5} {m.get(f'test_precision_{k}', float('nan')):9.3f} "
                    f"{m.get(f'test_recall_{k}', float('nan')):7.3f} {m.get(f'test_f1_{k}', float('nan')):6.3f}")
    keys = [k for k in m if k.startswith("test_") and ("recall_at" in k or k in ("test_macro_f1", "test_ece", "test_accuracy"))]
    rows += [f"{k[5:]:<32} {m[k]:.3f}" for k in keys]
    rows.append(f"temperature {m.get('temperature', 1.0):.3f}   thresholds "
                + ", ".join(f"{c}={t:.3f}" for c, t in zip(classes, summary["thresholds"])))
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift train", description=__doc__.split("\n\n")[0])
    add_knobs_flag(ap, load_train)
    ap.add_argument("--data", required=True, help="output folder of `sift preprocess`")
    ap.add_argument("--config", help="YAML of settings, e.g. train/configs/small.yaml (--knobs lists every knob)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or .sift/mlflow.db)")
    ap.add_argument("--num-cpus", type=int, help="logical CPUs for a local Ray (default: 2 x cores)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    read_data_manifest(Path(args.data))  # checked first: before the config, the backbone, the cache and Ray
    cfg = load_train(args.config, args.overrides)
    summary = run(cfg, args.data, args.tracking_uri, args.num_cpus)
    print(table(summary))
    print(f"run {summary['run_name']} ({summary['run_id']}): registered {summary['model_name']} "
          f"v{summary['version']} @candidate; model at {summary['model']}")
    print(f"promote: sift promote {summary['run_id']}    compare: sift runs    "
          f"UI: mlflow ui --backend-store-uri {tracking_uri_hint()}")
    return 0


def tracking_uri_hint() -> str:
    from .tracking import tracking_uri

    return tracking_uri()


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "train"))
