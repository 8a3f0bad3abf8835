"""End of training (rank 0): best weights -> calibration -> test -> plots -> artifact -> registry."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray.train
import torch

from . import artifact, calibrate, crossfit, metrics, noisy, plots, predictions, tracking
from .data import PixelView, shard_batches
from .loop import predict_outputs
from .progress import say
from .selection import report_rates
from .transforms import center_crop, normalize

if TYPE_CHECKING:
    from .context import RunContext
    from .schedule import TrainState


def _outputs(model, name, ctx) -> tuple[np.ndarray, np.ndarray, dict, tuple | None, np.ndarray]:
    """(logits, labels) of the labeled items of split ``name``, its score metrics (empty without
    a score head; the predicted score mapped back to the targets' units), (tag probabilities, tag
    targets) of its items annotated with tags (None without tags), and the labeled items' pool codes."""
    shard = ray.train.get_dataset_shard(name)
    out = predict_outputs(model, shard_batches(shard, 256, "pixels", ctx, ctx.relabel, shuffle=False),
                          PixelView(ctx.preproc))
    keep = out["label"] >= 0
    scores = {}
    if ctx.cfg.score_head:
        lo, hi = ctx.score_range
        scores = metrics.score_metrics(lo + out["score"] * (hi - lo), out["score_target"])
    tagged = out["tagged"].astype(bool) if len(out["tagged"]) else np.zeros(0, bool)
    tags = (1.0 / (1.0 + np.exp(-out["tag_logits"][tagged])), out["tags"][tagged]) if ctx.tags else None
    return out["logits"][keep], out["label"][keep].astype(np.int64), scores, tags, out["pool"][keep]


def _example_jpeg(ctx) -> bytes:
    for nb in ray.train.get_dataset_shard("val").iter_batches(batch_size=1, batch_format="numpy"):
        return bytes(nb["image"][0])
    raise RuntimeError("the val split is empty: nothing to calibrate on")


