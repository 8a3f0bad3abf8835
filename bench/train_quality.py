"""Model quality, honestly: does sift's training beat a handcrafted floor on pictures of another style?

What it measures. A train corpus in style 0 (``flows.corpus.make_corpus``: 10% clean labels with 5%
flipped, a NEUTRAL noisy pool mixed 65/30/5 NEUTRAL/BAD/GOOD, the rest unlabeled) and a test corpus
of other items drawn in another style (``--style-test``, default 1: same class cues, other palettes,
backgrounds, faces, text, marks, pages and frames) both go through sift's own preprocessing
(``flows.ingest.preprocess.run``); sift's own ``train.main.run`` trains on the first, tracked in a temporary
MLflow store (and a temporary SIFT_HOME, so no label store or cache of the checkout leaks in). Arms
differ by ONE change each, cumulatively, and share the embedding cache, the steps and the seed:

  (a) supervised     labeled items only, no teacher, no unlabeled pool; the NEUTRAL folder is taken
                     at its word (the corpus has no clean NEUTRAL folder, so without it the model
                     would never see a NEUTRAL label)
  (b) + noisy prior  the NEUTRAL folder trained towards its prior instead (noisy_pool=prior, still
                     no teacher: only the noisy-pool target changes)
  (c) + mean teacher the EMA teacher, consistency on labeled and unlabeled items, the noisy-pool
                     targets refined by the teacher (the config's mean-teacher settings)
  (d) + fine-tune    the frozen warm-up, then the last blocks end to end (frozen_steps >= 0,
                     unfreeze_last > 0)

and the floor: a scikit-learn logistic regression on handcrafted features (colour histograms,
saturation / brightness statistics, edge density) trained on the same labeled train items with the
same given labels as arm (a), its temperature and operating point chosen on the same validation items
by sift's own calibration. Every number is computed the same way for every model: calibrated
probabilities and the served labels (``train.artifact.SiftModel(path).predict`` for sift) against the
corpus's ground truth (``_meta/truth.jsonl``), on (i) the same-style test split and (ii) the whole
style-shifted corpus, which nothing was trained or calibrated on. Validation uses ground truth too (as
``eval_truth`` does for sift), for every model alike.

Metrics, mean and [min-max] over seeds: BAD recall at GOOD->BAD <= 2% (the best recall of a sweep on
P(BAD) over the evaluated items, i.e. a ranking measure), macro-F1 and ECE of the served labels and
calibrated probabilities, and the realised GOOD->BAD rate of the served labels. Then the ratios
sift / floor (BAD recall) and how often the mean teacher (c) is ahead of supervised-only (a).

Targets (issue #15), on the style-shifted corpus, for the full method (d): BAD recall at GOOD->BAD
<= 2% >= 0.80, macro-F1 >= 0.75, ECE <= 0.05, >= 2x the floor's BAD recall, and the mean teacher ahead
of supervised-only on 3/3 seeds. The last lines say which are met.

    python bench/train_quality.py                       # 1500 images, seeds 0 1 2, 8 epochs x 25 steps
    python bench/train_quality.py --quick               # smoke run: few images, 1 seed, 2 short epochs
    python bench/train_quality.py --config train/configs/tiny.yaml --images 3000 --style-test 2 \\
        --seeds 0 1 2 --epochs 8 --workdir /tmp/sift-quality   # a workdir keeps corpora and data for reruns
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from flows.core.config import ConfigError

from flows.ingest.config import load_preprocess
from flows.corpus import make_corpus
from flows.corpus.looks import look_of
from flows.core.runtime import quiet_env
from train import calibrate, metrics
from train.config import CONFIG_DIR, for_classes, load_train

ARMS = (("a", "supervised"), ("b", "+ noisy prior"), ("c", "+ mean teacher"), ("d", "+ fine-tune"))
FLOOR = "floor (logreg)"
RATE = 0.02  # the GOOD->BAD rate of the headline operating point
TRAIN_SEED, TEST_SEED = 11, 12  # corpus seeds: the shifted corpus holds other items, not redrawn ones
TARGETS = {"recall": 0.80, "macro_f1": 0.75, "ece": 0.05, "x_floor": 2.0}
COLUMNS = (("recall", "BAD rec@2%"), ("macro_f1", "macro-F1"), ("ece", "ECE"), ("g2b", "GOOD->BAD"))


def default_config() -> Path:
    """train/configs/small.yaml when it exists (it is being added), else tiny.yaml."""
    small = CONFIG_DIR / "small.yaml"
    return small if small.exists() else CONFIG_DIR / "tiny.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; --quick fills in a smoke run's sizes where they were not given."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=None, help="train YAML (default: small.yaml, else tiny.yaml)")
    ap.add_argument("--images", type=int, default=None, help="train corpus size (default 1500; quick 240)")
    ap.add_argument("--test-images", type=int, default=None, help="style-shifted corpus size (default images/2)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per arm (default 8; quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="steps per epoch (default 25; quick 8)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2; quick 0)")
    ap.add_argument("--style-test", type=int, default=1, help="style of the shifted test corpus (train: 0)")
    ap.add_argument("--short-edge", type=int, default=160, help="preprocess short_edge")
    ap.add_argument("--quick", action="store_true", help="a smoke run that finishes in a few minutes")
    ap.add_argument("--workdir", type=Path, default=None, help="keep corpora, data and runs here (reused)")
    ap.add_argument("--arms", default="abcd", help="the arms to train (default abcd; the floor always runs)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a train-config override for every arm (repeatable): bench a recipe change")
    a = ap.parse_args(argv)
    # quick needs 2 epochs, not 1: arm (d) unfreezes at an epoch boundary, so in 1 epoch it equals (c)
    quick = {"images": 240, "epochs": 2, "steps": 8, "seeds": [0]}
    full = {"images": 1500, "epochs": 8, "steps": 25, "seeds": [0, 1, 2]}
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.test_images = a.test_images or max(60, a.images // 2)
    a.config = a.config or default_config()
    check_args(a)
    return a


def check_args(a: argparse.Namespace) -> None:
    """ConfigError for inputs that cannot give a meaningful comparison."""
    if a.style_test == 0:
        raise ConfigError("--style-test 0 is the train corpus's style: pick another (1, 2, ...) for a shift")
    look_of(a.style_test)  # ConfigError for a style that does not exist
    if a.images < 100 or a.test_images < 30:
        raise ConfigError(f"--images {a.images} / --test-images {a.test_images}: too few for a split "
                          "with every class in val and test (at least 100 / 30)")
    if not a.arms or set(a.arms) - {arm for arm, _ in ARMS}:
        raise ConfigError(f"--arms {a.arms!r}: pick from {''.join(arm for arm, _ in ARMS)}")
    if a.epochs < 1 or a.steps < 1 or not a.seeds:
        raise ConfigError("--epochs, --steps and --seeds must be positive / non-empty")
    if not Path(a.config).exists():
        raise ConfigError(f"--config {a.config} does not exist")
    load_train(a.config, a.overrides)  # a wrong --set fails here, before any corpus is drawn


# -- data -------------------------------------------------------------------------------------

def build_data(work: Path, a: argparse.Namespace) -> dict:
    """Both corpora and their preprocessing (skipped where a previous run in ``work`` left them)."""
    from flows.ingest.preprocess import run as preprocess

    out = {}
    for name, images, seed, style in (("train", a.images, TRAIN_SEED, 0),
                                      ("shift", a.test_images, TEST_SEED, a.style_test)):
        corpus, data = work / f"corpus_{name}", work / f"data_{name}"
        meta = corpus / "_meta" / "corpus.json"
        params = json.loads(meta.read_text())["params"] if meta.exists() else {}
        if (params.get("images"), params.get("seed"), params.get("style")) != (images, seed, style):
            make_corpus(corpus, images=images, videos=0, seed=seed, labeled=0.1, noisy=0.25, broken=False,
                        workers=2, progress=False, style=style)
            (data / "manifest.json").unlink(missing_ok=True)
        if not (data / "manifest.json").exists():
            preprocess(corpus, data, load_preprocess(None, [f"short_edge={a.short_edge}"]))
        out[name] = {"corpus": corpus, "data": data, "truth": corpus / "_meta" / "truth.jsonl"}
    return out


def read_truth(truth: Path, corpus: Path) -> dict[str, str]:
    """{absolute path: true class} of every image in a corpus's ground truth."""
    rows = (json.loads(line) for line in truth.read_text().splitlines() if line.strip())
    return {str((corpus / r["path"]).resolve()): r["true"] for r in rows if r.get("true")}


