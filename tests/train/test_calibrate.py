"""Invariants of temperature scaling and threshold choice (train/calibrate.py)."""
import numpy as np
import pytest
import torch

from train.calibrate import apply_temperature, choose_decision, choose_thresholds, fit_temperature, nll, operating_curve
from train.metrics import predict_with_thresholds, recall_at_fpr

CLASSES = ["BAD", "NEUTRAL", "GOOD"]
BAD, NEUTRAL, GOOD = range(3)


def _calibrated_logits(n=20000, c=3, seed=0):
    """Logits of a perfectly calibrated model: labels are drawn from softmax(logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 1.5
    probs = apply_temperature(logits, 1.0)
    y = (rng.random(n)[:, None] > probs.cumsum(1)).sum(1)
    return logits, y


def _val_set(n=3000, seed=0, c=3):
    """Noisy, overlapping validation probabilities with a class signal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.2 * np.eye(c)[y]
    return apply_temperature(logits, 1.0), y


# --- temperature -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_temperature_recovers_scale(scale):
    logits, y = _calibrated_logits()
    T = fit_temperature(logits * scale, y)
    assert T == pytest.approx(scale, rel=0.1)
    assert nll(logits * scale, y, T) <= nll(logits * scale, y, 1.0)


def test_temperature_accepts_tensors_and_keeps_argmax():
    logits, y = _calibrated_logits(5000)
    t_logits, t_y = torch.tensor(logits * 3, dtype=torch.float32, requires_grad=True), torch.tensor(y)
    T = fit_temperature(t_logits, t_y)
    assert T == pytest.approx(fit_temperature(logits * 3, y), rel=1e-3)
    probs = apply_temperature(t_logits, T)
    assert np.allclose(probs.sum(1), 1) and np.array_equal(probs.argmax(1), logits.argmax(1))


def test_temperature_never_worse_and_empty():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    assert fit_temperature(np.zeros((10, 3)), np.arange(10) % 3) == 1.0  # flat NLL: keep T = 1
    rng = np.random.default_rng(1)
    for _ in range(5):
        logits, y = rng.normal(size=(50, 4)) * 4, rng.integers(0, 4, 50)
        T = fit_temperature(logits, y)
        assert T > 0 and nll(logits, y, T) <= nll(logits, y, 1.0)


def test_apply_temperature_rejects_non_positive():
    with pytest.raises(ValueError):
        apply_temperature(np.zeros((2, 3)), 0.0)


# --- thresholds with a worst mistake -----------------------------------------------------------------

