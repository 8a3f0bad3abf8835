"""Invariants of the training losses (train/losses.py)."""
import pytest
import torch
import torch.nn.functional as F

from train.losses import (
    asymmetric_focal_loss,
    classification_loss,
    confidence_weights,
    default_cost_matrix,
    expected_cost,
    noisy_pool_targets,
    soft_cross_entropy,
    softmax_kl_consistency,
    softmax_mse_consistency,
)

CLASSES = ["BAD", "NEUTRAL", "GOOD"]
BAD, NEUTRAL, GOOD = range(3)


def _batch(b=8, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * 2, torch.randint(0, c, (b,), generator=g)


# --- asymmetric focal loss -------------------------------------------------------------------------

def test_asl_without_focusing_or_smoothing_is_cross_entropy():
    logits, target = _batch()
    asl = asymmetric_focal_loss(logits, target, gamma_pos=0.0, gamma_neg=0.0, eps=0.0)
    assert torch.allclose(asl, F.cross_entropy(logits, target), atol=1e-6)
    per_item = asymmetric_focal_loss(logits, target, 0.0, 0.0, reduction="none")
    assert torch.allclose(per_item, F.cross_entropy(logits, target, reduction="none"), atol=1e-6)


def test_asl_with_smoothing_and_no_focusing_is_label_smoothed_cross_entropy():
    logits, target = _batch()
    asl = asymmetric_focal_loss(logits, target, 0.0, 0.0, eps=0.1)
    assert torch.allclose(asl, F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)


def test_reductions_none_mean_sum():
    logits, target = _batch()
    none = asymmetric_focal_loss(logits, target, 1.0, 4.0, eps=0.1, reduction="none")
    assert none.shape == (8,)
    mean = asymmetric_focal_loss(logits, target, 1.0, 4.0, eps=0.1, reduction="mean")
    total = asymmetric_focal_loss(logits, target, 1.0, 4.0, eps=0.1, reduction="sum")
    assert torch.allclose(mean, none.mean()) and torch.allclose(total, none.sum())
    with pytest.raises(ValueError):
        asymmetric_focal_loss(logits, target, 1.0, 4.0, reduction="avg")


def test_weighted_mean_is_sum_wl_over_sum_w():
    logits, target = _batch()
    w = torch.linspace(0.1, 2.0, 8)
    none = asymmetric_focal_loss(logits, target, 2.0, 1.0, eps=0.1, reduction="none")
    weighted = asymmetric_focal_loss(logits, target, 2.0, 1.0, eps=0.1, weight=w)
    assert torch.allclose(weighted, (w * none).sum() / w.sum())
    # a uniform weight re-balances nothing
    uniform = asymmetric_focal_loss(logits, target, 2.0, 1.0, eps=0.1, weight=torch.full((8,), 0.3))
    assert torch.allclose(uniform, none.mean())


def test_zero_weight_items_contribute_nothing():
    logits, target = _batch()
    logits.requires_grad_(True)
    w = torch.ones(8)
    w[:3] = 0.0
    loss = asymmetric_focal_loss(logits, target, 2.0, 4.0, eps=0.1, weight=w)
    loss.backward()
    assert torch.all(logits.grad[:3] == 0) and logits.grad[3:].abs().sum() > 0
    ref = asymmetric_focal_loss(logits.detach()[3:], target[3:], 2.0, 4.0, eps=0.1)
    assert torch.allclose(loss, ref)


def test_all_zero_weights_give_zero_not_nan():
    logits, target = _batch()
    loss = asymmetric_focal_loss(logits, target, 2.0, 4.0, weight=torch.zeros(8))
    assert loss.item() == 0.0


def test_raising_gamma_pos_of_a_class_lowers_its_easy_items_loss():
    logits = torch.tensor([[0.0, 4.0, 0.0], [4.0, 0.0, 0.0]])  # confidently correct items of class 1 and 0
    target = torch.tensor([1, 0])
    uniform = asymmetric_focal_loss(logits, target, 1.0, 0.0, reduction="none")
    per_class = asymmetric_focal_loss(logits, target, torch.tensor([1.0, 3.0, 1.0]), 0.0, reduction="none")
    assert per_class[0] < uniform[0]  # class 1 focuses harder: its easy item counts less
    assert torch.allclose(per_class[1], uniform[1])  # class 0 untouched


def test_focusing_is_finite_for_a_certain_prediction():
    logits = torch.tensor([[0.0, 200.0, 0.0]], requires_grad=True)  # p_y == 1.0 exactly in float32
    loss = asymmetric_focal_loss(logits, torch.tensor([1]), 0.5, 0.5, eps=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_bad_per_class_gamma_shape_raises():
    logits, target = _batch()
    with pytest.raises(ValueError):
        asymmetric_focal_loss(logits, target, torch.ones(4), 0.0)


# --- expected cost ---------------------------------------------------------------------------------

def test_default_cost_matrix_puts_worst_at_good_predicted_bad():
    cost = default_cost_matrix(CLASSES, negative="GOOD", positive="BAD", worst=5.0)
    expected = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
    assert torch.equal(cost, expected)


def test_default_cost_matrix_without_good_and_bad_is_all_ones_off_diagonal():
    cost = default_cost_matrix(["cat", "dog", "bird", "fish"])
    assert torch.equal(cost, torch.ones(4, 4) - torch.eye(4))
    assert torch.equal(default_cost_matrix(["GOOD", "x"]), torch.ones(2, 2) - torch.eye(2))


def test_expected_cost_is_zero_for_a_perfect_confident_prediction():
    cost = default_cost_matrix(CLASSES, negative="GOOD", positive="BAD")
    target = torch.tensor([BAD, NEUTRAL, GOOD])
    logits = F.one_hot(target, 3).float() * 100.0
    assert expected_cost(logits, target, cost).item() == pytest.approx(0.0, abs=1e-12)


def test_good_predicted_bad_costs_worst_times_good_predicted_neutral():
    cost = default_cost_matrix(CLASSES, negative="GOOD", positive="BAD", worst=5.0)
    target = torch.tensor([GOOD, GOOD])
    logits = F.one_hot(torch.tensor([BAD, NEUTRAL]), 3).float() * 100.0
    per_item = expected_cost(logits, target, cost, reduction="none")
    assert per_item[0] / per_item[1] == pytest.approx(5.0)


def test_classification_loss_adds_weighted_cost():
    logits, target = _batch()
    cost = default_cost_matrix(CLASSES, negative="GOOD", positive="BAD")
    w = torch.rand(8, generator=torch.Generator().manual_seed(1))
    total = classification_loss(logits, target, gamma_pos=1.0, gamma_neg=4.0, cost=cost, cost_weight=0.5,
                                eps=0.1, weight=w)
    asl = asymmetric_focal_loss(logits, target, 1.0, 4.0, eps=0.1, weight=w)
    assert torch.allclose(total, asl + 0.5 * expected_cost(logits, target, cost, weight=w))
    with pytest.raises(ValueError):
        classification_loss(logits, target, gamma_pos=1.0, gamma_neg=4.0, cost_weight=0.5)


def test_classification_loss_trains_a_linear_model():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=g)
    target = (x[:, :3] * torch.tensor([1.0, 2.0, 3.0])).argmax(dim=1)  # learnable by a linear model
    model = torch.nn.Linear(10, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 10, generator=g) * 0.01)
        model.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    cost = default_cost_matrix(CLASSES, negative="GOOD", positive="BAD")
    kw = dict(gamma_pos=1.0, gamma_neg=4.0, cost=cost, cost_weight=0.5, eps=0.05)
    first = classification_loss(model(x), target, **kw).item()
    for _ in range(30):
        opt.zero_grad()
        loss = classification_loss(model(x), target, **kw)
        loss.backward()
        opt.step()
    last = classification_loss(model(x), target, **kw).item()
    assert last < 0.3 * first