def read_items(data: Path, truth: dict[str, str], classes: list[str]) -> dict:
    """The preprocessed items (stored JPEGs) with split, given label and true label (-1: no truth)."""
    import pyarrow.dataset as pads

    t = pads.dataset(str(data / "data"), format="parquet").to_table(
        columns=["path", "split", "label", "image"]).to_pydict()
    true = [classes.index(truth[str(Path(p).resolve())]) if str(Path(p).resolve()) in truth else -1
            for p in t["path"]]
    return {"path": t["path"], "split": np.array(t["split"]), "given": np.array(t["label"], np.int64),
            "true": np.array(true, np.int64), "image": t["image"]}


def subset(items: dict, mask: np.ndarray) -> dict:
    """The items where ``mask`` holds."""
    idx = np.flatnonzero(mask)
    return {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for k, v in items.items()}


# -- scoring: one function for every model -----------------------------------------------------

def score(probs: np.ndarray, pred: np.ndarray, y: np.ndarray, classes: list[str], pos: str, neg: str) -> dict:
    """BAD recall at GOOD->BAD <= RATE (sweep on P(pos)), macro-F1 and realised GOOD->BAD rate of the
    served labels, ECE of the calibrated probabilities."""
    pi, ni, C = classes.index(pos), classes.index(neg), len(classes)
    cm = metrics.confusion(y, pred, C)
    return {"recall": metrics.recall_at_fpr(probs, y, pi, ni, RATE)[0], "macro_f1": metrics.macro_f1(cm),
            "ece": metrics.ece(probs, y), "g2b": float(cm[ni, pi] / cm[ni].sum()) if cm[ni].sum() else math.nan}


