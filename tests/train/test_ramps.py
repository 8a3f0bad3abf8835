"""Invariants of the ramp schedules (train/ramps.py)."""
import math

import pytest

from train.ramps import cosine_rampdown, linear_rampup, sigmoid_rampup


def test_sigmoid_rampup_endpoints_and_formula():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-5 * 0.25))


def test_sigmoid_rampup_zero_length_is_one():
    assert sigmoid_rampup(0, 0) == 1.0
    assert sigmoid_rampup(7, 0) == 1.0


def test_rampups_clip_past_the_end_and_are_monotone():
    values = [sigmoid_rampup(s, 20) for s in range(30)]
    assert values == sorted(values)
    assert values[-1] == 1.0
    lin = [linear_rampup(s, 20) for s in range(30)]
    assert lin == sorted(lin) and lin[0] == 0.0 and lin[10] == 0.5 and lin[-1] == 1.0
    assert linear_rampup(3, 0) == 1.0


def test_cosine_rampdown_goes_from_one_to_zero():
    assert cosine_rampdown(0, 100) == 1.0
    assert cosine_rampdown(50, 100) == pytest.approx(0.5)
    assert cosine_rampdown(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_rampdown(150, 100) == pytest.approx(0.0, abs=1e-12)  # clipped, not an error


def test_ramps_return_plain_floats():
    for v in (sigmoid_rampup(3, 10), linear_rampup(3, 10), cosine_rampdown(3, 10)):
        assert type(v) is float


def test_bad_lengths_raise():
    with pytest.raises(ValueError):
        sigmoid_rampup(1, -1)
    with pytest.raises(ValueError):
        cosine_rampdown(0, 0)
