"""What the driver hands every Ray Train worker: one typed, frozen record of the run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: the worker imports what it uses itself
    from .config import TrainConfig
    from .loop import LossSpec
    from .transforms import Preproc


@dataclass(frozen=True)
class RunContext:
    """Built once by ``train.main.run`` before Ray Train starts; pickled to each worker."""

    cfg: TrainConfig              # the label-set-checked training config
    classes: list[str]            # the data's classes, in index order
    backbone_dir: str             # the resolved backbone (train.backbones.resolve)
    preproc: Preproc              # the backbone's preprocessing, with the run's image_fit
    n_face: int                   # face features per item (0 without the detector)
    faces: dict | None            # the face detector's spec (weights, classes, conf) or None
    spec: LossSpec                # the loss: class weights, noisy-pool priors, consistency, ...
    augment: dict                 # train.augment.augment keywords for pixel views
    score_range: tuple[float, float]  # the score targets' (min, max) on train
    tags: list[str]               # the multi-label tags the tag head learns (empty: none)
    tracking_uri: str             # MLflow
    run_name: str
    out_dir: str                  # $SIFT_HOME/runs/<run_name>: artifact, plots, summary.json
    data_dir: str                 # the preprocess output trained on
    short_edge: int               # the stored images' short edge (the artifact's decode size)
    columns: list[str]            # the embedding cache's columns
    n_labeled: int                # labeled / unlabeled train items, labeled val items
    n_unlabeled: int
    n_val: int
    relabel: dict | None = None   # path -> class index from eval_truth (benchmarks), or None
    corrections: dict | None = None   # the human corrections applied (train/corrections.py), or None
    zero_shot: dict | None = None     # {prompts, embeddings, scale}: the head's zero-shot seed, or None
    mlflow_tags: dict[str, Any] = field(default_factory=dict)
