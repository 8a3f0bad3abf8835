"""Cross-fitted calibration: stratified folds, held-out logits, determinism."""
import numpy as np
import pytest
import torch

from train import calibrate
from train.crossfit import fit_head, folds, oof_logits


def test_folds_are_stratified_and_seeded():
    y = np.r_[np.zeros(50), np.ones(23), np.full(7, 2)].astype(int)
    f = folds(y, 5, seed=3)
    assert f.min() == 0 and f.max() == 4
    for c, n in ((0, 50), (1, 23), (2, 7)):
        sizes = np.bincount(f[y == c], minlength=5)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n  # each class spread evenly
    assert np.array_equal(f, folds(y, 5, seed=3)) and not np.array_equal(f, folds(y, 5, seed=4))


def _blobs(n=150, d=16, seed=0, signal=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(0, 1, (3, d)) * signal
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def test_out_of_fold_logits_learn_a_signal_and_are_deterministic():
    x, y = _blobs()
    a = oof_logits(x, y, 3, k=5, hidden=32, steps=150, seed=0)
    assert a.shape == (150, 3) and np.isfinite(a).all()
    assert (a.argmax(1) == y).mean() > 0.9
    assert np.array_equal(a, oof_logits(x, y, 3, k=5, hidden=32, steps=150, seed=0))


def test_out_of_fold_logits_are_held_out_where_in_sample_ones_are_not():
    """On labels with no signal a head memorises its training items; held-out logits stay at chance,
    which is why calibration may use them and not the in-sample ones."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (120, 64)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    g = torch.Generator().manual_seed(0)
    head = fit_head(torch.from_numpy(x), torch.from_numpy(y), 3, hidden=64, dropout=0.0, steps=300, batch=32,
                    lr=3e-3, weight_decay=0.0, class_weight=None, generator=g)
    with torch.no_grad():
        in_sample = (head(torch.from_numpy(x)).logits.argmax(1).numpy() == y).mean()
    oof = oof_logits(x, y, 3, k=5, hidden=64, dropout=0.0, steps=300, lr=3e-3, weight_decay=0.0, seed=0)
    assert in_sample > 0.9
    assert (oof.argmax(1) == y).mean() < 0.5
    # and their temperature says so: fitted on held-out logits it flattens them towards 1/C
    t = calibrate.fit_temperature(oof, y)
    assert calibrate.apply_temperature(oof, t).max(1).mean() < 0.6


def test_too_few_items_is_refused():
    with pytest.raises(ValueError):
        oof_logits(np.zeros((3, 4)), np.array([0, 1, 2]), 3, k=5)
