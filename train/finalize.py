"""End of training (rank 0): best weights -> calibration -> test -> plots -> artifact -> registry."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import ray.train

from . import artifact, calibrate, metrics, plots, predictions, tracking
from .data import PixelView
from .loop import predict_outputs
from .worker import _iter


def _outputs(model, name, ctx) -> tuple[np.ndarray, np.ndarray, dict]:
    """(logits, labels) of the labeled items of split ``name``, and its score metrics (empty without
    a score head), the predicted score mapped back to the targets' units."""
    shard = ray.train.get_dataset_shard(name)
    out = predict_outputs(model, _iter(shard, 256, "pixels", ctx, ctx["relabel"], shuffle=False),
                          PixelView(ctx["preproc"]))
    keep = out["label"] >= 0
    scores = {}
    if ctx["cfg"].score_head:
        lo, hi = ctx["score_range"]
        scores = metrics.score_metrics(lo + out["score"] * (hi - lo), out["score_target"])
    return out["logits"][keep], out["label"][keep].astype(np.int64), scores


def _example_jpeg(ctx) -> bytes:
    for nb in ray.train.get_dataset_shard("val").iter_batches(batch_size=1, batch_format="numpy"):
        return bytes(nb["image"][0])
    raise RuntimeError("the val split is empty: nothing to calibrate on")


def decision_rule(cfg) -> dict:
    """How the thresholds were chosen, recorded in the artifact beside them."""
    if cfg.positive:
        return {"rule": "worst_mistake", "positive": cfg.positive, "negative": cfg.negative,
                "max_rate": cfg.threshold_rate}
    return {"rule": "macro_f1"}


def binary_point(classes: list[str], thresholds: list[float], positive: str) -> dict[int, float] | None:
    """A binary task's one threshold as {class index: t} (P(class) >= t), for the PR plot."""
    if len(classes) != 2:
        return None
    i = classes.index(positive) if positive else 0
    return {i: float(thresholds[i])}


def finalize(ctx: dict, model, state: dict, mlflow, run, teacher=None) -> dict:
    cfg, classes = ctx["cfg"], ctx["classes"]
    # the last student/teacher pair scores every item for the review queues (before the best
    # weights replace the student's)
    preds = predictions.compute(ray.train.get_dataset_shard("predict"), model, teacher, state["phase"], ctx) \
        if cfg.predictions else None
    best = state.get("best_state")
    if best:
        model.load_state_dict(best["weights"])
    val_logits, val_y, val_scores = _outputs(model, "val", ctx)
    temperature = calibrate.fit_temperature(val_logits, val_y) if len(val_y) else 1.0
    val_p = calibrate.apply_temperature(val_logits, temperature)
    thresholds = calibrate.choose_thresholds(val_p, val_y, classes, positive=cfg.positive,
                                             negative=cfg.negative, max_rate=cfg.threshold_rate) \
        if len(val_y) else [1.0 / len(classes)] * len(classes)
    test_logits, test_y, test_scores = _outputs(model, "test", ctx)
    test_p = calibrate.apply_temperature(test_logits, temperature)
    out: dict[str, float] = {"temperature": temperature, "best_val_selection": state["best"],
                             **{f"test_{k}": v for k, v in test_scores.items()},
                             **{f"val_{k}": v for k, v in val_scores.items()}}
    cm = None
    if len(test_y):
        m = metrics.evaluate(test_p, test_y, classes, positive=cfg.positive, negative=cfg.negative,
                             thresholds=thresholds)
        cm = np.asarray(m.pop("confusion"))
        out.update({f"test_{k}": float(v) for k, v in m.items()})
    mv = metrics.evaluate(val_p, val_y, classes, positive=cfg.positive, negative=cfg.negative,
                          thresholds=thresholds) if len(val_y) else {}
    mv.pop("confusion", None)
    out.update({f"val_cal_{k}": float(v) for k, v in mv.items()})
    out_dir = Path(ctx["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if cm is not None:
            plots.confusion_plot(cm, classes, d / "confusion_test.png", title="test (calibrated, thresholds)")
            plots.pr_curves_plot(test_p, test_y, classes, d / "pr_curves_test.png",
                                 points=binary_point(classes, thresholds, cfg.positive))
            plots.reliability_plot(test_p, test_y, d / "reliability_test.png")
        plots.curves_plot({k: v for k, v in state["history"].items()}, d / "curves.png", title=ctx["run_name"])
        for png in d.glob("*.png"):
            (out_dir / png.name).write_bytes(png.read_bytes())
        if mlflow:
            mlflow.log_artifacts(str(d), "plots")
    if preds is not None:
        path = predictions.write(preds, out_dir / "predictions.parquet", run_id=run.info.run_id if run else "")
        if mlflow:
            mlflow.log_artifact(str(path))
    faces = ctx.get("faces")
    art = artifact.save(
        out_dir / "model", model, backbone_id=cfg.backbone, preproc=ctx["preproc"],
        short_edge=ctx["short_edge"], classes=classes, thresholds=thresholds, temperature=temperature,
        faces=faces, run_id=run.info.run_id if run else "", metrics=out, hidden=cfg.hidden, dropout=cfg.dropout,
        decision=decision_rule(cfg), score_range=ctx["score_range"] if cfg.score_head else None)
    version = ""
    if mlflow:
        mlflow.log_metrics({k: v for k, v in out.items() if np.isfinite(v)}, step=state["step"])
        mlflow.log_metric(tracking.SELECTION, state["best"])
        version = tracking.log_and_register(mlflow, art, cfg.model_name, classes, _example_jpeg(ctx))
        mlflow.end_run()
    summary = {"run_id": run.info.run_id if run else "", "run_name": ctx["run_name"], "model": str(art),
               "model_name": cfg.model_name, "version": version, "thresholds": thresholds,
               "classes": classes, "metrics": out, "confusion_test": cm.tolist() if cm is not None else None}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary
