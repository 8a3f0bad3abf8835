"""Invariants of the evaluation metrics (train/metrics.py)."""
import math
import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

from train.metrics import (
    average_precision,
    confusion,
    ece,
    evaluate,
    macro_f1,
    per_class_prf,
    pr_curve,
    predict_with_thresholds,
    rate_tag,
    recall_at_fpr,
    tag_metrics,
)
from train.selection import selection_score

CLASSES = ["BAD", "NEUTRAL", "GOOD"]
BAD, NEUTRAL, GOOD = range(3)


def _random(n=500, c=3, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(c), size=n)
    return probs, rng.integers(0, c, n)


def _flag_rates(scores, y, pos, neg, t):
    flagged = scores >= t
    return flagged[y == pos].mean(), flagged[y == neg].mean()


# --- confusion / PRF ---------------------------------------------------------------------------------

def test_confusion_sums_and_diagonal():
    probs, y = _random()
    pred = probs.argmax(1)
    cm = confusion(y, pred, 3)
    assert cm.shape == (3, 3) and cm.sum() == len(y)
    assert np.array_equal(np.diag(cm), [np.sum((y == c) & (pred == c)) for c in range(3)])
    assert np.array_equal(cm.sum(1), np.bincount(y, minlength=3))  # rows are true labels


def test_confusion_rejects_out_of_range():
    with pytest.raises(ValueError):
        confusion([0, 3], [0, 1], 3)


@pytest.mark.parametrize("seed", range(5))
def test_prf_and_macro_f1_match_sklearn(seed):
    probs, y = _random(seed=seed, c=4)
    pred = probs.argmax(1)
    cm = confusion(y, pred, 4)
    assert macro_f1(cm) == pytest.approx(f1_score(y, pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    got = per_class_prf(cm, list("abcd"))
    for i, name in enumerate("abcd"):
        assert got[name] == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})


def test_prf_undefined_is_zero_not_nan():
    cm = confusion([0, 0, 1], [0, 0, 0], 3)  # class 1 never predicted, class 2 absent
    got = per_class_prf(cm, CLASSES)
    assert got["NEUTRAL"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert got["GOOD"]["f1"] == 0.0 and not math.isnan(macro_f1(cm))


def test_average_precision_matches_sklearn():
    probs, y = _random(seed=3)
    for c in range(3):
        expected = average_precision_score(y == c, probs[:, c])
        assert average_precision(probs[:, c], y == c) == pytest.approx(expected)


def test_prf_hand_computed_with_a_class_absent_from_y_true():
    # class 3 ("d") has no true item but is predicted once; its row is all zeros, its ratios 0, not NaN
    y = [0, 0, 0, 1, 1, 2, 2, 2]
    pred = [0, 0, 1, 1, 3, 2, 0, 2]
    cm = confusion(y, pred, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 2, 0], [0, 0, 0, 0]]
    got = per_class_prf(cm, list("abcd"))
    expected = {"a": (2 / 3, 2 / 3, 2 / 3, 3), "b": (1 / 2, 1 / 2, 1 / 2, 2), "c": (1.0, 2 / 3, 4 / 5, 3),
                "d": (0.0, 0.0, 0.0, 0)}
    for c, (p, r, f, n) in expected.items():
        assert got[c] == pytest.approx({"precision": p, "recall": r, "f1": f, "support": n})
    assert macro_f1(cm) == pytest.approx(59 / 120)  # (2/3 + 1/2 + 4/5 + 0) / 4: the absent class counts
    probs = np.full((8, 4), 0.1)
    probs[np.arange(8), pred] = 0.7
    m = evaluate(probs, np.array(y), list("abcd"))
    assert m["accuracy"] == pytest.approx(5 / 8) and m["macro_f1"] == pytest.approx(59 / 120)
    assert (m["n_d"], m["precision_d"], m["recall_d"], m["f1_d"]) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(m["ap_d"]) and m["f1_c"] == pytest.approx(0.8)


def test_pr_curve_and_average_precision_hand_computed():
    scores = [0.9, 0.8, 0.8, 0.3, 0.1]  # the two 0.8s (one positive, one not) are flagged together
    is_pos = [True, False, True, False, True]
    precision, recall, thresholds = pr_curve(scores, is_pos)
    assert thresholds.tolist() == [0.9, 0.8, 0.3, 0.1]
    assert precision == pytest.approx([1, 2 / 3, 1 / 2, 3 / 5]) and recall == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1])
    assert average_precision(scores, is_pos) == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)  # sum (R_k - R_k-1) P_k
    assert all(a.size == 0 for a in pr_curve(scores, [False] * 5)) and math.isnan(average_precision(scores, [0] * 5))