def sift_predict(model_path: str, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probs (N, C), served labels (N,)) of the trained artifact, as serving computes them."""
    from train.artifact import SiftModel

    model = SiftModel(model_path)
    probs, labels = [], []
    for i in range(0, len(images), 64):
        for r in model.predict(images[i:i + 64]):
            probs.append([r["probs"][c] for c in model.classes])
            labels.append(model.classes.index(r["label"]))
    return np.array(probs, np.float64).reshape(-1, len(model.classes)), np.array(labels, np.int64)


# -- the floor ----------------------------------------------------------------------------------

def features(jpeg: bytes) -> np.ndarray:
    """Handcrafted features of one stored image: RGB and HSV histograms, saturation / brightness
    statistics, edge density overall and on a 3x3 grid."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        rgb = im.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR)
    a = np.asarray(rgb, np.float32)
    hsv = np.asarray(rgb.convert("HSV"), np.float32) / 255.0
    q = (a // 64).astype(np.int64)  # 4 levels per channel -> a 64-bin joint colour histogram
    joint = np.bincount((q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]).ravel(), minlength=64) / q[..., 0].size
    hue = np.histogram(hsv[..., 0], 12, (0, 1), weights=hsv[..., 1])[0] / q[..., 0].size  # hue where colourful
    sat, val = (np.histogram(hsv[..., k], 8, (0, 1))[0] / q[..., 0].size for k in (1, 2))
    grey = a.mean(axis=2)
    grad = np.hypot(np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1, :])
    edges = grad > 24
    grid = [edges[i * 31:(i + 1) * 31, j * 31:(j + 1) * 31].mean() for i in range(3) for j in range(3)]
    stats = [hsv[..., 1].mean(), hsv[..., 1].std(), hsv[..., 2].mean(), hsv[..., 2].std(), edges.mean(),
             grad.mean() / 255, (a.max(axis=2) - a.min(axis=2)).mean() / 255]
    return np.concatenate([joint, hue, sat, val, stats, grid]).astype(np.float64)


