"""The pure side of ``sift tune``: the search space, ASHA's settings, the concurrency budget, the
best trial. Nothing here imports Ray; ``train/tune.py`` turns these into a Ray Tune search.

A search space is YAML, one line per training knob (``train/configs/tune_space.yaml`` is the default)::

    lr: {loguniform: [1.0e-4, 1.0e-2]}
    hidden: {choice: [128, 256]}
"""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from flows.core.config import ConfigError, knob

from .config import CONFIG_DIR, TrainConfig

DEFAULT_SPACE = CONFIG_DIR / "tune_space.yaml"
# kind -> number of arguments (None: a non-empty list of values)
KINDS: dict[str, int | None] = {"loguniform": 2, "uniform": 2, "quniform": 3, "randint": 2,
                                "choice": None, "grid": None}
_WHY = {
    "defines val_selection, the score the trials are compared on": (
        "selection", "positive", "negative", "threshold_rate"),
    "changes the embedding cache the trials share": (
        "backbone", "cache_views", "faces", "face_weights", "face_classes", "face_extra_classes", "face_conf",
        "seed", "image_size", "image_fit", "aug_min_area", "aug_jitter", "aug_saturation"),
    "is ASHA's time budget: set it with epochs=N": ("epochs",),
    "sizes the trials for the concurrency budget: set it with key=value": (
        "num_workers", "cpus_per_worker", "use_gpu", "cache_actors"),
    "is where the trials are tracked and registered: set it with key=value": (
        "experiment", "model_name", "run_name"),
}
FIXED: dict[str, str] = {k: why for why, keys in _WHY.items() for k in keys}
# CPUs left free for the Ray Data tasks that feed the trials (0.1 CPU each: reads, filters)
DATA_HEADROOM_CPUS = 0.5
# what the Tune function trainable itself reserves: it only waits on its TorchTrainer (Ray Data tasks it
# starts leave its placement group; plain tasks would not, and it starts none)
TRIAL_DRIVER_CPUS = 0.01


