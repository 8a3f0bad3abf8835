"""The label set of a preprocessing run: from the data, fixed by classes=, defaults that step aside."""
import json
import subprocess
import sys

import pytest

from flows.core.config import ConfigError

from flows.ingest.config import load_preprocess
from flows.core.labelset import data_classes, for_input, label_names, resolve


def _tree(root, folders):
    for name in folders:
        (root / name).mkdir(parents=True)
        (root / name / "x.jpg").write_bytes(b"not read here")
    return root


def test_folder_names_are_the_label_set_sorted_and_unlabeled_is_not_a_class(tmp_path):
    _tree(tmp_path, ["SFW", "NSFW", "unlabeled", ".cache", "_meta"])
    (tmp_path / "loose.jpg").write_bytes(b"x")
    assert label_names(tmp_path) == ["NSFW", "SFW"]
    cfg = for_input(load_preprocess(), tmp_path)
    assert cfg.classes == ("NSFW", "SFW")
    assert cfg.noisy_pools == {}  # the default NEUTRAL pool stepped aside


def test_manifest_labels_case_insensitive_first_spelling_wins(tmp_path):
    m = tmp_path / "m.jsonl"
    lines = [{"path": "a.jpg", "label": "outdoor"}, {"path": "b.jpg", "label": "Indoor"},
             {"path": "c.jpg", "label": "OUTDOOR"}, {"path": "d.jpg"}, {"path": "e.jpg", "label": "unlabeled"},
             {"path": "f.jpg", "label": 3}]
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    assert data_classes(label_names(m)) == ("Indoor", "outdoor")


def test_the_default_label_set_keeps_its_noisy_pool(tmp_path):
    _tree(tmp_path, ["BAD", "NEUTRAL", "GOOD"])
    cfg = for_input(load_preprocess(), tmp_path)
    assert cfg.classes == ("BAD", "GOOD", "NEUTRAL")
    assert cfg.prior("NEUTRAL") == pytest.approx([0.30, 0.05, 0.65])  # in the data's class order


def test_classes_fix_the_order_and_a_written_pool_is_kept(tmp_path):
    _tree(tmp_path, ["cat", "dog"])
    cfg = for_input(load_preprocess(None, ["classes=[dog, cat]", "noisy_pools={dog: {dog: 0.8, cat: 0.2}}"]),
                    tmp_path)
    assert cfg.classes == ("dog", "cat") and cfg.prior("dog") == pytest.approx([0.8, 0.2])


@pytest.mark.parametrize("override, match", [
    ("noisy_pools={NEUTRAL: {NEUTRAL: 0.7, NSFW: 0.3}}", r"noisy_pools: NEUTRAL: .* names \['NEUTRAL'\].*\['NSFW', 'SFW'\]"),
    ("noisy_pools={SFW: {SFW: 0.7, BAD: 0.3}}", r"noisy_pools: SFW: .*names \['BAD'\], not in the classes \['NSFW', 'SFW'\]"),
])
def test_a_written_setting_naming_an_absent_class_is_refused(tmp_path, override, match):
    _tree(tmp_path, ["NSFW", "SFW"])
    with pytest.raises(ConfigError, match=match):
        for_input(load_preprocess(None, [override]), tmp_path)


def test_the_same_pool_from_a_config_file_is_refused_too(tmp_path):
    _tree(tmp_path / "data", ["NSFW", "SFW"])
    f = tmp_path / "mine.yaml"
    f.write_text("noisy_pools:\n  NEUTRAL: {NEUTRAL: 1.0}\n")
    with pytest.raises(ConfigError, match="noisy_pools"):
        for_input(load_preprocess(f), tmp_path / "data")


def test_no_labels_at_all_needs_classes():
    with pytest.raises(ConfigError, match="classes="):
        resolve(load_preprocess(), [])
    assert resolve(load_preprocess(None, ["classes=[a, b]"]), []).classes == ("a", "b")


def test_refused_before_ray_starts_in_one_line_with_exit_2(tmp_path):
    _tree(tmp_path / "in", ["NSFW", "SFW"])
    r = subprocess.run([sys.executable, "-m", "flows.core.cli", "preprocess", "--input", str(tmp_path / "in"),
                        "--output", str(tmp_path / "out"), "noisy_pools={NEUTRAL: {NEUTRAL: 1.0}}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "noisy_pools" in r.stderr and "NSFW" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