def _best_recall(probs, y, max_rate):
    """BAD recall of the best cut of P(BAD) with GOOD->BAD <= max_rate (the sweep, other classes out)."""
    return recall_at_fpr(probs, y, BAD, GOOD, max_rate)[0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_rate", [0.0, 0.01, 0.05, 0.2])
def test_chosen_operating_point_respects_rate_on_validation(seed, max_rate):
    probs, y = _val_set(seed=seed)
    d = choose_decision(probs, y, CLASSES, positive="BAD", negative="GOOD", max_rate=max_rate, fallback="NEUTRAL")
    assert len(d.thresholds) == 3 and all(0 < v <= 1 for v in d.thresholds)
    assert (d.positive, d.negative, d.fallback) == (BAD, GOOD, NEUTRAL)
    pred = d.predict(probs)
    assert np.mean(pred[y == GOOD] == BAD) <= max_rate
    # BAD is predicted only at or above its threshold, and the threshold is the sweep's best cut
    assert np.all(probs[pred == BAD, BAD] >= d.thresholds[BAD])
    flagged = probs[y == BAD, BAD] >= d.thresholds[BAD]
    assert flagged.mean() == pytest.approx(_best_recall(probs, y, max_rate))
    # the guard: GOOD never wins over a more probable BAD
    assert not np.any((pred == GOOD) & (probs[:, GOOD] < probs[:, BAD]))


def test_chosen_thresholds_with_ties_and_two_classes():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    # many ties, 0 included; not 1: a GOOD item with P(BAD) = 1 is flagged by any threshold <= 1
    p_bad = np.round(np.clip(rng.normal(0.4 + 0.2 * (y == 0), 0.2), 0, 0.99), 2)
    probs = np.stack([p_bad, 1 - p_bad], 1)
    for max_rate in (0.0, 0.02, 0.1):
        d = choose_decision(probs, y, ["BAD", "GOOD"], positive="BAD", negative="GOOD", max_rate=max_rate)
        pred, sure = d.labels(probs)
        assert np.mean(pred[y == 1] == 0) <= max_rate
        # with two classes the positive threshold is a plain probability threshold, and the other
        # class takes the rest (uncertain where it is the less probable one)
        assert np.array_equal(pred == 0, p_bad >= d.thresholds[0])
        assert np.array_equal(~sure, (p_bad < d.thresholds[0]) & (p_bad > 0.5))
        assert np.mean(pred[y == 0] == 0) == pytest.approx(recall_at_fpr(probs, y, 0, 1, max_rate)[0])


def test_chosen_thresholds_custom_names_and_five_classes():
    probs, y = _val_set(c=5, seed=7)
    names = ["a", "spam", "b", "c", "ham"]
    d = choose_decision(probs, y, names, positive="spam", negative="ham", max_rate=0.03)
    assert all(0 < v <= 1 for v in d.thresholds) and d.fallback is None
    pred = d.predict(probs)
    assert np.mean(pred[y == 4] == 1) <= 0.03
    assert np.all(probs[pred == 1, 1] >= d.thresholds[1])  # spam only at or above its threshold
    assert not np.any((pred == 4) & (probs[:, 4] < probs[:, 1]))  # ham never over a more probable spam
    # the other thresholds maximise macro-F1 with spam's held: never worse than leaving them equal
    plain = list(d.thresholds)
    for c in (0, 2, 3, 4):
        plain[c] = 0.2
    assert _macro_f1(probs, y, d) >= _macro_f1(probs, y, d.__class__(tuple(plain), None, 1, 4)) - 1e-12


def test_chosen_thresholds_degenerate_inputs():
    probs, y = _val_set()
    y[y == GOOD] = NEUTRAL  # no negative item: plain argmax
    d = choose_decision(probs, y, CLASSES, positive="BAD", negative="GOOD")
    assert d.curve is None and np.array_equal(d.predict(probs), probs.argmax(1))
    with pytest.raises(ValueError, match="GOOD"):
        choose_decision(probs, y, ["BAD", "NEUTRAL", "OK"], positive="BAD", negative="GOOD")
    # a negative item that the model is certain is positive and the rate 0: nothing may be flagged
    probs = np.array([[0.9, 0.05, 0.05], [0.99, 0.005, 0.005], [0.2, 0.2, 0.6]])
    d = choose_decision(probs, np.array([BAD, GOOD, GOOD]), CLASSES, positive="BAD", negative="GOOD",
                        max_rate=0.0, fallback="NEUTRAL", min_neg=0)
    assert all(0 < v <= 1 for v in d.thresholds)
    assert d.predict(probs).tolist() == [NEUTRAL, NEUTRAL, GOOD]  # not BAD, and not GOOD either: uncertain


def test_too_few_negatives_keep_plain_argmax_and_the_curve():
    probs, y = _val_set(n=120, seed=2)  # ~40 GOOD items: too few for 1%, enough for 5%
    n_good = int((y == GOOD).sum())
    few = choose_decision(probs, y, CLASSES, positive="BAD", negative="GOOD", max_rate=0.01, fallback="NEUTRAL")
    assert n_good < 200 and few.thresholds[BAD] == pytest.approx(1 / 3) and few.curve is not None
    moved = few.override(CLASSES, max_rate=0.01)  # the user can still ask for the rate at serve time
    assert moved.thresholds[BAD] == pytest.approx(
        choose_decision(probs, y, CLASSES, positive="BAD", negative="GOOD", max_rate=0.01, fallback="NEUTRAL",
                        min_neg=0).thresholds[BAD])
    enough = choose_decision(probs, y, CLASSES, positive="BAD", negative="GOOD", max_rate=0.05, min_neg=n_good)
    assert enough.thresholds[BAD] != pytest.approx(1 / 3)


def test_operating_curve_is_the_exact_sweep():
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.1, 0.2], [0.6, 0.1, 0.3], [0.2, 0.1, 0.7], [0.5, 0.4, 0.1]])
    y = np.array([BAD, GOOD, BAD, GOOD, NEUTRAL])  # the NEUTRAL item is not on the curve
    c = operating_curve(probs, y, BAD, GOOD)
    assert (c["n_pos"], c["n_neg"]) == (2, 2)
    assert c["recall"] == [0.0, 0.5, 0.5, 1.0, 1.0] and c["rate"] == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert c["tau"] == pytest.approx([0.95, 0.8, 0.65, 0.4, 0.2])  # halfway between neighbours
    assert operating_curve(probs, np.full(5, BAD), BAD, GOOD) is None


