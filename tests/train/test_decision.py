"""The decision rule on hand-made probabilities (train/decision.py) and its serve-time overrides."""
import numpy as np
import pytest

from train.calibrate import apply_temperature, choose_decision
from train.decision import Decision, OperatingPointKnobs, decide, tau_at_rate

CLASSES = ["BAD", "NEUTRAL", "GOOD"]
BAD, NEUTRAL, GOOD = range(3)
# a worst-mistake operating point as training picks it: BAD needs 0.85, the rest argmax-like
WORST = Decision((0.85, 1 / 3, 1 / 3), fallback=NEUTRAL, positive=BAD, negative=GOOD)


def test_a_confident_bad_that_misses_its_threshold_is_never_good():
    p = np.array([[0.78, 0.07, 0.15]])  # the item of the issue: shown as GOOD 0.15 before
    assert WORST.labels(p)[0].tolist() == [NEUTRAL] and WORST.labels(p)[1].tolist() == [False]
    # without a fallback class the third class takes it, still uncertain
    no_fb = Decision(WORST.thresholds, None, BAD, GOOD)
    assert no_fb.labels(p)[0].tolist() == [NEUTRAL] and not no_fb.labels(p)[1][0]
    # even a tiny GOOD threshold cannot promote GOOD over a more probable BAD
    low_good = Decision((0.85, 1 / 3, 0.05), NEUTRAL, BAD, GOOD)
    assert low_good.predict(p).tolist() == [NEUTRAL]


def test_sure_answers_and_the_fallback():
    p = np.array([[0.90, 0.05, 0.05],   # BAD reaches 0.85
                  [0.10, 0.20, 0.70],   # GOOD reaches 1/3 and is more probable than BAD
                  [0.30, 0.32, 0.38],   # GOOD reaches 1/3
                  [0.32, 0.36, 0.32],   # NEUTRAL reaches 1/3
                  [0.40, 0.28, 0.32]])  # nothing: BAD misses 0.85, GOOD is guarded, NEUTRAL misses
    labels, sure = WORST.labels(p)
    assert labels.tolist() == [BAD, GOOD, GOOD, NEUTRAL, NEUTRAL]
    assert sure.tolist() == [True, True, True, True, False]


def test_binary_without_a_middle_class_takes_the_operating_point():
    d = Decision((0.85, 0.15), None, positive=0, negative=1)  # NSFW / SFW
    labels, sure = d.labels(np.array([[0.9, 0.1], [0.78, 0.22], [0.3, 0.7]]))
    assert labels.tolist() == [0, 1, 1]  # below 0.85 it is SFW: the rate was chosen for that
    assert sure.tolist() == [True, False, True]  # ... but a 0.78 NSFW shown as SFW is flagged uncertain


@pytest.mark.parametrize("seed", range(5))
def test_invariants_on_random_probabilities(seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(4) * 0.7, size=4000)
    t = rng.uniform(0.05, 0.95, 4)
    for fb in (None, 2):
        labels, sure = decide(p, t, fallback=fb, positive=0, negative=3)
        assert np.all(p[labels == 0, 0] >= t[0])  # the positive only at or above its threshold
        assert not np.any((labels == 3) & (p[:, 3] < p[:, 0]))  # the guard (C > 2: never needed)
        assert np.array_equal(sure, ((p >= t) & ~np.c_[np.zeros((len(p), 3), bool), p[:, 3] < p[:, 0]]).any(1))
        if fb is not None:
            assert np.all(labels[~sure] == fb)
        # where some class passes, the label is the one furthest above its threshold among them
        ok = (p >= t)
        ok[:, 3] &= p[:, 3] >= p[:, 0]
        best = np.where(ok, p / t, -np.inf).argmax(1)
        assert np.array_equal(labels[sure], best[sure])
    # without roles, thresholds are argmax of p / t and every item is sure when one passes
    labels, sure = decide(p, t)
    assert np.array_equal(labels, (p / t).argmax(1))
    assert np.array_equal(decide(p, [0.25] * 4)[0], p.argmax(1)) and decide(p, [0.25] * 4)[1].all()


def test_decide_checks_its_inputs():
    with pytest.raises(ValueError, match="thresholds"):
        decide(np.eye(3), [0.5, 0.5])
    with pytest.raises(ValueError, match="> 0"):
        decide(np.eye(3), [0.5, 0.0, 0.5])


