"""The Ray Train worker loop: phases, evaluation, checkpoints, and (rank 0) the MLflow run.

Frozen phase: the head trains from the embedding cache. Then the last K blocks unfreeze and the
model trains from pixels at a lower backbone learning rate. Every epoch: evaluate student and
teacher on val, step the plateau scheduler, checkpoint (a lost worker resumes from it), stop early
when the selection metric stops improving. At the end rank 0 restores the best weights, fits the
temperature and per-class thresholds on val, evaluates on test, writes plots and the artifact, and
logs and registers the model.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import tempfile
import time
from pathlib import Path

import ray.train
import torch

from . import calibrate, metrics
from .colour import ColourStats
from .context import RunContext
from .data import CacheView, PixelView, cycle, shard_batches
from .loop import mix, predict_logits, train_step
from .model import Classifier, load_backbone, set_trainable
from .schedule import end_of_epoch, lr_factor, phase_lengths, TrainState, set_lr
from .progress import say
from .selection import report_rates, selection_score
from .teacher import make_teacher

def _optimizer(model: Classifier, cfg, backbone_params):
    """AdamW over the head (``lr``) and the unfrozen blocks (``backbone_lr``); each group keeps its
    base rate as ``base_lr`` (checkpointed with the optimizer), which the schedule scales."""
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.backbone_lr, "base_lr": cfg.backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def _evaluate(model, shard, mode, view, ctx, cfg, prefix):
    logits, y, pool = predict_logits(model, shard_batches(shard, 256, mode, ctx, ctx.relabel, shuffle=False), view)
    labeled = (y >= 0) & (pool == 0)  # selection rests on clean labels only
    logits, y = logits[labeled], y[labeled]
    if len(y) == 0:
        return {}, logits, y
    probs = calibrate.apply_temperature(logits, 1.0)
    m = metrics.evaluate(probs, y, ctx.classes, positive=cfg.positive, negative=cfg.negative,
                         rates=report_rates(cfg))
    m.pop("confusion", None)
    m["selection"] = selection_score(m, cfg.selection)
    return {f"{prefix}_{k}": float(v) for k, v in m.items()}, logits, y


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry: ``config["ctx"]`` is the run's :class:`~train.context.RunContext`."""
    ctx: RunContext = config["ctx"]
    cfg = ctx.cfg
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    backbone, _ = load_backbone(ctx.backbone_dir)
    zs = ctx.zero_shot
    p = ctx.preproc
    model = Classifier(backbone, len(ctx.classes), ctx.n_face, cfg.hidden, cfg.dropout, cfg.score_head,
                       len(ctx.tags), zs["embeddings"] if zs else None, zs["scale"] if zs else 1.0,
                       stats=ColourStats(p.mean, p.std) if cfg.colour_stats else None)
    set_trainable(model, 0)
    teacher = make_teacher(model) if cfg.mean_teacher else None
    opt = _optimizer(model, cfg, [])
    state = TrainState()
    ckpt = ray.train.get_checkpoint()
    if ckpt:  # resume after a lost worker: same phase, weights, optimizer, counters
        with ckpt.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        state = TrainState.from_dict(saved["state"])
        if state.phase == "unfrozen":
            opt = _optimizer(model, cfg, set_trainable(model, cfg.unfreeze_last))
        model.load_state_dict(saved["model"])
        if teacher is not None:
            teacher.load_state_dict(saved["teacher"])
        opt.load_state_dict(saved["opt"])
        say(f"[train] rank {rank} resumed at epoch {state.epoch} step {state.step}")
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True}) \
        if world > 1 else model
    lab_shard = ray.train.get_dataset_shard("labeled")
    unl_shard = ray.train.get_dataset_shard("unlabeled") if ctx.n_unlabeled and cfg.unlabeled_batch else None
    steps = cfg.steps_per_epoch or max(1, math.ceil(ctx.n_labeled / (cfg.labeled_batch * world)))
    lengths = dict(zip(("frozen", "unfrozen"), phase_lengths(cfg.epochs, steps, cfg.frozen_steps)))
    mlflow, run = _start_run(ctx) if rank == 0 else (None, None)
    cache_view, pixel_view = CacheView(cfg.feature_noise), PixelView(ctx.preproc, ctx.augment)
    for epoch in range(state.epoch, cfg.epochs):
        t0 = time.time()
        mode = "cache" if state.phase == "frozen" else "pixels"
        # shuffles seeded by (seed, rank, epoch, pass): the same seed replays the same batches
        passes = itertools.count()
        base = (cfg.seed * 1000 + rank) * 10_000 + epoch * 100
        lab_it = cycle(lambda: shard_batches(lab_shard, cfg.labeled_batch, mode, ctx, seed=base + next(passes)))
        unl_it = cycle(lambda: shard_batches(unl_shard, cfg.unlabeled_batch, mode, ctx, seed=base + 50 + next(passes))) \
            if unl_shard else None
        view = cache_view if mode == "cache" else pixel_view
        sums: dict[str, float] = {}
        for _ in range(steps):
            factor = lr_factor(state.phase_step, lengths[state.phase], cfg.warmup_steps, cfg.lr_schedule)
            rates = set_lr(opt, [grp["base_lr"] for grp in opt.param_groups], factor * state.lr_scale)
            batch = mix(next(lab_it), next(unl_it, None) if unl_it else None)
            stats = {**train_step(ddp, teacher, opt, batch, view, ctx.spec, state.step, g), "lr": rates[0]}
            if len(rates) > 1:
                stats["lr_backbone"] = rates[1]
            state.step += 1
            state.phase_step += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            if mlflow and state.step % 10 == 0:
                mlflow.log_metrics({f"train_{k}": v for k, v in stats.items()}, step=state.step)
            if mode == "cache" and 0 <= cfg.frozen_steps <= state.step:
                break  # warm-up over: the rest of training is end to end
        # -- evaluate both networks on val; the better one is the candidate ------------------
        val_shard = ray.train.get_dataset_shard("val")
        res = {"student": _evaluate(model, val_shard, mode, view, ctx, cfg, "val")[0]}
        if teacher is not None:
            res["teacher"] = _evaluate(teacher, val_shard, mode, view, ctx, cfg, "val")[0]
        who = max(res, key=lambda k: res[k].get("val_selection", -math.inf))
        score = res[who].get("val_selection", -math.inf)
        decided = end_of_epoch(state, score, patience=cfg.plateau_patience, factor=cfg.plateau_factor,
                               early_stop=cfg.early_stop)
        if decided["improved"]:
            net = teacher if who == "teacher" else model
            state.best_state = {"who": who, "phase": state.phase, "weights": copy.deepcopy(net.state_dict())}
        if decided["reduced"]:
            say(f"[train] no better {cfg.selection} for {cfg.plateau_patience + 1} epochs: learning rate x "
                f"{cfg.plateau_factor} (now x{state.lr_scale:.3g})")
        if state.phase == "frozen" and 0 <= cfg.frozen_steps <= state.step:
            # end to end from here: a new optimizer, and the schedule and plateau multiplier restart
            state.phase, state.phase_step, state.lr_scale, state.plateau_bad = "unfrozen", 0, 1.0, 0
            opt = _optimizer(model, cfg, set_trainable(model, cfg.unfreeze_last))
        state.epoch = epoch + 1
        report = {"epoch": epoch + 1, "step": state.step, "val_selection": score, "best": state.best,
                  "lr_scale": state.lr_scale,
                  "epoch_s": time.time() - t0, **{f"train_{k}": v / max(1, steps) for k, v in sums.items()},
                  **res[who], **{f"student_{k}": v for k, v in res["student"].items()}}
        for k in ("val_selection", "train_loss"):
            state.history.setdefault(k, []).append((state.step, report.get(k, float("nan"))))
        if mlflow:
            mlflow.log_metrics({k: float(v) for k, v in report.items() if _finite(v)}, step=state.step)
            say(f"[train] epoch {epoch + 1}/{cfg.epochs} step {state.step} loss {report.get('train_loss', 0):.4f} "
                f"val {cfg.selection}={score:.4f} ({who}) {report['epoch_s']:.1f}s")
        # Ray Train prints what is reported: keep it to the headline numbers (MLflow has the rest)
        brief = {k: report[k] for k in ("epoch", "step", "val_selection", "best", "train_loss") if k in report}
        _report(brief, model, teacher, opt, state, rank)
        _maybe_fail(ctx, epoch + 1)
        if decided["stop"]:
            say(f"[train] early stop after {epoch + 1} epochs")
            break
    if rank == 0:
        from .finalize import finalize

        finalize(ctx, model, state, mlflow, run, teacher)