@dataclasses.dataclass(frozen=True)
class Dim:
    """One dimension of the search: ``knob`` sampled as ``kind(*args)``."""
    knob: str
    kind: str
    args: tuple

    def describe(self) -> str:
        return f"{self.kind}({', '.join(map(str, self.args))})"

    def probes(self) -> tuple:
        """The values that must all be valid for the knob: a range's ends, every listed value."""
        if self.kind in ("choice", "grid"):
            return self.args
        if self.kind == "randint":
            return self.args[0], self.args[1] - 1
        return self.args[0], self.args[1]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How many trials, how many at once, and ASHA's halving (``sift tune --samples ...``)."""
    samples: int = knob(8, lo=1, hi=100_000, help="trials (times the grid's size when the space has grids)")
    max_concurrent: int = knob(0, lo=0, help="trials at once; 0: as many as the cluster's CPUs/GPUs allow")
    grace_period: int = knob(1, lo=1, help="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = knob(2.0, lo=1.01, hi=100.0, help="ASHA keeps the best 1/reduction_factor")


def tunable() -> list[str]:
    """The TrainConfig knobs a space may name: the scalar ones outside ``FIXED``."""
    hints = typing.get_type_hints(TrainConfig)
    return sorted(f.name for f in dataclasses.fields(TrainConfig)
                  if f.name not in FIXED and hints[f.name] in (int, float, bool, str))


def _number(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    return v


def parse_dim(name: str, spec: Any, where: str = "space") -> Dim:
    """``"lr", {"loguniform": [1e-4, 1e-2]}`` -> Dim; ConfigError naming the knob and what is wrong."""
    at = f"{where}: {name}"
    if name not in tunable():
        why = FIXED.get(name)
        if why:
            raise ConfigError(f"{at} cannot be tuned: it {why}")
        raise ConfigError(f"{at} is not a tunable knob; tunable: {tunable()}")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(f"{at}: expected {{kind: [arguments]}} with one kind of {sorted(KINDS)}, got {spec!r}")
    (kind, args), = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{at}: unknown kind {kind!r}; kinds: {sorted(KINDS)}")
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"{at}: {kind} takes a list, got {args!r}")
    n = KINDS[kind]
    if n is None:
        return Dim(name, kind, tuple(args))
    hint = typing.get_type_hints(TrainConfig)[name]
    if hint not in (int, float) or (hint is int and kind in ("uniform", "loguniform")):
        raise ConfigError(f"{at} is {'an integer' if hint is int else 'a ' + hint.__name__} knob: "
                          f"{kind} does not fit it; use {'randint, quniform, ' if hint is int else ''}choice or grid")
    if len(args) != n:
        raise ConfigError(f"{at}: {kind} takes {n} numbers, got {list(args)}")
    nums = tuple(_number(at, v) for v in args)
    lo, hi = nums[0], nums[1]
    if not lo < hi:
        raise ConfigError(f"{at}: {kind} needs lo < hi, got {list(args)}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{at}: loguniform needs lo > 0, got {lo}")
    if kind == "randint" and not all(float(v).is_integer() for v in nums):
        raise ConfigError(f"{at}: randint takes integers, got {list(args)}")
    if kind == "quniform" and not (nums[2] > 0 and (hint is float or float(nums[2]).is_integer())):
        raise ConfigError(f"{at}: quniform's q must be > 0 (an integer for an integer knob), got {nums[2]}")
    return Dim(name, kind, tuple(int(v) for v in nums) if kind == "randint" else nums)


def parse_space(raw: Any, where: str = "space") -> tuple[Dim, ...]:
    """A mapping ``knob: {kind: [arguments]}`` -> the Dims, in the file's order."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: expected a non-empty mapping knob: {{kind: [arguments]}}, got {raw!r}")
    return tuple(parse_dim(str(k), v, where) for k, v in raw.items())


def read_space(path: str | Path | None = None) -> tuple[Dim, ...]:
    """The space in the YAML file ``path`` (default: ``train/configs/tune_space.yaml``)."""
    path = Path(path) if path else DEFAULT_SPACE
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--space {path}: no such file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--space {path}: not readable YAML ({str(exc).splitlines()[0]})") from None
    return parse_space(raw, where=str(path))


def check_values(space: Sequence[Dim], make: Callable[[dict], Any], where: str = "space") -> None:
    """Every probe value of every Dim must make a valid config: ``make({knob: value})`` raises a
    ConfigError otherwise (the training config's ranges, choices and label-set checks)."""
    for dim in space:
        for value in dim.probes():
            try:
                make({dim.knob: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {dim.knob}: {dim.describe()}: {exc}") from None


def asha_settings(epochs: int, search: SearchConfig) -> dict:
    """ASHA's arguments for trials of ``epochs`` epochs, the time unit ASHA counts in.

    Its rungs (grace_period x reduction_factor^k) stay below the last epoch (``max_t = epochs - 1``)
    and ``stop_last_trials`` is off: a trial that reached its last epoch always finishes, so every
    trial that trained to the end is calibrated and registered. With ``epochs <= grace_period`` ASHA
    stops nothing."""
    return {"time_attr": "epoch", "metric": "val_selection", "mode": "max",
            "max_t": max(search.grace_period, epochs - 1), "grace_period": search.grace_period,
            "reduction_factor": search.reduction_factor, "stop_last_trials": False}


def rungs(settings: Mapping) -> list[float]:
    """The epochs at which ASHA compares trials (as its one bracket places them), ascending."""
    n = int(math.log(settings["max_t"] / settings["grace_period"]) / math.log(settings["reduction_factor"]) + 1)
    out = [settings["grace_period"] * settings["reduction_factor"] ** k for k in range(n)]
    return [int(r) if float(r).is_integer() else r for r in out]


def per_trial(num_workers: int, cpus_per_worker: float, gpu: bool) -> dict[str, float]:
    """What one trial holds while it trains: its workers and the Tune trainable that drives them."""
    need = {"CPU": num_workers * cpus_per_worker + TRIAL_DRIVER_CPUS}
    if gpu:
        need["GPU"] = float(num_workers)
    return need


def concurrency(cluster: Mapping[str, float], need: Mapping[str, float], asked: int = 0) -> int:
    """Trials at once: ``asked`` (0: as many as fit), checked against the cluster's resources with
    ``DATA_HEADROOM_CPUS`` left for Ray Data. ConfigError when not even ``asked`` (or one) fits."""
    free = dict(cluster)
    free["CPU"] = free.get("CPU", 0.0) - DATA_HEADROOM_CPUS
    fits = min(int(math.floor(free.get(k, 0.0) / v + 1e-9)) for k, v in need.items() if v > 0)
    shown = ", ".join(f"{v:g} {k}" for k, v in need.items())
    if fits < max(asked, 1):
        raise ConfigError(f"max_concurrent={max(asked, 1)}: each trial needs {shown} and "
                          f"{DATA_HEADROOM_CPUS:g} CPU stays free for Ray Data, but the cluster has "
                          + ", ".join(f"{cluster.get(k, 0.0):g} {k}" for k in need)
                          + f" (at most {max(fits, 0)} at once)")
    return asked or fits


def best_trial(trials: Sequence[Mapping]) -> Mapping | None:
    """The trial whose model is the candidate: the highest ``score`` among those with a registered
    ``version`` (a trial ASHA stopped has none); the earlier one on a tie; None when none has one."""
    done = [t for t in trials if t.get("version") and t.get("score") is not None and math.isfinite(t["score"])]
    return max(done, key=lambda t: t["score"]) if done else None


def varied(trials: Sequence[Mapping], knobs: Sequence[str]) -> list[str]:
    """The knobs whose values differ between trials (each trial maps knob -> value)."""
    return [k for k in knobs if len({repr(t.get(k)) for t in trials}) > 1]


def trials_plot(lines: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str = "",
                best: str = ""):
    """Every trial's val_selection against the step, one line each (``lines``: label -> (step, value)
    pairs; the ``best`` label drawn thicker), written as a PNG to ``path``; returns the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label, pts in lines.items():
        pts = sorted((s, v) for s, v in pts if math.isfinite(s) and math.isfinite(v))
        if pts:
            xs, ys = zip(*pts)
            mark = label == best
            ax.plot(xs, ys, marker="o", lw=3 if mark else 1.2, label=label + ("  (best)" if mark else ""))
    if not lines:
        ax.text(0.5, 0.5, "no trial reported", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("val_selection")
    ax.set_title(title or "trials", fontsize=10)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return fig