def operating_rule(val_p: np.ndarray, val_y: np.ndarray, classes: list[str], cfg):
    """The floor's served-label rule, chosen on validation by sift's own calibration code (same
    worst mistake, rate and fallback). train.calibrate's operating point is being extended (roles:
    guard, fallback): the richer rule is used where it exists, so the floor is judged by the rule
    sift serves with."""
    kw = {"positive": cfg.positive, "negative": cfg.negative, "max_rate": cfg.threshold_rate}
    if hasattr(calibrate, "choose_decision"):
        rule = calibrate.choose_decision(val_p, val_y, classes, fallback=getattr(cfg, "fallback", ""), **kw)
    else:
        rule = calibrate.choose_thresholds(val_p, val_y, classes, **kw)
    return lambda p: np.asarray(metrics.predict_with_thresholds(p, rule), np.int64)


def floor(train: dict, val: dict, tests: dict[str, dict], classes: list[str], cfg) -> dict[str, dict]:
    """Logistic regression on ``features``: fit on the train items' given labels, temperature and
    operating point on val's truth, scored on each test set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = {id(s): np.stack([features(b) for b in s["image"]]) for s in (train, val, *tests.values())}
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    clf.fit(feats[id(train)], train["given"])
    if list(clf.classes_) != list(range(len(classes))):
        raise ConfigError(f"the floor's train items miss a class: {clf.classes_} of {classes}")
    logits = {k: clf.decision_function(feats[id(s)]) for k, s in (("val", val), *tests.items())}
    temperature = calibrate.fit_temperature(logits["val"], val["true"])
    rule = operating_rule(calibrate.apply_temperature(logits["val"], temperature), val["true"], classes, cfg)
    out = {}
    for name, s in tests.items():
        p = calibrate.apply_temperature(logits[name], temperature)
        out[name] = score(p, rule(p), s["true"], classes, cfg.positive, cfg.negative)
    return out


# -- the arms -----------------------------------------------------------------------------------

def arm_overrides(arm: str, base, steps: int, epochs: int) -> list[str]:
    """The config changes of ``arm`` (cumulative: each arm is the previous one plus one change)."""
    frozen = ["frozen_steps=-1"]
    if arm == "a":
        return ["noisy_pool=label", "mean_teacher=false", "unlabeled_batch=0", *frozen]
    if arm == "b":  # the prior alone is the noisy pool's target without a teacher
        return ["noisy_pool=prior", "mean_teacher=false", "unlabeled_batch=0", *frozen]
    unlabeled = base.unlabeled_batch or 2 * base.labeled_batch
    teacher = ["noisy_pool=prior", "mean_teacher=true", f"unlabeled_batch={unlabeled}"]  # the rest: the config's
    if arm == "c":
        return [*teacher, *frozen]
    # the config's warm-up when it leaves end-to-end steps, else the first half (at least one epoch frozen)
    total, last = steps * epochs, steps * max(1, epochs - 1)
    warm = base.frozen_steps if 0 <= base.frozen_steps <= last else max(1, min(total // 2, last))
    return [*teacher, f"frozen_steps={warm}", f"unfreeze_last={base.unfreeze_last or 1}"]


def train_arm(arm: str, seed: int, a, data: dict, uri: str) -> dict:
    """Train one arm for one seed with sift's own ``train.main.run``; returns its summary."""
    from train.main import run as train

    base = load_train(a.config, a.overrides)
    overrides = [*a.overrides, f"seed={seed}", f"epochs={a.epochs}", f"steps_per_epoch={a.steps}", "early_stop=0",
                 f"eval_truth={data['truth']}", "predictions=false", "experiment=sift-bench-quality",
                 f"run_name=quality-{arm}-s{seed}-{int(time.time())}",
                 *arm_overrides(arm, base, a.steps, a.epochs)]
    return train(load_train(a.config, overrides), data["data"], tracking_uri=uri)


