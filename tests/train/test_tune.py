"""``sift tune``: the space, ASHA's settings, the budget and the best trial without Ray; then ASHA's
wiring on scripted trials. The real two-trial search of Ray Train runs nested in MLflow runs as a job on a
multi-node cluster: tests/test_cluster_jobs.py."""
import json
from types import SimpleNamespace

import pytest

from flows.core.config import ConfigError
from train import search
from train.config import CONFIG_DIR, load_train


def _space(text, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return search.read_space(path)


def test_a_space_file_parses_every_kind(tmp_path):
    space = _space("lr: {loguniform: [1.0e-4, 1.0e-2]}\ndropout: {uniform: [0.0, 0.3]}\n"
                   "frozen_steps: {randint: [0, 100]}\nhidden: {choice: [128, 256]}\n"
                   "consistency: {grid: [mse, kl]}\nconsistency_rampup: {quniform: [0, 300, 50]}\n", tmp_path)
    assert [(d.knob, d.kind) for d in space] == [("lr", "loguniform"), ("dropout", "uniform"),
                                                 ("frozen_steps", "randint"), ("hidden", "choice"),
                                                 ("consistency", "grid"), ("consistency_rampup", "quniform")]
    assert space[0].args == (1e-4, 1e-2) and space[0].describe() == "loguniform(0.0001, 0.01)"
    assert space[2].probes() == (0, 99)  # randint's upper end is excluded
    assert space[3].probes() == (128, 256)


@pytest.mark.parametrize("text, message", [
    ("lrr: {uniform: [0.1, 0.2]}", "lrr is not a tunable knob; tunable: ["),
    ("epochs: {choice: [1, 2]}", "epochs cannot be tuned: it is ASHA's time budget"),
    ("selection: {choice: [macro_f1, accuracy]}", "selection cannot be tuned: it defines val_selection"),
    ("num_workers: {choice: [1, 2]}", "num_workers cannot be tuned: it sizes the trials"),
    ("lr: {normal: [0.1, 0.2]}", "unknown kind 'normal'"),
    ("lr: 0.01", "expected {kind: [arguments]}"),
    ("lr: {uniform: [0.1, 0.2], choice: [1]}", "expected {kind: [arguments]}"),
    ("lr: {uniform: [0.1]}", "uniform takes 2 numbers"),
    ("lr: {uniform: [0.2, 0.1]}", "needs lo < hi"),
    ("lr: {loguniform: [0, 0.1]}", "loguniform needs lo > 0"),
    ("lr: {uniform: [a, 0.1]}", "expected a number"),
    ("lr: {choice: []}", "choice takes a list"),
    ("hidden: {uniform: [64, 512]}", "hidden is an integer knob: uniform does not fit it"),
    ("hidden: {quniform: [64, 512, 0.5]}", "an integer for an integer knob"),
    ("mean_teacher: {uniform: [0, 1]}", "mean_teacher is a bool knob"),
    ("[lr, hidden]", "expected a non-empty mapping"),
    ("", "expected a non-empty mapping"),
    ("lr: {uniform: [0.1, 0.2]", "not readable YAML"),
])
def test_space_errors_name_the_knob_and_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        _space(text, tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_space_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        search.read_space(tmp_path / "nope.yaml")


def test_the_default_space_is_valid_for_the_default_and_tiny_recipes():
    space = search.read_space()
    assert {"lr", "backbone_lr", "frozen_steps", "consistency_weight", "ema_decay", "label_smoothing",
            "dropout", "hidden"} == {d.knob for d in space}
    for base in (None, CONFIG_DIR / "tiny.yaml"):
        search.check_values(space, lambda extra: load_train(base, extra))


def test_values_outside_a_knobs_range_are_refused_before_ray(tmp_path):
    space = _space("dropout: {uniform: [0.0, 0.95]}", tmp_path)
    with pytest.raises(ConfigError, match=r"space: dropout: uniform\(0.0, 0.95\): dropout: 0.95 is above the max"):
        search.check_values(space, lambda extra: load_train(None, extra))


def test_asha_rungs_stay_below_the_last_epoch():
    s = search.asha_settings(10, search.SearchConfig(grace_period=1, reduction_factor=2.0))
    assert s == {"time_attr": "epoch", "metric": "val_selection", "mode": "max", "max_t": 9, "grace_period": 1,
                 "reduction_factor": 2.0, "stop_last_trials": False}
    assert search.rungs(s) == [1, 2, 4, 8]
    assert search.rungs(search.asha_settings(2, search.SearchConfig())) == [1]
    # as Ray's own bracket places them
    from ray.tune.schedulers.async_hyperband import _Bracket

    assert sorted(m for m, _ in _Bracket(1, 9, 2.0, 0, False)._rungs) == [1, 2, 4, 8]
    assert search.asha_settings(1, search.SearchConfig(grace_period=3))["max_t"] == 3  # nothing to stop


def test_concurrency_fits_the_cluster():
    one = search.per_trial(1, 1.0, gpu=False)
    assert one == {"CPU": 1.0 + search.TRIAL_DRIVER_CPUS}
    assert search.concurrency({"CPU": 4.0}, one) == 3  # 0.5 CPU stays free for Ray Data
    assert search.concurrency({"CPU": 4.0}, one, asked=2) == 2
    assert search.concurrency({"CPU": 64.0, "GPU": 4.0}, search.per_trial(2, 4.0, gpu=True)) == 2
    with pytest.raises(ConfigError, match=r"max_concurrent=4: each trial needs 1.01 CPU .* \(at most 3 at once\)"):
        search.concurrency({"CPU": 4.0}, one, asked=4)
    with pytest.raises(ConfigError, match="at most 0 at once"):
        search.concurrency({"CPU": 2.0}, search.per_trial(2, 1.0, gpu=False))


def test_the_best_trial_is_the_best_registered_one():
    trials = [{"trial": "a", "score": 0.9, "version": ""},         # stopped: no model
              {"trial": "b", "score": 0.5, "version": "3"},
              {"trial": "c", "score": float("nan"), "version": "4"},
              {"trial": "d", "score": 0.7, "version": "5"},
              {"trial": "e", "score": 0.7, "version": "6"}]
    assert search.best_trial(trials)["trial"] == "d"  # the earlier one on a tie
    assert search.best_trial(trials[:1]) is None
    assert search.varied([{"lr": 1, "hidden": 8}, {"lr": 2, "hidden": 8}], ["lr", "hidden"]) == ["lr"]


def test_runs_shows_a_searchs_trials_with_their_status_and_varied_knobs():
    import pandas as pd

    from train.runs import compare, trial_metrics

    runs = pd.DataFrame({"tags.mlflow.runName": ["t-1", "t-2"], "run_id": ["a" * 32, "b" * 32],
                         "status": ["FINISHED", "KILLED"], "params.classes_list": ["BAD,GOOD"] * 2,
                         "params.selection": ["macro_f1"] * 2, "params.run_name": ["t-1", "t-2"],
                         "params.lr": ["0.003", "1e-07"], "params.hidden": ["128", "128"],
                         "metrics.best_val_selection": [0.4, None], "metrics.epoch": [2.0, 2.0],
                         "metrics.test_macro_f1": [0.5, None], "metrics.val_selection": [0.3, 0.2]})
    assert trial_metrics(runs) == ["best_val_selection", "epoch", "test_macro_f1"]
    table = compare(runs, trial_metrics(runs), extra=("status",))
    assert list(table.columns) == ["run", "run_id", "status", "classes", "selection", "best_val_selection", "epoch",
                                   "test_macro_f1", "lr"]  # the run's name once; only the knob that varied
    assert list(table.status) == ["FINISHED", "KILLED"]


def test_bad_inputs_exit_2_before_ray_starts(tmp_path, monkeypatch, capsys):
    from flows.core.cli import main as sift
    from train import tune

    monkeypatch.setattr(tune, "execute", lambda *a, **k: pytest.fail("Ray must not start"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"classes": ["BAD", "GOOD", "NEUTRAL"]}))
    (tmp_path / "bad.yaml").write_text("learning_rate: {uniform: [0.1, 0.2]}\n")
    cases = [(["--data", str(tmp_path / "nowhere")], "no manifest.json"),
             (["--data", str(tmp_path / "data"), "--space", str(tmp_path / "bad.yaml")], "learning_rate is not"),
             (["--data", str(tmp_path / "data"), "--space", str(tmp_path / "none.yaml")], "no such file"),
             (["--data", str(tmp_path / "data"), "--samples", "0"], "samples: 0 is below the minimum 1"),
             (["--data", str(tmp_path / "data"), "hiden=3"], "unknown key(s) ['hiden']")]
    for argv, message in cases:
        assert sift(["tune", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sift tune: error: ") and message in err and err.count("\n") == 1, err


def test_plan_reads_everything_before_ray(tmp_path):
    from train.tune import plan

    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["BAD", "GOOD", "NEUTRAL"]}))
    args = SimpleNamespace(data=str(tmp_path), config=str(CONFIG_DIR / "tiny.yaml"), space=None, samples=3,
                           max_concurrent=None, grace_period=2, reduction_factor=None, overrides=["epochs=4"])
    p = plan(args)
    assert p.cfg.epochs == 4 and p.cfg.backbone == "tiny" and p.overrides == {"epochs": 4}
    assert p.settings == search.SearchConfig(samples=3, max_concurrent=0, grace_period=2, reduction_factor=2.0)
    assert [d.knob for d in p.space] == [d.knob for d in search.read_space()]


@pytest.mark.slow
def test_asha_stops_the_weaker_of_scripted_trials(ray_session, sift_home, tmp_path):
    """The real Tuner of ``sift tune`` (ASHA, the concurrency limit) over a trainable that reports
    scripted scores: run one at a time, the weaker trial stops at the rung, the other runs to the end."""
    import ray.tune

    from train.tune import Plan, tuner

    def scripted(config, job):
        for epoch in range(1, job["epochs"] + 1):
            ray.tune.report({"epoch": epoch, "step": 3 * epoch, "val_selection": config["lr"] * 100 + epoch})

    cfg = load_train(CONFIG_DIR / "tiny.yaml", {"epochs": 3})
    space = _space("lr: {grid: [0.005, 0.001]}", tmp_path)  # the stronger one runs first
    p = Plan(cfg, None, {}, tmp_path, space, search.SearchConfig(samples=1, grace_period=1))
    job = {"name": "scripted", "epochs": 3}
    results = tuner(p, job, concurrent=1, fn=scripted).fit()
    epochs = {r.config["lr"]: int(r.metrics["epoch"]) for r in results}
    assert epochs == {0.005: 3, 0.001: 1}  # rungs at epochs [1, 2]; the last epoch is never cut