# --- consistency -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [softmax_mse_consistency, softmax_kl_consistency])
def test_consistency_is_zero_when_student_equals_teacher(fn):
    logits, _ = _batch()
    assert fn(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("fn", [softmax_mse_consistency, softmax_kl_consistency])
def test_consistency_gradient_reaches_the_student_only(fn):
    s, _ = _batch(seed=1)
    t, _ = _batch(seed=2)
    s.requires_grad_(True)
    t.requires_grad_(True)
    fn(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", [softmax_mse_consistency, softmax_kl_consistency])
def test_consistency_zero_weight_removes_an_item(fn):
    s, _ = _batch(seed=1)
    t, _ = _batch(seed=2)
    s.requires_grad_(True)
    w = torch.ones(8)
    w[0] = 0.0
    loss = fn(s, t, weight=w)
    loss.backward()
    assert torch.all(s.grad[0] == 0)
    t_changed = t.clone()
    t_changed[0] = torch.tensor([9.0, -9.0, 0.0])  # what the teacher says about item 0 does not matter
    assert torch.allclose(fn(s, t_changed, weight=w), loss)
    # normalised by B, not by sum(w): gating items lowers the total
    assert torch.allclose(loss, fn(s, t, weight=torch.ones(8)) - fn(s[:1], t[:1]) / 8)


def test_mse_consistency_matches_the_reference_normalisation():
    s, _ = _batch(seed=1)
    t, _ = _batch(seed=2)
    # reference: F.mse_loss(sum) / C, divided by the minibatch size in the training loop
    ref = F.mse_loss(s.softmax(-1), t.softmax(-1), reduction="sum") / 3 / 8
    assert torch.allclose(softmax_mse_consistency(s, t), ref)


def test_confidence_weights_gate_below_threshold_and_are_detached():
    t = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0]], requires_grad=True)
    w = confidence_weights(t, threshold=0.8)
    conf = t.detach().softmax(-1).amax(-1)
    assert w.shape == (2,) and not w.requires_grad
    assert w[0] == pytest.approx(conf[0].item()) and w[1] == 0.0
    assert torch.allclose(confidence_weights(t, power=2.0), conf ** 2)


