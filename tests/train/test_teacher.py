"""Invariants of the mean teacher (train/teacher.py)."""
import pytest
import torch
from torch import nn

from train.teacher import ema_decay, ema_update, make_teacher


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _train_a_bit(net, steps=3):
    """Move the parameters and the BatchNorm buffers away from their initial values."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    g = torch.Generator().manual_seed(123)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(16, 4, generator=g) * 3 + 1).pow(2).mean().backward()
        opt.step()


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_make_teacher_is_a_frozen_independent_copy():
    student = _net()
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (k, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr(), k
    _train_a_bit(student)
    assert not torch.equal(teacher[0].weight, student[0].weight)  # the student's training leaves it alone
    student.eval()
    assert teacher.training  # mode is independent after the copy


def test_decay_zero_copies_student():
    student = _net()
    teacher = make_teacher(student)
    _train_a_bit(student)
    ema_update(teacher, student, decay=0.0)
    for (k, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), k


def test_decay_one_freezes_teacher():
    student = _net()
    teacher = make_teacher(student)
    before = _state(teacher)
    _train_a_bit(student)
    ema_update(teacher, student, decay=1.0)
    for k, t in teacher.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # a counter is copied, never averaged
        assert torch.equal(t, before[k]), k


def test_parameters_and_batchnorm_buffers_are_averaged():
    student = _net()
    teacher = make_teacher(student)
    before = _state(teacher)
    _train_a_bit(student)
    ema_update(teacher, student, decay=0.75)
    after, s = teacher.state_dict(), student.state_dict()
    for k in ("0.weight", "3.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(after[k], 0.75 * before[k] + 0.25 * s[k]), k
    assert not torch.allclose(after["1.running_mean"], before["1.running_mean"])  # it did move


def test_integer_buffers_are_copied_from_student():
    student = _net()
    teacher = make_teacher(student)
    _train_a_bit(student, steps=3)
    ema_update(teacher, student, decay=0.99)
    assert teacher[1].num_batches_tracked.dtype == torch.long
    assert teacher[1].num_batches_tracked.item() == 3 == student[1].num_batches_tracked.item()


def test_no_gradient_ever_reaches_the_teacher():
    student = _net()
    teacher = make_teacher(student)
    x = torch.randn(8, 4)
    loss = (student(x).softmax(-1) - teacher(x).softmax(-1)).pow(2).sum() + teacher(x).sum()
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    ema_update(teacher, student, decay=0.5)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_mismatched_modules_raise():
    student = _net()
    with pytest.raises(ValueError, match="missing"):
        ema_update(make_teacher(student), nn.Sequential(nn.Linear(4, 8)), decay=0.5)
    wider = nn.Sequential(nn.Linear(4, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 3))
    with pytest.raises(ValueError, match="shape"):
        ema_update(make_teacher(student), wider, decay=0.5)
    with pytest.raises(ValueError):
        ema_update(make_teacher(student), student, decay=1.5)


def test_ema_decay_warms_up_then_caps():
    assert ema_decay(0, 0.999) == 0.0  # the first update copies the student
    assert ema_decay(1, 0.999) == 0.5
    assert ema_decay(9, 0.999) == pytest.approx(0.9)
    assert ema_decay(10**6, 0.999) == 0.999
    values = [ema_decay(s, 0.99) for s in range(500)]
    assert values == sorted(values) and max(values) == 0.99