def run_bench(a: argparse.Namespace, work: Path) -> dict:
    """Every arm and the floor on every seed; returns {model: {test set: [per-seed scores]}}."""
    data = build_data(work, a)
    manifest = json.loads((data["train"]["data"] / "manifest.json").read_text())
    classes = list(manifest["classes"])
    cfg = for_classes(load_train(a.config, a.overrides), classes)
    if not (cfg.positive and cfg.negative):
        raise ConfigError(f"the bench needs the worst mistake (positive/negative) among {classes}")
    sets = {}
    for name in ("train", "shift"):
        truth = read_truth(data[name]["truth"], data[name]["corpus"])
        sets[name] = read_items(data[name]["data"], truth, classes)
    tr = sets["train"]
    labeled = subset(tr, (tr["split"] == "train") & (tr["given"] >= 0))  # what arm (a) trains on
    val = subset(tr, (tr["split"] == "val") & (tr["true"] >= 0))
    tests = {"same": subset(tr, (tr["split"] == "test") & (tr["true"] >= 0)),
             "shift": subset(sets["shift"], sets["shift"]["true"] >= 0)}
    print(f"[bench] {len(labeled['true'])} labeled train items, {len(val['true'])} val, "
          f"{len(tests['same']['true'])} same-style test, {len(tests['shift']['true'])} style-{a.style_test} test; "
          f"classes {classes}", flush=True)
    results = {name: {"same": [], "shift": []} for _, name in ARMS} | {FLOOR: {"same": [], "shift": []}}
    fl = floor(labeled, val, tests, classes, cfg)  # deterministic: one fit, whatever the seed
    for split in ("same", "shift"):
        results[FLOOR][split].append(fl[split])
    print(f"[bench] {FLOOR}: " + "  ".join(f"{split}: " + " ".join(f"{k}={fl[split][k]:.3f}" for k, _ in COLUMNS)
                                          for split in tests), flush=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    for seed in a.seeds:
        for arm, name in ARMS:
            if arm not in a.arms:
                continue
            t = time.time()
            summary = train_arm(arm, seed, a, data["train"], uri)
            for split, s in tests.items():
                probs, pred = sift_predict(summary["model"], s["image"])
                results[name][split].append(score(probs, pred, s["true"], classes, cfg.positive, cfg.negative))
            print(f"[bench] seed {seed} ({arm}) {name:15s} " + "  ".join(
                f"{split}: " + " ".join(f"{k}={results[name][split][-1][k]:.3f}" for k, _ in COLUMNS)
                for split in tests) + f"  ({time.time() - t:.0f} s)", flush=True)
    return results


# -- report -------------------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    """'mean [min-max]' (just the value for one seed); nan-safe."""
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "nan"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} [{min(v):.2f}-{max(v):.2f}]"


def mean(values: list[float]) -> float:
    """The mean over seeds, ignoring NaN (NaN when nothing is left)."""
    v = [x for x in values if not math.isnan(x)]
    return statistics.mean(v) if v else math.nan