def test_tag_metrics_hand_computed_one_and_two_tags():
    probs = np.array([[0.9, 0.1], [0.2, 0.1], [0.7, 0.1], [0.1, 0.1]])
    targets = np.array([[1, 0], [0, 0], [0, 0], [0, 0]])
    one = tag_metrics(probs[:, :1], targets[:, :1], [0.5], ["x"])  # a single tag is still its positive side
    assert one["tag_f1_x"] == pytest.approx(2 / 3) and one["tag_ap_x"] == 1.0  # tp 1, fp 1, fn 0
    two = tag_metrics(probs, targets, [0.5, 0.5], ["x", "y"])
    assert two["tag_f1_y"] == 0.0 and math.isnan(two["tag_ap_y"])  # no positive, none flagged: 0, no AP
    assert two["tag_macro_f1"] == pytest.approx(1 / 3) and two["tag_map"] == 1.0 and two["tag_n"] == 4.0


# --- recall at rate ----------------------------------------------------------------------------------

def test_recall_at_fpr_perfect_separation():
    y = np.array([BAD] * 10 + [GOOD] * 10 + [NEUTRAL] * 5)
    probs = np.zeros((25, 3))
    probs[y == BAD, BAD] = np.linspace(0.6, 1.0, 10)
    probs[y == GOOD, BAD] = np.linspace(0.0, 0.4, 10)
    probs[y == NEUTRAL, BAD] = 0.99  # other classes do not count against the rate
    probs[:, GOOD] = 1 - probs[:, BAD]
    recall, t = recall_at_fpr(probs, y, BAD, GOOD, 0.0)
    assert recall == 1.0 and t == pytest.approx(0.6)  # highest threshold keeping all BAD


def test_recall_at_fpr_random_scores_recall_close_to_rate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 30000)
    probs = rng.dirichlet(np.ones(3), size=y.size)
    for rate in (0.01, 0.05, 0.2):
        recall, _ = recall_at_fpr(probs, y, BAD, GOOD, rate)
        assert recall == pytest.approx(rate, abs=0.015)