def _val_items(limit: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Up to ``limit`` validation items: (encoded images, label indices (-1: none), clean (bool))."""
    images, labels, clean = [], [], []
    for nb in ray.train.get_dataset_shard("val").iter_batches(batch_size=256, batch_format="numpy"):
        take = max(0, limit - len(images))
        images += [bytes(b) for b in nb["image"][:take]]
        labels += [int(v) for v in nb["label"][:take]]
        clean += [str(v) == "clean" for v in nb["pool"][:take]]
        if len(images) >= limit:
            break
    return images, np.asarray(labels, np.int64), np.asarray(clean, bool)


def pool_mixes(probs, y, pool, classes: list[str], priors: dict) -> dict[str, dict]:
    """{noisy pool class: ``noisy.estimate``} from held-out calibrated ``probs`` (N, C), labels ``y``
    and pool codes (0 clean, 1 noisy); pools without a held-out item are left out."""
    clean = pool == 0
    out = {}
    for k, prior in priors.items():
        members = (pool == 1) & (y == k)
        if members.any():
            out[classes[k]] = noisy.estimate(probs[members], probs[clean], y[clean], classes,
                                             [float(v) for v in prior])
    return out


def decision_record(cfg, decision, classes: list[str], counts: dict, cv_counts: dict | None = None) -> dict:
    """How the operating point was chosen, recorded in the artifact beside the thresholds: the rule,
    its roles, the positive's calibration curve (to move it at serve time), the clean validation
    items it rests on and the cross-fitted training items beside them (None: none)."""
    rec = {"rule": "worst_mistake" if cfg.positive else "macro_f1",
           "fallback": classes[decision.fallback] if decision.fallback is not None else None,
           "calibration_items": counts,
           "crossfit": {"folds": cfg.calibration_folds, "items": cv_counts} if cv_counts else None}
    if cfg.positive:
        rec.update(positive=cfg.positive, negative=cfg.negative, max_rate=cfg.threshold_rate,
                   curve={k: list(v) for k, v in decision.curve.items()} if decision.curve else None)
    return rec


# fewer clean validation items than this per class, and calibration says it rests on too little
MIN_CALIBRATION_ITEMS = 30


def calibration_counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    """{class: clean validation items}, plus "total"."""
    return {**{c: int((y == i).sum()) for i, c in enumerate(classes)}, "total": int(len(y))}


CROSSFIT_STEPS = 300  # optimizer steps per fold head: a head on fixed features converges in far fewer


def crossfit_probs(model, ctx: RunContext) -> tuple[np.ndarray, np.ndarray] | None:
    """Cross-fitted calibrated probabilities (N, C) and labels (N,) of the clean labeled training
    items (``train.crossfit``: fold heads on the final model's features, their own temperature), or
    None when several workers share the labeled pool (rank 0 alone cannot read it) or the items are
    fewer than two per fold."""
    cfg, k = ctx.cfg, ctx.cfg.calibration_folds
    if ray.train.get_context().get_world_size() > 1:
        say("[train] cross-fitted calibration skipped: the labeled pool is split over several workers")
        return None
    p, xs, ys = ctx.preproc, [], []
    model.eval()
    with torch.no_grad():
        for b in shard_batches(ray.train.get_dataset_shard("labeled"), 256, "pixels", ctx, ctx.relabel, shuffle=False):
            keep = (b["label"] >= 0) & (b["pool"] == 0)
            if keep.any():
                z = model.embed(normalize(center_crop(b["x"][keep], p.crop), p))
                xs.append(model.head_input(z, b["face"][keep]).numpy())
                ys.append(b["label"][keep].numpy())
    if sum(len(y) for y in ys) < 2 * k:
        return None
    x, y = np.concatenate(xs), np.concatenate(ys)
    weight = ctx.spec.class_weight
    logits = crossfit.oof_logits(x, y, len(ctx.classes), k=k, hidden=cfg.hidden, dropout=cfg.dropout,
                                 steps=CROSSFIT_STEPS, batch=cfg.labeled_batch, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, seed=cfg.seed,
                                 class_weight=weight.numpy() if weight is not None else None)
    return calibrate.apply_temperature(logits, calibrate.fit_temperature(logits, y)), y


def binary_point(classes: list[str], thresholds: list[float], positive: str) -> dict[int, float] | None:
    """A binary task's one threshold as {class index: t} (P(class) >= t), for the PR plot."""
    if len(classes) != 2:
        return None
    i = classes.index(positive) if positive else 0
    return {i: float(thresholds[i])}


def finalize(ctx: RunContext, model, state: TrainState, mlflow, run, teacher=None) -> dict:
    cfg, classes = ctx.cfg, ctx.classes
    # the last student/teacher pair scores every item for the review queues (before the best
    # weights replace the student's)
    preds = predictions.compute(ray.train.get_dataset_shard("predict"), model, teacher, state.phase, ctx) \
        if cfg.predictions else None
    best = state.best_state
    if best:
        model.load_state_dict(best["weights"])
    val_logits, val_y, val_scores, val_tags, val_pool = _outputs(model, "val", ctx)
    tag_t = calibrate.tag_thresholds(*val_tags) if val_tags is not None else []
    # temperature and thresholds rest on clean labels only: a noisy-pool item's label is a guess
    clean = val_pool == 0
    counts = calibration_counts(val_y[clean], classes)
    thin = [c for c in classes if counts[c] < MIN_CALIBRATION_ITEMS]
    temperature = calibrate.fit_temperature(val_logits[clean], val_y[clean]) if clean.any() else 1.0
    val_p = calibrate.apply_temperature(val_logits, temperature)
    cal_p, cal_y = val_p[clean], val_y[clean]
    # thin validation: the operating point also rests on cross-fitted clean training items
    cv = crossfit_probs(model, ctx) if thin and cfg.calibration_folds >= 2 else None
    cv_counts = None
    if cv is not None:
        cv_counts = calibration_counts(cv[1], classes)
        cal_p, cal_y = np.concatenate([cal_p, cv[0]]), np.r_[cal_y, cv[1]]
    if thin:
        also = (f"; the operating point also rests on {cv_counts['total']} cross-fitted clean training items "
                f"({cfg.calibration_folds} folds: {cv_counts})") if cv is not None else ""
        say(f"[train] calibration rests on few clean validation items: {counts} (fewer than "
            f"{MIN_CALIBRATION_ITEMS} for {thin}){also}; the temperature and thresholds are rough: label more "
            "items or raise the preprocess val fraction")
    decision = calibrate.choose_decision(cal_p, cal_y, classes, positive=cfg.positive,
                                         negative=cfg.negative, max_rate=cfg.threshold_rate,
                                         fallback=cfg.fallback)
    thresholds = list(decision.thresholds)
    rests = calibration_counts(cal_y, classes)  # what the operating point was chosen on
    if cfg.positive and rests[cfg.negative] < calibrate.min_negatives(cfg.threshold_rate):
        say(f"[train] {rests[cfg.negative]} clean {cfg.negative} calibration items cannot measure "
            f"{cfg.negative}->{cfg.positive} <= {cfg.threshold_rate:g} (that needs "
            f"{calibrate.min_negatives(cfg.threshold_rate)}): {cfg.positive} keeps plain argmax; serve with "
            f"max_rate=... to read a threshold off the validation curve anyway")
    test_logits, test_y, test_scores, test_tags, test_pool = _outputs(model, "test", ctx)
    test_p = calibrate.apply_temperature(test_logits, temperature)
    tclean = test_pool == 0  # test metrics on clean labels too (the noisy pool enters only the mix estimate)
    out: dict[str, float] = {"temperature": temperature, "best_val_selection": state.best,
                             **{f"calibration_n_{metrics.metric_name(k)}": float(v) for k, v in counts.items()},
                             **{f"calibration_cv_n_{metrics.metric_name(k)}": float(v)
                                for k, v in (cv_counts or {}).items()},
                             **{f"test_{k}": v for k, v in test_scores.items()},
                             **{f"val_{k}": v for k, v in val_scores.items()}}
    mixes = pool_mixes(np.concatenate([val_p, test_p]), np.r_[val_y, test_y], np.r_[val_pool, test_pool],
                       classes, ctx.spec.priors)
    for pool, est in mixes.items():
        out.update({f"noisy_{metrics.metric_name(pool)}_est_{metrics.metric_name(c)}": v
                    for c, v in est["estimate"].items()})
        out[f"noisy_{metrics.metric_name(pool)}_distance"] = est["distance"]
        if est["suggestion"]:
            say(f"[train] noisy pool {pool}: held-out predictions ({est['n']} items) say {est['estimate']}, "
                f"the prior says {est['prior']}; consider noisy_pools=\"{{{pool}: {est['suggestion']}}}\"")
    if test_tags is not None and len(test_tags[0]):
        out.update({f"test_{k}": v for k, v in metrics.tag_metrics(*test_tags, tag_t, ctx.tags).items()})
    cm = None
    if tclean.any():
        m = metrics.evaluate(test_p[tclean], test_y[tclean], classes, positive=cfg.positive, negative=cfg.negative,
                             rates=report_rates(cfg), thresholds=decision)
        cm = np.asarray(m.pop("confusion"))
        out.update({f"test_{k}": float(v) for k, v in m.items()})
    mv = metrics.evaluate(val_p[clean], val_y[clean], classes, positive=cfg.positive, negative=cfg.negative,
                          rates=report_rates(cfg), thresholds=decision) if clean.any() else {}
    mv.pop("confusion", None)
    out.update({f"val_cal_{k}": float(v) for k, v in mv.items()})
    out_dir = Path(ctx.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if cm is not None:
            plots.confusion_plot(cm, classes, d / "confusion_test.png", title="test (calibrated, thresholds)")
            plots.pr_curves_plot(test_p[tclean], test_y[tclean], classes, d / "pr_curves_test.png",
                                 points=binary_point(classes, thresholds, cfg.positive))
            plots.reliability_plot(test_p[tclean], test_y[tclean], d / "reliability_test.png")
        plots.curves_plot({k: v for k, v in state.history.items()}, d / "curves.png", title=ctx.run_name)
        for png in d.glob("*.png"):
            (out_dir / png.name).write_bytes(png.read_bytes())
        if mlflow:
            mlflow.log_artifacts(str(d), "plots")
    if preds is not None:
        path = predictions.write(preds, out_dir / "predictions.parquet", run_id=run.info.run_id if run else "")
        if mlflow:
            mlflow.log_artifact(str(path))
    faces = ctx.faces
    art = artifact.save(
        out_dir / "model", model, backbone_id=cfg.backbone, preproc=ctx.preproc,
        short_edge=ctx.short_edge, classes=classes, thresholds=thresholds, temperature=temperature,
        faces=faces, run_id=run.info.run_id if run else "", metrics=out, hidden=cfg.hidden, dropout=cfg.dropout,
        decision=decision_record(cfg, decision, classes, counts, cv_counts), score_range=ctx.score_range if cfg.score_head else None,
        tags=ctx.tags, tag_thresholds=tag_t,
        zero_shot={"prompts": ctx.zero_shot["prompts"], "scale": ctx.zero_shot["scale"]}
        if ctx.zero_shot else None)
    if cfg.export_onnx:  # before logging: the graphs travel with the model to MLflow and the registry
        from .runtime.export import export_artifact, flat_metrics

        images, labels, clean = _val_items(cfg.export_items)
        record = export_artifact(art, images, labels, clean=clean, log=say)
        out.update(flat_metrics(record))
    version = ""
    if mlflow:
        mlflow.log_metrics({k: v for k, v in out.items() if np.isfinite(v)}, step=state.step)
        # one step past the last epoch: MLflow's latest value (what `sift promote` and `sift runs`
        # read) is then the best epoch's score, not the last epoch's
        mlflow.log_metric(tracking.SELECTION, state.best, step=state.step + 1)
        if mixes:  # each noisy pool's estimated mix beside the prior, with a suggestion when they differ
            mlflow.log_dict(mixes, "noisy_pools.json")
        version = tracking.log_and_register(mlflow, art, cfg.model_name, classes, _example_jpeg(ctx))
        mlflow.end_run()
    summary = {"noisy_pools": mixes, "run_id": run.info.run_id if run else "", "run_name": ctx.run_name,
               "model": str(art),
               "model_name": cfg.model_name, "version": version, "thresholds": thresholds,
               "decision": decision.describe(classes), "calibration_items": counts,
               "crossfit_items": cv_counts, "classes": classes, "metrics": out, "confusion_test": cm.tolist() if cm is not None else None}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
