"""Learning-rate schedule, plateau reduction and early stopping (train/schedule.py), and proof that the
unfrozen phase trains the backbone (train/model.py) — all without Ray."""
import math

import pytest
import torch

from train.schedule import end_of_epoch, lr_factor, phase_lengths, TrainState, set_lr


def test_phase_lengths():
    assert phase_lengths(10, 5, -1) == (50, 0)
    assert phase_lengths(10, 5, 12) == (12, 35)  # frozen ends in epoch 3, cut short there: 7 epochs left
    assert phase_lengths(10, 5, 0) == (0, 50)
    assert phase_lengths(2, 5, 100) == (10, 0)


def test_warmup_then_cosine_decay():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))  # rising during warm-up
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # then never rising
    assert f[10 + 45] == pytest.approx(0.5 * (math.cos(math.pi * 45 / 90) + 1))
    assert 0 < f[-1] < 0.01
    assert [lr_factor(s, 100, 0, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert lr_factor(0, 0, 5) == pytest.approx(0.2)  # an unplanned phase still warms up


def test_plateau_halves_the_rate_after_patience_epochs_and_early_stop_stops():
    s = TrainState()
    scores = [0.5, 0.6, 0.6, 0.59, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7]
    out = [end_of_epoch(s, x, patience=1, factor=0.5, early_stop=4) for x in scores]
    assert [o["improved"] for o in out] == [True, True, False, False, False, True, False, False, False, False]
    # more than patience=1 epochs without improvement: halved at the 2nd bad epoch, counter reset
    assert [o["reduced"] for o in out] == [False, False, False, True, False, False, False, True, False, True]
    assert s.lr_scale == pytest.approx(0.125)
    assert [o["stop"] for o in out].index(True) == 9  # 4 epochs after the last improvement
    assert s.best == 0.7


def test_non_finite_scores_never_improve_and_early_stop_0_never_stops():
    s = TrainState()
    out = [end_of_epoch(s, x, patience=100, factor=0.5, early_stop=0) for x in (-math.inf, math.nan, 0.1)]
    assert [o["improved"] for o in out] == [False, False, True] and not any(o["stop"] for o in out)


def test_set_lr_scales_every_group_from_its_base():
    w1, w2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [w1], "lr": 1e-3}, {"params": [w2], "lr": 1e-5}])
    assert set_lr(opt, [1e-3, 1e-5], 0.5) == [5e-4, 5e-6]
    assert [g["lr"] for g in opt.param_groups] == [5e-4, 5e-6]


def test_unfrozen_phase_trains_the_last_blocks_only(tmp_path):
    """A pixel-mode step after ``set_trainable`` changes the last block's weights, not the first's."""
    from train.model import Classifier, load_backbone, resolve_backbone, set_trainable

    backbone, preproc = load_backbone(resolve_backbone("tiny", tmp_path))
    model = Classifier(backbone, 2, 0, 16, 0.0, False)
    set_trainable(model, 1)
    layers = model.backbone.blocks()
    first, last = (copy_of(layers[0]), copy_of(layers[-1]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(4, 3, preproc.crop, preproc.crop)
    logits = model(pixels=x, face=torch.zeros(4, 0)).logits
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    assert changed(layers[-1], last) and not changed(layers[0], first)


def copy_of(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(module, before) -> bool:
    return any(not torch.equal(v, before[k]) for k, v in module.state_dict().items())
