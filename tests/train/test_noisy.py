"""The noisy-pool mix estimate (train/noisy.py) on hand-made held-out probabilities."""
import numpy as np
import pytest

from train.noisy import confident_mix, estimate, self_confidence

CLASSES = ["BAD", "GOOD", "NEUTRAL"]


def _probs(true, rng, sharp=3.0):
    logits = rng.normal(size=(len(true), 3)) + sharp * np.eye(3)[true]
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def test_self_confidence_and_counting_rule():
    p = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    t = self_confidence(p, np.array([0, 0, 1, 2]), 3)
    assert t == pytest.approx([0.8, 0.8, 0.6])
    pool = np.array([[0.85, 0.1, 0.05], [0.5, 0.1, 0.4], [0.1, 0.05, 0.85], [0.4, 0.3, 0.3]])
    mix, n = confident_mix(pool, t)
    assert n == 2 and mix == pytest.approx([0.5, 0.0, 0.5])  # rows 1 and 3 pass no threshold


def test_a_pool_mixed_unlike_its_prior_is_estimated_and_gets_a_suggestion():
    rng = np.random.default_rng(0)
    clean_y = rng.integers(0, 3, 900)
    true = rng.choice(3, 2000, p=[0.45, 0.05, 0.50])  # really 45% BAD, the user said 30%
    est = estimate(_probs(true, rng), _probs(clean_y, rng), clean_y, CLASSES, [0.30, 0.05, 0.65])
    assert est["method"] == "confident" and est["n"] == 2000 and est["counted"] > 1000
    assert est["estimate"]["BAD"] == pytest.approx(0.45, abs=0.05)
    assert est["estimate"]["NEUTRAL"] == pytest.approx(0.50, abs=0.05)
    assert est["distance"] > 0.1 and "BAD: 0.4" in est["suggestion"]


def test_a_prior_that_matches_gets_no_suggestion_and_missing_clean_classes_fall_back_to_the_mean():
    rng = np.random.default_rng(1)
    clean_y = rng.integers(0, 3, 900)
    true = rng.choice(3, 2000, p=[0.30, 0.05, 0.65])
    est = estimate(_probs(true, rng), _probs(clean_y, rng), clean_y, CLASSES, [0.30, 0.05, 0.65])
    assert est["distance"] < 0.05 and est["suggestion"] == ""
    no_good = clean_y[clean_y != 1]
    est = estimate(_probs(true, rng), _probs(no_good, rng), no_good, CLASSES, [0.30, 0.05, 0.65])
    assert est["method"] == "mean" and sum(est["estimate"].values()) == pytest.approx(1.0, abs=1e-3)
