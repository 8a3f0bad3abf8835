"""Does mean teacher beat supervised-only training on sift's kind of data? Same steps, 3 seeds.

The corpus has 10% clean labels, a NEUTRAL noisy pool (by construction 65% NEUTRAL, 30% BAD, 5%
GOOD) and a large unlabeled pool. Both arms train the same tiny model for the same number of
steps from the same embedding cache:
  - supervised-only: labeled items only, the NEUTRAL folder taken at its word, no teacher;
  - mean teacher: + EMA teacher, consistency on labeled and unlabeled items, the noisy pool
    trained towards its prior refined by the teacher.
Metrics are computed on the test split against the corpus's ground truth (val uses it too, for
both arms alike, for calibration and thresholds). Prints BAD recall at GOOD->BAD <= 2%, macro-F1
and ECE for both arms, the per-seed difference, its mean and spread. Target: mean teacher wins.

    python bench/train_quality.py [--images 1500 --seeds 0 1 2 --epochs 8]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.runtime import quiet_env  # noqa: E402

quiet_env()

from flows.config import load_preprocess  # noqa: E402
from flows.corpus import make_corpus  # noqa: E402
from flows.preprocess import run as preprocess  # noqa: E402
from train.config import CONFIG_DIR, load_train  # noqa: E402
from train.main import run as train  # noqa: E402

METRICS = [("test_BAD_recall_at_GOOD2BAD_le_2", "BAD recall @ GOOD->BAD<=2%", +1),
           ("test_macro_f1", "macro-F1", +1),
           ("test_ece", "ECE (lower is better)", -1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sift-quality-"))
    corpus, data = work / "corpus", work / "data"
    if not (corpus / "_meta" / "corpus.json").exists():
        make_corpus(corpus, images=args.images, videos=0, seed=11, labeled=0.1, noisy=0.25, broken=False,
                    workers=2, progress=False)
    if not (data / "manifest.json").exists():
        preprocess(corpus, data, load_preprocess(None, ["short_edge=160"]))
    truth = str(corpus / "_meta" / "truth.jsonl")
    results: dict[str, list[dict]] = {"supervised": [], "mean_teacher": []}
    for seed in args.seeds:
        for arm in results:
            overrides = [f"seed={seed}", f"epochs={args.epochs}", "frozen_steps=-1", "early_stop=0",
                         "steps_per_epoch=25", f"eval_truth={truth}", "experiment=sift-bench-quality",
                         f"mean_teacher={'true' if arm == 'mean_teacher' else 'false'}",
                         "unlabeled_batch=" + ("64" if arm == "mean_teacher" else "0"),
                         f"run_name=quality-{arm}-s{seed}-{int(time.time())}"]
            cfg = load_train(CONFIG_DIR / "tiny.yaml", overrides)
            t = time.time()
            summary = train(cfg, data)
            results[arm].append(summary["metrics"])
            print(f"seed {seed} {arm:13s} " + "  ".join(f"{k[5:]}={summary['metrics'].get(k, float('nan')):.3f}"
                                                      for k, _, _ in METRICS) + f"  ({time.time() - t:.0f} s)",
                  flush=True)
    print("\n== bench/train_quality.py ==")
    print(f"corpus {args.images} images: 10% clean labels, 25% NEUTRAL noisy pool, rest unlabeled; "
          f"tiny CLIP, {args.epochs}x25 steps, seeds {args.seeds}; test split vs ground truth")
    print(f"{'metric':30s} {'supervised':>12s} {'mean teacher':>14s} {'diff (MT-sup)':>15s} {'spread':>8s}")
    wins = 0
    for key, name, sign in METRICS:
        sup = [m.get(key, float("nan")) for m in results["supervised"]]
        mt = [m.get(key, float("nan")) for m in results["mean_teacher"]]
        diffs = [b - a for a, b in zip(sup, mt)]
        mean_d = statistics.mean(diffs)
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        wins += (sign * mean_d) > 0
        print(f"{name:30s} {statistics.mean(sup):12.3f} {statistics.mean(mt):14.3f} {mean_d:+15.3f} {sd:8.3f}")
    print(f"mean teacher better on {wins}/{len(METRICS)} metrics (target: wins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