def report(results: dict, a: argparse.Namespace) -> None:
    """The table (arms and floor, both test sets), ratios to the floor, mean teacher wins, targets."""
    n = len(a.seeds)
    print("\n== bench/train_quality.py ==")
    print(f"train: {a.images} images in style 0 (10% clean labels, 25% NEUTRAL noisy pool, rest unlabeled); "
          f"test: the same-style test split and {a.test_images} other images in style {a.style_test}; "
          f"config {Path(a.config).name}{''.join(' ' + o for o in a.overrides)}, arms {a.arms}, "
          f"{a.epochs} epochs x {a.steps} steps, seeds {a.seeds}; "
          f"mean [min-max] over seeds vs ground truth")
    width = 24 if n > 1 else 11
    for split, title in (("same", "(i) same-style test split"), ("shift", f"(ii) style-{a.style_test} corpus")):
        print(f"\n{title}")
        print(f"{'model':18s}" + "".join(f"{h:>{width}s}" for _, h in COLUMNS) + f"{'x floor (recall)':>18s}")
        fl = mean([r["recall"] for r in results[FLOOR][split]])
        for name, by_split in results.items():
            rows = by_split[split]
            ratio = mean([r["recall"] for r in rows]) / fl if fl > 0 else math.nan
            print(f"{name:18s}" + "".join(f"{spread([r[k] for r in rows]):>{width}s}" for k, _ in COLUMNS)
                  + f"{ratio:18.2f}")
    sup, mt, prior = (results[name]["shift"] for name in ("supervised", "+ mean teacher", "+ noisy prior"))
    wins = {k: sum(c[k] > s[k] for s, c in zip(sup, mt)) for k in ("recall", "macro_f1")}
    print(f"\nmean teacher ahead of supervised-only on {wins['recall']}/{n} seeds (style-shifted BAD recall), "
          f"{wins['macro_f1']}/{n} (macro-F1); ahead of (b) alone on "
          f"{sum(c['recall'] > p['recall'] for p, c in zip(prior, mt))}/{n} (BAD recall)")
    full, fl = results[ARMS[-1][1]]["shift"], mean([r["recall"] for r in results[FLOOR]["shift"]])
    got = {"recall": mean([r["recall"] for r in full]), "macro_f1": mean([r["macro_f1"] for r in full]),
           "ece": mean([r["ece"] for r in full])}
    got["x_floor"] = got["recall"] / fl if fl > 0 else math.nan
    checks = [(f"BAD recall@2% >= {TARGETS['recall']}", got["recall"], got["recall"] >= TARGETS["recall"]),
              (f"macro-F1 >= {TARGETS['macro_f1']}", got["macro_f1"], got["macro_f1"] >= TARGETS["macro_f1"]),
              (f"ECE <= {TARGETS['ece']}", got["ece"], got["ece"] <= TARGETS["ece"]),
              (f">= {TARGETS['x_floor']}x the floor's BAD recall", got["x_floor"], got["x_floor"] >= TARGETS["x_floor"]),
              ("mean teacher ahead on 3/3 seeds", wins["recall"], n == 3 and wins["recall"] == 3)]
    print(f"targets (style-shifted, {ARMS[-1][1].strip('+ ')} = all changes): " + "; ".join(
        f"{name}: {value:.3f} {'met' if ok else 'MISSED'}" if isinstance(value, float)
        else f"{name}: {value}/{n} {'met' if ok else 'MISSED'}" for name, value, ok in checks))


def main(argv=None) -> int:
    """Parse, build, train, report; a temporary workdir is removed at the end. Bad inputs: exit 2."""
    try:
        a = parse_args(argv)
    except ConfigError as exc:
        print(f"bench/train_quality.py: {exc}", file=sys.stderr)
        return 2
    quiet_env()
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="sift-quality-") as tmp:
        work = Path(a.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        os.environ["SIFT_HOME"] = str(work / "home")  # before Ray starts, so its workers inherit it
        try:
            results = run_bench(a, work)
        finally:
            import ray

            ray.shutdown()
        report(results, a)
    print(f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
