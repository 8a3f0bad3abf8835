"""Booleans from YAML and from key=value: bool knobs and str knobs whose choices spell true and false."""
import dataclasses

import pytest

from flows.core.config import ConfigError, as_bool, build, knob, load
from train.config import load_train


@dataclasses.dataclass(frozen=True)
class Knobs:
    flag: bool = False
    mode: str = knob("auto", choices=("auto", "yes", "no"))  # spelled yes/no: True lands on "yes"
    fit: str = knob("crop", choices=("crop", "pad"))  # not boolean-looking: a bool stays refused


@pytest.mark.parametrize("text, want", [("true", "true"), ("True", "true"), ("yes", "true"), ("on", "true"),
                                        ("1", "true"), ("false", "false"), ("no", "false"), ("off", "false"),
                                        ("0", "false"), ("auto", "auto")])
def test_use_gpu_from_yaml_and_from_key_value(tmp_path, text, want):
    f = tmp_path / "train.yaml"
    f.write_text(f"use_gpu: {text}\n")  # YAML 1.1: true/yes/on are bools, 1 an int, "True" a bool
    from_yaml, from_pair = load_train(f), load_train(None, [f"use_gpu={text}"])
    assert from_yaml.use_gpu == from_pair.use_gpu == want
    assert isinstance(from_yaml.use_gpu, str)
    f.write_text(f"use_gpu: '{text}'\n")  # a quoted string means the same
    assert load_train(f).use_gpu == want


def test_use_gpu_still_refuses_what_is_not_a_choice():
    for bad in ("maybe", "2", "[true]"):
        with pytest.raises(ConfigError, match="use_gpu"):
            load_train(None, [f"use_gpu={bad}"])


@pytest.mark.parametrize("text, want", [("true", True), ("yes", True), ("on", True), ("1", True), ("TRUE", True),
                                        ("'yes'", True), ("false", False), ("no", False), ("0", False),
                                        ("'Off'", False)])
def test_bool_knobs_take_yaml_bools_and_words(tmp_path, text, want):
    f = tmp_path / "k.yaml"
    f.write_text(f"flag: {text}\n")
    assert load(Knobs, f).flag is want
    assert load(Knobs, None, [f"flag={text}"]).flag is want
    assert load_train(None, [f"mean_teacher={text}"]).mean_teacher is want


def test_other_values_are_still_refused_with_the_key_named():
    for bad in ("2", "maybe", "0.5", "[1]"):
        with pytest.raises(ConfigError, match="flag: expected true/false"):
            load(Knobs, None, [f"flag={bad}"])
    with pytest.raises(ConfigError, match="fit: expected a string, got True"):
        build(Knobs, {"fit": True})


def test_a_boolean_looking_choice_is_returned_as_its_choice_spelling():
    assert build(Knobs, {"mode": True}).mode == "yes"
    assert build(Knobs, {"mode": "off"}).mode == "no"
    assert build(Knobs, {"mode": 1}).mode == "yes"
    assert build(Knobs, {"mode": "auto"}).mode == "auto"


def test_as_bool():
    assert [as_bool(v) for v in (True, False, 1, 0, "Yes", " off ", "1")] == [True, False, True, False, True, False, True]
    assert [as_bool(v) for v in (2, "maybe", None, 0.5, "")] == [None] * 5