def _val(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return apply_temperature(rng.normal(size=(n, 3)) + 1.3 * np.eye(3)[y], 1.0), y


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.03, 0.1])
def test_moving_the_rate_at_serve_time_equals_choosing_it_in_training(rate):
    p, y = _val()
    trained = choose_decision(p, y, CLASSES, positive="BAD", negative="GOOD", max_rate=0.05, fallback="NEUTRAL")
    moved = trained.override(CLASSES, max_rate=rate)
    direct = choose_decision(p, y, CLASSES, positive="BAD", negative="GOOD", max_rate=rate, fallback="NEUTRAL")
    assert moved.thresholds[BAD] == pytest.approx(direct.thresholds[BAD])
    pred = moved.predict(p)
    assert np.mean(pred[y == GOOD] == BAD) <= rate  # the rate holds on the validation items
    assert moved.thresholds[GOOD] == trained.thresholds[GOOD]  # only the positive's threshold moves


def test_tau_at_rate_reads_the_curve():
    curve = {"tau": [0.95, 0.8, 0.65, 0.4, 0.2], "recall": [0, 0.5, 0.5, 1, 1], "rate": [0, 0, 0.5, 0.5, 1]}
    assert tau_at_rate(curve, 0.0) == 0.8  # best recall at no false alarm, the highest such threshold
    assert tau_at_rate(curve, 0.5) == 0.4
    assert tau_at_rate(curve, 1.0) == 0.4  # no extra false alarms for no extra recall
    with pytest.raises(ValueError):
        tau_at_rate({"tau": [], "recall": [], "rate": []}, 0.1)


def test_override_thresholds_fallback_and_errors():
    d = WORST.override(CLASSES, thresholds={"bad": 0.6}, fallback="none")  # class names case-insensitively
    assert d.thresholds == (0.6, 1 / 3, 1 / 3) and d.fallback is None
    assert WORST.override(CLASSES, fallback="GOOD").fallback == GOOD
    with pytest.raises(ValueError, match="UGLY"):
        WORST.override(CLASSES, thresholds={"UGLY": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        WORST.override(CLASSES, thresholds={"BAD": 1.5})
    with pytest.raises(ValueError, match="curve|worst mistake"):
        WORST.override(CLASSES, max_rate=0.01)  # no validation curve recorded
    with pytest.raises(ValueError, match="not a class"):
        WORST.override(CLASSES, fallback="MEH")


def test_from_meta_round_trip_and_describe():
    p, y = _val(1)
    d = choose_decision(p, y, CLASSES, positive="BAD", negative="GOOD", max_rate=0.02, fallback="NEUTRAL")
    meta = {"rule": "worst_mistake", "positive": "BAD", "negative": "GOOD", "fallback": "NEUTRAL",
            "curve": {k: list(v) for k, v in d.curve.items()}}
    back = Decision.from_meta(CLASSES, d.thresholds, meta)
    assert back == d and np.array_equal(back.predict(p), d.predict(p))
    assert back.describe(CLASSES) == {"thresholds": dict(zip(CLASSES, d.thresholds)), "fallback": "NEUTRAL",
                                      "positive": "BAD", "negative": "GOOD"}
    # an older artifact's record (no fallback, no curve) still loads
    old = Decision.from_meta(CLASSES, [0.4, 0.3, 0.3], {"rule": "worst_mistake", "positive": "BAD", "negative": "GOOD"})
    assert (old.fallback, old.positive, old.negative, old.curve) == (None, BAD, GOOD, None)


def test_threshold_keys_on_the_command_line():
    from serve.config import load_serve

    cfg = load_serve(overrides=["threshold_BAD=0.6", "threshold_GOOD=0.4", "max_rate=0.01", "fallback=NEUTRAL"])
    assert cfg.thresholds == {"BAD": 0.6, "GOOD": 0.4}
    assert cfg.operating_point() == {"thresholds": {"BAD": 0.6, "GOOD": 0.4}, "max_rate": 0.01,
                                     "fallback": "NEUTRAL"}
    assert load_serve().operating_point() == {"thresholds": None, "max_rate": None, "fallback": None}
    assert issubclass(type(cfg), OperatingPointKnobs)