def _maybe_fail(ctx: RunContext, epoch: int) -> None:
    """Fault injection for the resume test: ``SIFT_FAIL_AFTER_EPOCH=N`` kills this worker once,
    right after the checkpoint of epoch N (a marker file makes the restarted worker carry on)."""
    n = os.environ.get("SIFT_FAIL_AFTER_EPOCH")
    marker = Path(ctx.out_dir) / "injected_failure"
    if n and int(n) == epoch and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(epoch))
        raise RuntimeError(f"injected failure after epoch {epoch} (SIFT_FAIL_AFTER_EPOCH)")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _report(report, model, teacher, opt, state, rank):
    """Every rank reports; rank 0 attaches the checkpoint (weights, optimizer, counters)."""
    if rank != 0:
        ray.train.report(report)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": model.state_dict(), "teacher": teacher.state_dict() if teacher else None,
                    "opt": opt.state_dict(), "state": state.to_dict()}, Path(d) / "state.pt")
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))


def _start_run(ctx: RunContext):
    from flows.core.config import flat

    from . import tracking

    mlflow = tracking.use(ctx.tracking_uri)
    exp_id = tracking.experiment(mlflow, ctx.cfg.experiment)
    runs = mlflow.search_runs([exp_id], filter_string=f"tags.mlflow.runName = '{ctx.run_name}'")
    run = mlflow.start_run(run_id=runs.iloc[0]["run_id"]) if len(runs) else \
        mlflow.start_run(experiment_id=exp_id, run_name=ctx.run_name)
    if not len(runs):
        mlflow.log_params(flat(ctx.cfg))
        mlflow.log_params({"data": ctx.data_dir, "n_labeled": ctx.n_labeled,
                           "n_unlabeled": ctx.n_unlabeled, "n_val": ctx.n_val,
                           "classes_list": ",".join(ctx.classes)})
        mlflow.set_tags({"sift.stage": "train", "sift.backbone_dir": ctx.backbone_dir, **ctx.mlflow_tags})
        _log_corrections(mlflow, ctx.corrections)
        tracking.log_training_data(mlflow, ctx.data_dir)  # the run's dataset input: what it trained on
    return mlflow, run


def _log_corrections(mlflow, used: dict | None) -> None:
    """How many human corrections (sift review) this run trained on, by class, and which."""
    from .corrections import metrics

    if used is None:  # no label store, or use_corrections=false
        mlflow.log_metric("corrections_used", 0.0)
        return
    mlflow.log_param("labels_db", used["labels_db"])
    mlflow.log_metrics(metrics(used))
    mlflow.log_dict(used, "corrections.json")
