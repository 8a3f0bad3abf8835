"""The training stage's config: a frozen dataclass, each default written once, on its field."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

from flows.core.config import ConfigError, explicit, flat, knob, load, replace
from flows.core.runtime import state_dir

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Model: CLIP vision tower (HF id or local dir; `tiny` / `random-vit-b32` build a random one) plus
    # YOLO face features (default weights: the detector shipped in the nudenet package).
    backbone: str = "openai/clip-vit-base-patch32"
    faces: bool = True
    face_weights: str = "nudenet"
    face_classes: tuple[str, ...] = ("FACE_FEMALE", "FACE_MALE")
    face_extra_classes: tuple[str, ...] = ()
    face_conf: float = knob(0.25, lo=0.0, hi=1.0)
    # Input: image_size is a torchvision CNN's input side (0: 224); an HF checkpoint brings its own.
    # image_fit: crop (shortest edge + centre crop, CLIP's own) or pad (the whole image on a square).
    image_size: int = knob(0, lo=0, hi=1024, help="model input side of a torchvision CNN (0: 224; HF checkpoints: their own)")
    image_fit: str = knob("crop", choices=("crop", "pad"), help="square the image by a centre crop, or pad it "
                          "whole (a 16:9 thumbnail keeps its sides)")
    colour_stats: bool = knob(True, help="global colour and edge statistics beside the embedding (train/colour.py)")
    hidden: int = knob(1024, lo=8, hi=16384)
    dropout: float = knob(0.1, lo=0.0, hi=0.9)
    score_head: bool = False
    # Zero-shot seeding (needs a CLIP checkpoint with a text tower, e.g. the default HF id): the head
    # starts as CLIP's zero-shot classifier over these prompts and learns a correction; classes without a
    # prompt get "a photo of <class>". E.g. {BAD: "a clickbait thumbnail", GOOD: "a calm photo"}.
    zero_shot_prompts: dict[str, str] = dataclasses.field(default_factory=dict)  # class -> prompt (seeds the head)
    # Multi-label tags (manifest lines with "tags": [...]): a sigmoid head beside the classes, trained
    # with binary cross-entropy on the annotated items, one F1-optimal threshold per tag on val.
    tag_head: bool = knob(True, help="train a multi-label tag head when the data has tags")
    tag_weight: float = knob(1.0, lo=0.0, hi=100.0, help="weight of the tag loss")
    # Schedule: frozen backbone (head on the embedding cache) for frozen_steps, then the last
    # `unfreeze_last` transformer blocks train at backbone_lr. frozen_steps=-1 keeps it frozen.
    epochs: int = knob(10, lo=1, hi=10_000)
    steps_per_epoch: int = knob(0, lo=0, help="0: one pass over the labeled pool")
    labeled_batch: int = knob(32, lo=1, hi=65536)
    unlabeled_batch: int = knob(64, lo=0, hi=65536)
    lr: float = knob(1e-3, lo=1e-7, hi=1.0)
    backbone_lr: float = knob(1e-5, lo=0.0, hi=1.0)
    weight_decay: float = knob(1e-4, lo=0.0, hi=1.0)
    frozen_steps: int = knob(-1, lo=-1, help="steps with a frozen backbone; -1: the whole run")
    # Each phase (frozen, then unfrozen) warms the rate up linearly over warmup_steps, then decays it
    # by a cosine to the phase's end (lr_schedule: constant keeps it flat); the schedule restarts when the
    # backbone unfreezes. ReduceLROnPlateau (plateau_*) multiplies it on top.
    warmup_steps: int = knob(10, lo=0, help="linear learning-rate warm-up at the start of each phase")
    lr_schedule: str = knob("cosine", choices=("cosine", "constant"), help="decay over each phase after warm-up")
    unfreeze_last: int = knob(2, lo=0, hi=1000, help="transformer blocks unfrozen after warm-up")
    cache_views: int = knob(2, lo=1, hi=16, help="augmented views per image in the embedding cache")
    feature_noise: float = knob(0.1, lo=0.0, hi=5.0)
    # Augmentations keep the cues: crops keep >= aug_min_area of the square (a face at the edge
    # survives), brightness/contrast jitter aug_jitter, a milder saturation jitter (it can be the signal).
    aug_min_area: float = knob(0.8, lo=0.05, hi=1.0, help="random crops keep at least this share of the square")
    aug_jitter: float = knob(0.2, lo=0.0, hi=1.0, help="brightness/contrast jitter strength")
    aug_saturation: float = knob(0.1, lo=0.0, hi=1.0, help="saturation jitter (mild: saturation can be the signal)")
    aug_hue: float = knob(0.0, lo=0.0, hi=0.5, help="hue shift, a fraction of a turn (0.5: any palette; "
                          "keep 0 where hue is the signal)")
    aug_invert: float = knob(0.0, lo=0.0, hi=1.0, help="chance of a negative image (light and dark pages swap; "
                             "chroma kept, hue turned: pair with aug_hue)")
    # Rare classes: clean items weighted (N / (C n_c))^balance (1: every class counts alike; 0: as drawn).
    balance: float = knob(1.0, lo=0.0, hi=1.0, help="class weights (N / C n_c)^balance on clean items; 0: none")
    # Noisy pools (preprocess noisy_pools): trained towards their prior (refined by the teacher when
    # mean_teacher is on), taken at their word (label), or left out (ignore).
    noisy_pool: str = knob("prior", choices=("prior", "label", "ignore"),
                           help="noisy pools: towards their prior, at their word, or left out")
    # mean teacher (Tarvainen & Valpola 2017)
    # Mean teacher: EMA teacher over weights and buffers, confidence-weighted consistency.
    mean_teacher: bool = True
    ema_decay: float = knob(0.99, lo=0.0, hi=1.0)
    consistency: str = knob("mse", choices=("mse", "kl"))
    consistency_weight: float = knob(10.0, lo=0.0, hi=1e4)
    consistency_rampup: int = knob(200, lo=0, help="steps of the sigmoid ramp-up")
    confidence_threshold: float = knob(0.0, lo=0.0, hi=1.0)
    noisy_sharpen: float = knob(1.0, lo=0.0, hi=10.0, help="teacher weight in noisy-pool targets")
    # loss: asymmetric focal loss (Ridnik et al. 2021) + cost matrix
    # Asymmetric focal loss + a cost matrix that makes the worst mistake (a true `negative` item
    # predicted `positive`) cost `cost_worst` times a plain mistake.
    gamma_pos: float = knob(0.0, lo=0.0, hi=10.0)
    gamma_neg: float = knob(4.0, lo=0.0, hi=10.0)
    class_gamma: dict[str, float] = dataclasses.field(default_factory=dict)  # per-class gamma_pos, e.g. {BAD: 1.0}
    label_smoothing: float = knob(0.05, lo=0.0, hi=0.5)
    cost_worst: float = knob(5.0, lo=1.0, hi=1000.0, help="cost of the worst mistake (negative predicted positive)")
    cost_weight: float = knob(0.5, lo=0.0, hi=100.0)
    # the worst mistake, optional: a true `negative` item predicted `positive`; the defaults belong to
    # the default label set and step aside when BAD or GOOD is absent; empty: no worst mistake
    # The worst mistake is optional. These defaults belong to the BAD/NEUTRAL/GOOD label set and step
    # aside when BAD or GOOD is not a class of the data; set them for yours (positive=NSFW; a binary
    # task's negative is the other class) or leave them unset: selection is then macro-F1 and the
    # thresholds maximise validation macro-F1. A positive/negative you write must be a class of the data.
    positive: str = knob("BAD", help="class whose false alarms on `negative` cost most (empty: none)")
    negative: str = knob("GOOD", help="class that must not be predicted `positive` (binary: the other class)")
    # The decision rule (train/decision.py): every class has its own threshold, chosen on clean
    # validation labels; the negative is never predicted over a more probable positive, and an item no
    # class claims goes to `fallback` and is reported uncertain (empty: the best remaining class).
    # Like positive/negative, the default steps aside when NEUTRAL is not a class of the data.
    # Serving can move the operating point without retraining: threshold_BAD=0.6, max_rate=0.01.
    fallback: str = knob("NEUTRAL", help="class of items no class claims (reported uncertain); empty: none")
    # evaluation + selection
    # Evaluation, calibration and model selection.
    # auto: <positive>_recall@<negative>2<positive><=threshold_rate with a worst mistake, else macro_f1;
    # or e.g. precision:GOOD, macro_f1, accuracy, bad_recall@good2bad<=0.02
    selection: str = knob("auto", help="auto: the worst-mistake operating point when set, else macro_f1")
    threshold_rate: float = knob(0.05, lo=0.0, hi=1.0, help="max negative->positive rate of the thresholds")
    # Off by default: on the demo's 24 clean val items the cross-fitted thresholds did not carry over
    # to the final model (a fresh run served BAD 0.38 with them, 0.90 without). Worth trying with 5
    # when the final model's temperature rests on enough val items to be trusted.
    calibration_folds: int = knob(0, lo=0, hi=20, help="K >= 2: when clean validation items are few (< 30 a class), "
                                  "the operating point also rests on K-fold cross-fitted clean training items")
    early_stop: int = knob(5, lo=0, help="epochs without improvement before stopping; 0 = never")
    plateau_patience: int = knob(2, lo=0)
    plateau_factor: float = knob(0.5, lo=0.01, hi=1.0)
    eval_truth: str = knob("", help="optional JSONL {path, true} overriding labels for evaluation")
    # review loop: human corrections from the label store, predictions for the review queues
    # Review loop (sift review): corrections from the label store are applied to the labels this run
    # trains and evaluates on (a corrected item becomes a clean labeled item); MLflow logs how many
    # (corrections_used, corrections_<CLASS>) and corrections.json. predictions.parquet (student and
    # teacher probabilities and the per-item loss of every item) is what the review queues rank.
    # empty: $SIFT_HOME/labels.db when it exists
    labels_db: str = knob("", help="label store of `sift review` (default: $SIFT_HOME/labels.db when it exists)")
    use_corrections: bool = True
    predictions: bool = True
    # inference runtimes (train/runtime): the artifact also carries the model as ONNX fp32 and INT8,
    # with their label agreement with torch measured on up to export_items validation items
    export_onnx: bool = knob(True, help="write onnx/model.onnx and its INT8 twin into the artifact "
                             "(runtime=auto serves INT8 on a CPU when its agreement passes)")
    export_items: int = knob(256, lo=0, hi=1_000_000, help="validation items the export's agreement is measured on")
    # Ray
    # Ray Train
    num_workers: int = knob(1, lo=1, hi=4096)
    cpus_per_worker: float = knob(1.0, lo=0.1, hi=256)
    use_gpu: str = knob("auto", choices=("auto", "true", "false"),
                        help="auto: GPUs when the cluster has them; YAML true/false, yes/no, 1/0 are taken too")
    cache_actors: int = knob(1, lo=1, hi=1024)
    # Starting the actor pool (a process that imports torch, loads the backbone and the detector) costs
    # ~15-25 s on a small machine, more than embedding a few hundred images takes: below this size the
    # same Embedder runs in the driver instead
    cache_local_max: int = knob(256, lo=0, hi=1_000_000,
                                help="data of at most this many items is embedded in this process, without "
                                     "an actor pool (0: always the pool)")
    # the embedding cache's engine: torch (exact), or the frozen backbone exported to ONNX Runtime
    # (fp32, INT8; auto takes INT8 when its embeddings' cosine to torch is >= 0.999 on a sample)
    cache_runtime: str = knob("torch", choices=("auto", "torch", "onnx", "onnx-int8"),
                              help="engine of the embedding cache's actors (train/runtime); torch is exact")
    max_failures: int = knob(2, lo=0)
    # MLflow
    experiment: str = "sift"
    model_name: str = "sift-classifier"
    run_name: str = ""
    seed: int = knob(0, lo=0)

    def validate(self) -> None:
        if not self.backbone:
            raise ValueError("backbone must be set (an HF id, a local dir, 'tiny' or 'random-vit-b32')")
        if self.faces and not self.face_classes:
            raise ValueError("faces=true needs at least one face class")


def for_classes(cfg: TrainConfig, classes: list[str]) -> TrainConfig:
    """``cfg`` checked against the data's label set and resolved: class names spelled as in the data,
    the worst mistake either a pair of present classes or none, ``selection`` a concrete criterion.

    A default that names an absent class steps aside (positive/negative become empty, the default
    selection becomes ``auto``); the same setting written by the user is refused with a ConfigError
    that names the key, the value and the classes present. Runs before Ray starts.
    """
    from .selection import operating_point_criterion, parse_criterion

    user, present = explicit(cfg), list(classes)
    canon = {c.lower(): c for c in present}

    def refuse(key: str, value, why: str = "names a class that is not in the data") -> None:
        raise ConfigError(f"{key}={value!r} {why}; classes present: {present}")

    pair = {}
    for key in ("positive", "negative"):
        value = getattr(cfg, key).strip()
        if value and value.lower() not in canon and key in user:
            refuse(key, value)
        pair[key] = canon.get(value.lower(), "")
    pos, neg = pair["positive"], pair["negative"]
    if not {"positive", "negative"} & user and not (pos and neg):
        pos = neg = ""  # the default pair is one setting: it applies only when both classes are present
    if pos and not neg:
        if len(present) != 2:
            refuse("positive", pos, "needs negative= (the class whose items must not be predicted "
                   f"{pos}) when there are more than two classes")
        neg = next(c for c in present if c != pos)
    if neg and not pos:
        if "negative" in user:
            refuse("negative", neg, "needs positive= (the class it must not be predicted as)")
        neg = ""
    if pos and pos == neg:
        refuse("negative", neg, "must differ from positive")
    if not pos:
        for key in ("cost_worst", "threshold_rate"):
            if key in user:
                refuse(key, getattr(cfg, key), "applies to the worst mistake, and positive/negative are not set")
    fallback = cfg.fallback.strip()
    if fallback and fallback.lower() not in canon:
        if "fallback" in user:
            refuse("fallback", fallback)
        fallback = ""  # the default's NEUTRAL steps aside for a label set without it
    fallback = canon.get(fallback.lower(), "")
    if fallback and fallback in (pos, neg):
        if "fallback" in user:
            refuse("fallback", fallback, "must differ from positive and negative (it takes what neither claims)")
        fallback = ""
    stray = [c for c in cfg.class_gamma if c.lower() not in canon]
    if stray:
        refuse("class_gamma", dict(cfg.class_gamma), f"names {stray}, not in the data")
    gamma = {canon[c.lower()]: g for c, g in cfg.class_gamma.items()}
    stray = [c for c in cfg.zero_shot_prompts if c.lower() not in canon]
    if stray:
        refuse("zero_shot_prompts", dict(cfg.zero_shot_prompts), f"names {stray}, not in the data")
    prompts = {canon[c.lower()]: p for c, p in cfg.zero_shot_prompts.items()}
    auto = operating_point_criterion(pos, neg, cfg.threshold_rate) if pos else "macro_f1"
    selection = cfg.selection.strip()
    if selection.lower() != "auto":
        try:
            _, named = parse_criterion(selection)
        except ValueError as exc:
            raise ConfigError(f"selection: {exc}") from None
        if [c for c in named if c.lower() not in canon]:
            if "selection" in user:
                refuse("selection", selection)
            selection = "auto"
    return replace(cfg, positive=pos, negative=neg, fallback=fallback, class_gamma=gamma, zero_shot_prompts=prompts,
                   selection=auto if selection.lower() == "auto" else selection)


def load_train(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> TrainConfig:
    return load(TrainConfig, path, overrides)


__all__ = ["TrainConfig", "load_train", "for_classes", "flat", "state_dir"]