# --- noisy pool ------------------------------------------------------------------------------------

PRIOR = torch.tensor([0.30, 0.65, 0.05])  # BAD, NEUTRAL, GOOD: the NEUTRAL folder's estimated contents


def test_noisy_pool_targets_without_teacher_is_the_prior():
    target = noisy_pool_targets(PRIOR)
    assert target.shape == (1, 3) and torch.allclose(target[0], PRIOR)
    assert torch.allclose(noisy_pool_targets([3.0, 6.5, 0.5]), PRIOR.unsqueeze(0))  # renormalised


def test_noisy_pool_targets_rows_sum_to_one_and_uniform_teacher_gives_prior():
    probs = torch.softmax(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    target = noisy_pool_targets(PRIOR, probs)
    assert target.shape == (5, 3) and torch.allclose(target.sum(-1), torch.ones(5))
    uniform = torch.full((4, 3), 1 / 3)
    assert torch.allclose(noisy_pool_targets(PRIOR, uniform), PRIOR.expand(4, 3))
    assert torch.allclose(noisy_pool_targets(PRIOR, probs, sharpen=0.0), PRIOR.expand(5, 3))


def test_a_teacher_confident_in_bad_moves_the_target_towards_bad():
    probs = torch.tensor([[0.90, 0.08, 0.02]], requires_grad=True)
    target = noisy_pool_targets(PRIOR, probs)
    assert target[0, BAD] > PRIOR[BAD] and target[0, BAD] > target[0, NEUTRAL]
    assert not target.requires_grad  # detached


def test_soft_cross_entropy_matches_hard_cross_entropy_on_one_hot_targets():
    logits, target = _batch()
    q = F.one_hot(target, 3).float()
    assert torch.allclose(soft_cross_entropy(logits, q), F.cross_entropy(logits, target), atol=1e-6)
    prior_ce = soft_cross_entropy(logits, noisy_pool_targets(PRIOR))  # a (1, C) target broadcasts
    assert torch.allclose(prior_ce, soft_cross_entropy(logits, PRIOR.expand(8, 3)))


def test_soft_cross_entropy_does_not_backprop_into_the_target():
    logits, _ = _batch()
    logits.requires_grad_(True)
    q = torch.softmax(torch.randn(8, 3), -1).requires_grad_(True)
    soft_cross_entropy(logits, q).backward()
    assert q.grad is None and logits.grad is not None