# --- thresholds without a worst mistake: validation macro-F1 -----------------------------------------

def _macro_f1(probs, y, t):
    from sklearn.metrics import f1_score

    return f1_score(y, predict_with_thresholds(probs, t), average="macro", labels=range(probs.shape[1]))


@pytest.mark.parametrize("seed", range(3))
def test_binary_macro_f1_threshold_is_the_best_cut_and_one_threshold(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(600) < 0.2).astype(int)  # imbalanced: argmax is not the best cut
    p0 = np.clip(rng.normal(0.35 + 0.3 * (y == 0), 0.18), 0, 1)
    probs = np.stack([p0, 1 - p0], 1)
    t = choose_thresholds(probs, y, ["indoor", "outdoor"])  # no positive: the macro-F1 rule
    assert t[0] + t[1] == pytest.approx(1.0) and 0 < t[0] < 1
    pred = predict_with_thresholds(probs, t)
    assert np.array_equal(pred == 0, p0 >= t[0])  # one threshold on P(class 0)
    cuts = np.clip(np.r_[np.unique(p0), 1.0], 1e-9, 1 - 1e-9)
    best = max(_macro_f1(probs, y, [c, 1 - c]) for c in cuts)  # every cut, brute force
    assert _macro_f1(probs, y, t) == pytest.approx(best)
    assert _macro_f1(probs, y, t) >= _macro_f1(probs, y, [0.5, 0.5])


def test_binary_macro_f1_threshold_prefers_plain_argmax_on_a_plateau():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
    t = choose_thresholds(probs, np.array([0, 0, 1, 1]), ["a", "b"])
    assert t == pytest.approx([0.5, 0.5])  # every cut in (0.2, 0.8] is perfect: 0.5 is the middle


def test_multiclass_macro_f1_thresholds_never_lose_to_argmax_and_sum_to_one():
    rng = np.random.default_rng(5)
    y = rng.choice(4, 1500, p=[0.55, 0.25, 0.15, 0.05])
    logits = rng.normal(size=(1500, 4)) + 1.0 * np.eye(4)[y]
    probs = apply_temperature(logits, 1.0)
    t = choose_thresholds(probs, y, ["attic", "beach", "forest", "kitchen"])
    assert len(t) == 4 and sum(t) == pytest.approx(1.0) and all(v > 0 for v in t)
    assert _macro_f1(probs, y, t) > _macro_f1(probs, y, [0.25] * 4) + 0.01  # the rare classes gain
    # a validation set that cannot tell thresholds apart leaves plain argmax
    perfect = np.eye(4)[y] * 0.7 + 0.075
    assert choose_thresholds(perfect, y, list("abcd")) == pytest.approx([0.25] * 4)
    assert choose_thresholds(np.zeros((0, 4)), np.zeros(0), list("abcd")) == [0.25] * 4