@pytest.mark.parametrize("seed", range(6))
def test_recall_at_fpr_respects_rate_and_is_monotone(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.integers(0, 3, n)
    # coarse rounding makes many ties, some across BAD and GOOD items
    score = np.round(np.clip(rng.normal(0.5 + 0.2 * (y == BAD) - 0.2 * (y == GOOD), 0.2), 0, 1), 1)
    probs = np.stack([score, (1 - score) / 2, (1 - score) / 2], 1)
    prev = 0.0
    for rate in (0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0):
        recall, t = recall_at_fpr(probs, y, BAD, GOOD, rate)
        got_recall, got_rate = _flag_rates(score, y, BAD, GOOD, t)
        assert got_rate <= rate and got_recall == pytest.approx(recall)
        assert recall >= prev
        prev = recall
        # exact: no threshold (among all distinct scores and above) does better within the constraint
        best = max(r for r, f in (_flag_rates(score, y, BAD, GOOD, u) for u in np.r_[np.unique(score), 2.0])
                   if f <= rate)
        assert recall == pytest.approx(best)
    assert prev == 1.0


def test_recall_at_fpr_ties_are_flagged_together():
    # one BAD and one GOOD share the top score: flagging the BAD one means flagging the GOOD one too
    y = np.array([BAD, GOOD, BAD, GOOD, GOOD, GOOD])
    s = np.array([0.9, 0.9, 0.5, 0.1, 0.1, 0.1])
    probs = np.stack([s, np.zeros(6), 1 - s], 1)
    assert recall_at_fpr(probs, y, BAD, GOOD, 0.0) == (0.0, pytest.approx(np.nextafter(0.9, 1)))
    assert recall_at_fpr(probs, y, BAD, GOOD, 0.25) == (1.0, 0.5)


def test_recall_at_fpr_nan_without_items():
    probs, y = _random()
    y[y == GOOD] = NEUTRAL
    assert all(math.isnan(v) for v in recall_at_fpr(probs, y, BAD, GOOD, 0.05))


# --- ECE ---------------------------------------------------------------------------------------------

def test_ece_small_when_calibrated_large_when_overconfident():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40000, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = (rng.random(len(probs))[:, None] > probs.cumsum(1)).sum(1)  # labels drawn from the probs
    assert ece(probs, y) < 0.02
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    assert ece(sharp, y) > 0.1


def test_ece_empty_is_nan():
    assert math.isnan(ece(np.zeros((0, 3)), np.zeros(0, int)))


# --- thresholds --------------------------------------------------------------------------------------

def test_equal_thresholds_are_argmax():
    probs, _ = _random(c=5)
    for t in (0.2, 0.5, 1.0, 1e-6):
        assert np.array_equal(predict_with_thresholds(probs, [t] * 5), probs.argmax(1))


def test_plain_thresholds_are_argmax_of_the_ratio():
    probs, _ = _random(2000, seed=4)
    for t in ([0.3, 0.7, 0.7], [0.9, 0.1, 0.2], [0.5, 0.5, 0.05]):
        assert np.array_equal(predict_with_thresholds(probs, t), (probs / np.array(t)).argmax(1))
    two = np.array([[0.3, 0.7], [0.7, 0.3], [0.65, 0.35]])
    assert np.array_equal(predict_with_thresholds(two, [0.68, 0.32]), [1, 0, 1])  # P(0) >= 0.68


def test_thresholds_validated():
    with pytest.raises(ValueError):
        predict_with_thresholds(np.eye(3), [0.5, 0.5])
    with pytest.raises(ValueError):
        predict_with_thresholds(np.eye(3), [0.5, 0.0, 0.5])


# --- evaluate / selection ----------------------------------------------------------------------------

def test_evaluate_keys_values_and_mlflow_names():
    probs, y = _random(seed=2)
    m = evaluate(probs, y, CLASSES, positive="BAD", negative="GOOD")
    cm = np.array(m.pop("confusion"))
    assert cm.sum() == len(y)
    expected = {"accuracy", "macro_f1", "ece", "uncertain_rate", "GOOD2BAD_rate"}
    expected |= {f"{k}_{c}" for k in ("n", "precision", "recall", "f1", "ap") for c in CLASSES}
    expected |= {f"BAD_recall_at_GOOD2BAD_le_{p}" for p in (1, 2, 5)}
    assert set(m) == expected
    assert [m[f"n_{c}"] for c in CLASSES] == [float((y == i).sum()) for i in range(len(CLASSES))]
    assert all(isinstance(v, float) for v in m.values())
    assert all(re.fullmatch(r"[A-Za-z0-9_\-./ ]+", k) for k in m)
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["BAD_recall_at_GOOD2BAD_le_5"] == recall_at_fpr(probs, y, BAD, GOOD, 0.05)[0]


def test_evaluate_custom_labels_and_fractional_rates():
    probs, y = _random(c=2)
    m = evaluate(probs, y, ["spam", "ham?"], positive="spam", negative="ham?", rates=(0.005, 0.1))
    assert "spam_recall_at_ham_2spam_le_0p5" in m and "spam_recall_at_ham_2spam_le_10" in m
    assert "BAD_recall_at_GOOD2BAD_le_5" not in evaluate(probs, y, ["a", "b"])  # no BAD/GOOD: skipped
    assert [rate_tag(r) for r in (0.01, 0.05, 0.07, 0.025, 0.001)] == ["1", "5", "7", "2p5", "0p1"]


def test_evaluate_uses_thresholds_for_predictions():
    probs, y = _random(seed=5)
    m = evaluate(probs, y, CLASSES, positive="BAD", negative="GOOD", thresholds=[0.9, 0.1, 0.1])
    pred = predict_with_thresholds(probs, [0.9, 0.1, 0.1])
    assert m["confusion"] == confusion(y, pred, 3).tolist()
    assert m["GOOD2BAD_rate"] == pytest.approx(np.mean(pred[y == GOOD] == BAD))


def test_selection_score_forms():
    m = {"accuracy": 0.8, "macro_f1": 0.7, "precision_GOOD": 0.9, "f1_BAD": 0.6,
         "BAD_recall_at_GOOD2BAD_le_5": 0.55, "BAD_recall_at_GOOD2BAD_le_0p5": 0.2, "confusion": [[1]]}
    assert selection_score(m, "bad_recall@good2bad<=0.05") == 0.55
    assert selection_score(m, "BAD_recall@GOOD2BAD <= 0.005") == 0.2
    assert selection_score(m, "precision:GOOD") == 0.9
    assert selection_score(m, "f1:bad") == 0.6
    assert selection_score(m, "macro_f1") == 0.7 and selection_score(m, "Accuracy") == 0.8
    assert selection_score({"accuracy": float("nan")}, "accuracy") == -math.inf  # never wins a max()


def test_selection_score_custom_names_with_digits():
    m = {"x2_recall_at_y22x2_le_1": 0.3}
    assert selection_score(m, "x2_recall@y22x2<=0.01") == 0.3


@pytest.mark.parametrize("criterion",
                         ["loss", "bad_recall@good2bad", "precision", "bad_recall@good2neutral<=0.05"])
def test_selection_score_rejects_unknown(criterion):
    m = {"accuracy": 0.8, "BAD_recall_at_GOOD2BAD_le_5": 0.5}
    with pytest.raises(ValueError, match="criteri"):
        selection_score(m, criterion)


def test_selection_score_missing_rate_lists_available():
    m = {"BAD_recall_at_GOOD2BAD_le_5": 0.5}
    with pytest.raises(ValueError, match="BAD_recall_at_GOOD2BAD_le_5"):
        selection_score(m, "bad_recall@good2bad<=0.1")
