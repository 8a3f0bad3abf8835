"""train_step / predict_logits invariants on a small model (no Ray)."""
import pytest
import torch
import torch.nn as nn

from train.data import CacheView
from train.loop import LossSpec, mix, predict_logits, supervised_terms, train_step
from train.model import HeadOutput
from train.teacher import make_teacher


class TinyNet(nn.Module):
    """Stands in for Classifier: same call signature (z=, face=) and outputs."""

    def __init__(self, d=16, c=3):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, c))

    def forward(self, pixels=None, face=None, z=None):
        return HeadOutput(self.lin(z), None, None)


def spec(mean_teacher=True, **kw):
    base = dict(gamma_pos=0.0, gamma_neg=4.0, eps=0.0, cost=None, cost_weight=0.0,
                priors={1: torch.tensor([0.3, 0.65, 0.05])}, mean_teacher=mean_teacher, consistency="mse",
                consistency_weight=1.0, rampup=5, confidence_threshold=0.0, noisy_sharpen=1.0, ema_decay=0.9)
    base.update(kw)
    return LossSpec(**base)


def batch(n=24, v=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.randn(3, d, generator=g) * 3
    x = centers[y][:, None, :] + torch.randn(n, v, d, generator=g)
    pool = torch.zeros(n, dtype=torch.long)
    pool[y == 1] = 1  # the NEUTRAL items are a noisy pool
    return {"x": x, "face": torch.zeros(n, 0), "label": y, "pool": pool, "score": torch.full((n,), float("nan")),
            "tags": torch.zeros(n, 0), "tagged": torch.zeros(n, dtype=torch.bool)}


def test_thirty_steps_on_one_batch_lower_the_loss():
    torch.manual_seed(0)
    student = TinyNet()
    teacher = make_teacher(student)
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    b, view = batch(), CacheView(noise=0.05)
    first = train_step(student, teacher, opt, dict(b), view, spec(), 0)["loss"]
    for step in range(1, 30):
        last = train_step(student, teacher, opt, dict(b), view, spec(), step)["loss"]
    assert last < 0.5 * first


def test_teacher_gets_no_gradient_and_follows_by_ema():
    student = TinyNet()
    teacher = make_teacher(student)
    before = [p.clone() for p in teacher.parameters()]
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    train_step(student, teacher, opt, batch(), CacheView(0.0), spec(), step=3)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, teacher.parameters()))


def test_noisy_pool_modes_prior_label_ignore():
    import torch.nn.functional as F

    from train import losses

    b = batch()
    logits = torch.randn(len(b["label"]), 3)
    noisy_items = b["pool"] == 1
    clean, noisy = supervised_terms(logits, b, spec(mean_teacher=False, noisy_pool="label"), None)
    assert float(noisy) == 0.0 and float(clean) > 0  # at its word: the pool is one more clean class
    # without a teacher the prior alone is the target: soft cross-entropy to (0.3, 0.65, 0.05)
    _, noisy_prior = supervised_terms(logits, b, spec(mean_teacher=False), None)
    want = -(torch.tensor([0.3, 0.65, 0.05]) * F.log_softmax(logits[noisy_items], -1)).sum(-1).mean()
    assert float(noisy_prior) == pytest.approx(float(want), rel=1e-5)
    ignored_clean, ignored = supervised_terms(logits, b, spec(noisy_pool="ignore"), None)
    assert float(ignored) == 0.0
    only_clean = losses.classification_loss(logits[~noisy_items], b["label"][~noisy_items], gamma_pos=0.0,
                                            gamma_neg=4.0)
    assert float(ignored_clean) == pytest.approx(float(only_clean), rel=1e-6)


def test_class_weights_balance_the_clean_loss():
    from train.main import balanced_weights

    w = balanced_weights([90, 0, 10], 1.0)
    assert w[0] * 90 == pytest.approx(w[2] * 10)  # both classes weigh the same in total
    assert float((w * torch.tensor([90.0, 0, 10])).sum() / 100) == pytest.approx(1.0)  # mean weight 1
    assert float(w[1]) > 0 and balanced_weights([5, 5, 5], 0.0) is None
    assert torch.allclose(balanced_weights([5, 5, 5], 1.0), torch.ones(3))
    assert balanced_weights([0, 0, 0], 1.0) is None  # nothing to balance: no weights, never NaN


def test_class_counts_read_the_cache_table():
    import pandas as pd

    from train.main import class_counts

    meta = pd.DataFrame({"split": ["train"] * 5 + ["val"], "label": [0, 0, 2, 1, -1, 0],
                         "pool": ["clean", "clean", "clean", "noisy", "unlabeled", "clean"]})
    assert class_counts(meta, 3) == [2, 0, 1]  # clean labeled train items only


def test_train_workers_get_the_mlflow_credentials_of_the_driver(monkeypatch):
    from train.main import WORKER_ENV, worker_env

    for k in WORKER_ENV:
        monkeypatch.delenv(k, raising=False)
    assert worker_env() is None  # nothing to pass: the workers' own environment as Ray gives it
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://x")  # the URI travels in the run's context instead
    assert worker_env() == {"env_vars": {"MLFLOW_TRACKING_TOKEN": "t0k"}}


def test_unlabeled_items_only_feed_consistency():
    b = batch()
    unl = batch(seed=1)
    unl["label"][:] = -1
    unl["pool"][:] = 2
    m = mix(b, unl)
    assert len(m["label"]) == 48
    logits = torch.randn(48, 3)
    c1, n1 = supervised_terms(logits, m, spec(), None)
    c2, n2 = supervised_terms(logits[:24], b, spec(), None)
    assert torch.allclose(c1, c2) and torch.allclose(n1, n2)


def test_cache_view_gives_student_and_teacher_different_views():
    b = batch(v=4)
    seen = {}

    class Probe(TinyNet):
        def forward(self, pixels=None, face=None, z=None):
            seen[len(seen)] = z
            return super().forward(z=z)

    net, view = Probe(), CacheView(noise=0.0, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    view(net, b, "student", g)
    view(net, b, "teacher", g)
    view(net, b, "eval", g)
    assert not torch.equal(seen[0], seen[1])
    assert torch.equal(seen[2], b["x"][:, 0])


def test_predict_logits_keeps_order_and_labels():
    net = TinyNet()
    batches = [batch(seed=s) for s in range(3)]
    logits, y, pools = predict_logits(net, batches, CacheView(0.0))
    assert logits.shape == (72, 3) and (y == torch.cat([b["label"] for b in batches]).numpy()).all()
