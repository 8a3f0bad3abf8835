import pytest

import dataclasses

from flows.core.config import ConfigError, build, explicit, flat, parse_overrides, replace
from flows.ingest.config import PreprocessConfig, load_preprocess


def test_defaults_load_from_yaml_beside_the_package():
    cfg = load_preprocess()
    assert cfg.classes == ()  # the data says
    assert cfg.noisy_pools["NEUTRAL"]["BAD"] == pytest.approx(0.30)
    cfg = load_preprocess(None, ["classes=[BAD, NEUTRAL, GOOD]"])
    assert cfg.prior("NEUTRAL") == pytest.approx([0.30, 0.65, 0.05])
    assert cfg.prior("GOOD") == [0.0, 0.0, 1.0]


def test_the_yaml_and_the_dataclass_agree_on_every_default():
    from_yaml, bare = load_preprocess(), PreprocessConfig()
    assert dataclasses.asdict(from_yaml) == dataclasses.asdict(bare)


def test_explicit_names_only_what_the_user_wrote(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("short_edge: 336\n")
    cfg = load_preprocess(f, ["max_actors=3"])
    assert explicit(cfg) == {"short_edge", "max_actors"}
    assert explicit(load_preprocess()) == set()
    assert explicit(replace(cfg, min_actors=2)) == {"short_edge", "max_actors"}  # carried over


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_preprocess(None, ["short_edge=336", "classes=[NSFW, SFW]", "noisy_pools={}", "scene_threshold=0.5"])
    assert cfg.short_edge == 336 and cfg.classes == ("NSFW", "SFW") and cfg.scene_threshold == 0.5


def test_unknown_key_is_rejected_with_the_known_keys():
    with pytest.raises(ConfigError, match="unknown key.*short_edg.*known keys"):
        load_preprocess(None, ["short_edg=10"])


@pytest.mark.parametrize("pair, msg", [
    ("short_edge=2", "below the minimum"),
    ("short_edge=abc", "expected an integer"),
    ("max_actors=0", "below the minimum"),
    ("min_quality=95", "min_quality must be <= max_quality"),
    ("noisy_pools={NEUTRAL: {BAD: 0.5}}", "sum to 1"),
    ("classes=[A, unlabeled]", "reserved"),
    ("classes=[A, a]", "unique"),
    ("val_frac=0.9", "val_frac \\+ test_frac"),
])
def test_ranges_and_cross_field_checks(pair, msg):
    overrides = [pair] if "noisy" in pair or "classes" not in pair else [pair, "noisy_pools={}"]
    with pytest.raises(ConfigError, match=msg):
        load_preprocess(None, overrides)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_config_is_frozen_and_flat_for_mlflow():
    cfg = load_preprocess(None, ["classes=[BAD, NEUTRAL, GOOD]"])
    with pytest.raises(Exception):
        cfg.short_edge = 1
    f = flat(cfg)
    assert f["classes"] == "BAD,NEUTRAL,GOOD"
    assert f["noisy_pools.NEUTRAL.BAD"] == pytest.approx(0.3)
    assert all(not isinstance(v, (dict, list, tuple)) for v in f.values())


def test_build_checks_defaults_too():
    assert build(PreprocessConfig, {}).short_edge == 448


def test_knobs_table_lists_every_field_with_its_loaded_default_range_and_help():
    import dataclasses

    from flows.core.knobs import knobs_table
    from train.config import load_train

    cfg = load_train(None, ["epochs=7"])
    table = knobs_table(cfg)
    lines = {line.split()[0]: line for line in table.splitlines()[1:] if not line.startswith("#")}
    assert set(lines) == {f.name for f in dataclasses.fields(cfg)}
    assert lines["epochs"].split()[:4] == ["epochs", "int", "7", "[1,"]  # the loaded value, then the range
    assert "cosine|constant" in lines["lr_schedule"] and "decay over each phase" in lines["lr_schedule"]
    assert ">= -1" in lines["frozen_steps"]


def test_every_stage_prints_its_knobs_before_checking_required_arguments(capsys):
    from flows.core.cli import main

    for stage, knob in (("train", "aug_hue"), ("preprocess", "short_edge"), ("serve", "max_batch_size"),
                        ("predict", "batch_size"), ("scan", "fps"), ("scrape", "robots"), ("tune", "lr")):
        with pytest.raises(SystemExit) as exc:
            main([stage, "--knobs"])  # no --data / --input: --knobs answers first, as --help does
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert f"sift {stage}: every knob" in out and f"\n{knob} " in out, (stage, out[:300])


def test_each_default_is_written_once_on_its_field():
    """Loading a stage's config with no file and no override gives its dataclass's own defaults:
    there is no second place (a defaults YAML) where a default could drift."""
    from flows.ingest.config import PreprocessConfig, load_preprocess
    from flows.scrape.config import ScrapeConfig, load_settings
    from serve.offline.batch.config import PredictConfig, ScanConfig, load_predict, load_scan
    from serve.config import ServeConfig, load_serve
    from train.config import TrainConfig, load_train

    for loaded, cls in ((load_preprocess(), PreprocessConfig), (load_train(), TrainConfig), (load_serve(), ServeConfig),
                        (load_scan(), ScanConfig), (load_predict(), PredictConfig), (load_settings(None, None, [])[0], ScrapeConfig)):
        assert loaded == cls(), cls.__name__


def test_knobs_show_the_comments_written_with_the_fields():
    from flows.core.knobs import knobs_table, source_comments
    from serve.config import load_serve

    notes = source_comments(type(load_serve()))
    block, inline = notes["max_batch_size"]
    assert any("Dynamic batching" in line for line in block)
    assert "503" in notes["max_queued_requests"][1]  # a same-line comment becomes the help text
    table = knobs_table(load_serve())
    assert "# Dynamic batching on the model deployment" in table
    row = next(line for line in table.splitlines() if line.startswith("max_queued_requests "))
    assert "503" in row
