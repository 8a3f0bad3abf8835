"""The training config against the data's label set: defaults step aside, user settings are checked."""
import json
import subprocess
import sys

import pytest

from flows.core.config import ConfigError
from train.config import for_classes, load_train

DEFAULT = ["BAD", "GOOD", "NEUTRAL"]


def test_the_default_label_set_gets_the_worst_mistake_operating_point():
    cfg = for_classes(load_train(), DEFAULT)
    assert (cfg.positive, cfg.negative) == ("BAD", "GOOD")
    assert cfg.selection == "BAD_recall@GOOD2BAD<=0.05"


@pytest.mark.parametrize("classes", [["NSFW", "SFW"], ["attic", "beach", "forest", "kitchen"], ["BAD", "OK"]])
def test_without_bad_and_good_the_defaults_step_aside(classes):
    cfg = for_classes(load_train(), classes)
    assert (cfg.positive, cfg.negative, cfg.selection) == ("", "", "macro_f1")


def test_a_binary_positive_takes_the_other_class_as_negative_and_case_from_the_data():
    cfg = for_classes(load_train(None, ["positive=nsfw", "threshold_rate=0.02"]), ["NSFW", "SFW"])
    assert (cfg.positive, cfg.negative) == ("NSFW", "SFW")
    assert cfg.selection == "NSFW_recall@SFW2NSFW<=0.02"


def test_an_explicit_selection_and_class_gamma_are_kept_and_canonicalised():
    cfg = for_classes(load_train(None, ["selection=precision:indoor", "class_gamma={INDOOR: 1.0}"]),
                      ["indoor", "outdoor"])
    assert cfg.selection == "precision:indoor" and cfg.class_gamma == {"indoor": 1.0}


@pytest.mark.parametrize("overrides, match", [
    (["positive=BAD"], r"positive='BAD' names a class that is not in the data; classes present: \['NSFW', 'SFW'\]"),
    (["negative=GOOD"], r"negative='GOOD' names a class"),
    (["positive=NSFW", "negative=NSFW"], "must differ"),
    (["negative=SFW", "positive="], "needs positive="),
    (["class_gamma={BAD: 1.0}"], r"class_gamma=\{'BAD': 1.0\} names \['BAD'\], not in the data"),
    (["selection=precision:GOOD"], r"selection='precision:GOOD' names a class"),
    (["selection=bad_recall@good2bad<=0.05"], "selection="),
    (["selection=macro_f2"], "unknown selection criterion"),
    (["cost_worst=9"], "cost_worst=9.0 applies to the worst mistake"),
    (["threshold_rate=0.01"], "threshold_rate"),
    (["zero_shot_prompts={GOOD: a calm photo}"], r"zero_shot_prompts=\{'GOOD': 'a calm photo'\} names \['GOOD'\]"),
])
def test_each_inconsistent_setting_is_refused_naming_key_value_and_classes(overrides, match):
    with pytest.raises(ConfigError, match=match):
        for_classes(load_train(None, overrides), ["NSFW", "SFW"])


def test_positive_among_many_classes_needs_a_negative():
    with pytest.raises(ConfigError, match="needs negative="):
        for_classes(load_train(None, ["positive=beach"]), ["attic", "beach", "forest", "kitchen"])


def test_a_config_file_counts_as_written(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("positive: BAD\nnegative: GOOD\n")
    with pytest.raises(ConfigError, match="positive='BAD'"):
        for_classes(load_train(f), ["NSFW", "SFW"])


def test_sift_train_refuses_before_ray_starts(tmp_path, monkeypatch, capsys):
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["NSFW", "SFW"], "priors": {}}))
    # a real process: exit 2 and one line on stderr
    r = subprocess.run([sys.executable, "-m", "flows.core.cli", "train", "--data", str(tmp_path), "positive=BAD"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "positive='BAD'" in r.stderr and "['NSFW', 'SFW']" in r.stderr

    # the other refusals in this process, with Ray's start made fatal: they come before it
    from flows.core.cli import main
    import train.main

    def no_ray(*_a, **_k):
        raise AssertionError("Ray was started before the inputs were checked")

    monkeypatch.setattr(train.main, "init_ray", no_ray)
    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "home"))
    capsys.readouterr()
    assert main(["train", "--data", str(tmp_path / "nope")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "backbone=tiny", "zero_shot_prompts={NSFW: explicit}"]) == 2
    err = capsys.readouterr().err
    # (the first use of backbone=tiny builds it: transformers' progress bar may precede the one line)
    assert "text tower" in err.splitlines()[-1] and "Traceback" not in err, err
