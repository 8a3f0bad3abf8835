"""The plots (train/plots.py) write real PNGs, handle 2 to 5 classes and leave no pyplot state."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from train.metrics import confusion
from train.plots import confusion_plot, curves_plot, pr_curves_plot, reliability_plot, runs_comparison_plot


def _data(c, n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2 * np.eye(c)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, y, [f"class{i}" for i in range(c)]


def _check_png(path, min_side=200):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and min(im.size) >= min_side and max(im.size) <= 5000


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    yield
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        assert plt.get_fignums() == []


@pytest.mark.parametrize("c", [2, 5])
def test_class_plots_write_pngs(tmp_path, c):
    probs, y, classes = _data(c)
    cm = confusion(y, probs.argmax(1), c)
    for name, make in [("cm", lambda p: confusion_plot(cm, classes, p, title="val")),
                       ("pr", lambda p: pr_curves_plot(probs, y, classes, p)),
                       ("rel", lambda p: reliability_plot(probs, y, p))]:
        path = tmp_path / "sub" / f"{name}.png"
        fig = make(path)
        assert fig.axes
        _check_png(path)


def test_plots_without_path_return_figure_only(tmp_path):
    probs, y, classes = _data(3)
    fig = pr_curves_plot(probs, y, classes)
    assert len(fig.axes) == 1 and list(tmp_path.iterdir()) == []


def test_class_with_no_items_and_empty_reliability(tmp_path):
    probs, y, classes = _data(3)
    y[y == 2] = 0
    pr_curves_plot(probs, y, classes, tmp_path / "pr.png")
    confusion_plot(confusion(y, probs.argmax(1), 3), classes, tmp_path / "cm.png")
    reliability_plot(np.zeros((0, 3)), np.zeros(0, int), tmp_path / "rel.png")
    for name in ("pr", "cm", "rel"):
        _check_png(tmp_path / f"{name}.png")


def test_curves_plot(tmp_path):
    history = {"train/loss": [(s, 1 / (s + 1)) for s in range(50)],
               "val/loss": [(10, 0.5), (0, 0.9), (20, 0.4)],
               "val/macro_f1": [(0, 0.3), (10, 0.5), (20, float("nan"))], "lr": [(s, 0.1) for s in range(50)],
               "empty": []}
    fig = curves_plot(history, tmp_path / "curves.png", title="run 1")
    assert sorted(ax.get_title() for ax in fig.axes) == ["loss", "lr", "macro_f1"]  # train/val loss share one
    _check_png(tmp_path / "curves.png")
    curves_plot({}, tmp_path / "none.png")
    _check_png(tmp_path / "none.png", min_side=100)


def test_runs_comparison_plot(tmp_path):
    rows = [{"run": "a", "macro_f1": 0.7, "accuracy": 0.8, "BAD_recall_at_GOOD2BAD_le_5": 0.4},
            {"run": "b", "macro_f1": 0.75, "accuracy": None},
            {"run": "c", "macro_f1": float("nan"), "accuracy": 0.85, "BAD_recall_at_GOOD2BAD_le_5": "0.5"}]
    metrics = ["macro_f1", "accuracy", "BAD_recall_at_GOOD2BAD_le_5"]
    fig = runs_comparison_plot(rows, metrics, tmp_path / "runs.png")
    assert len(fig.axes[0].patches) == 6  # one bar per present, finite value
    _check_png(tmp_path / "runs.png")
    runs_comparison_plot([], ["accuracy"], tmp_path / "empty.png")
    _check_png(tmp_path / "empty.png", min_side=100)


def test_import_does_not_load_pyplot():
    code = ("import sys, train.plots, train.metrics, train.calibrate; "
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
