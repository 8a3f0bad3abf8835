"""``sift``: --version, each subcommand's usage line, and every command's inputs checked before Ray."""
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from flows.core.cli import COMMANDS, PYPROJECT, main, version

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_installed_version(flag, capsys):
    assert main([flag]) == 0
    assert capsys.readouterr().out == f"sift {metadata.version('sift')}\n"


def test_version_falls_back_to_pyproject_when_not_installed():
    want = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert version("no-such-distribution-sift") == want == metadata.version("sift")


def test_every_subcommand_help_names_sift_and_the_subcommand(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: sift {name} "), (name, out[:120])


def test_python_dash_m_runs_the_same_parser():
    r = subprocess.run([sys.executable, "-m", "flows.corpus", "--help"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: sift make-corpus ")


# Each command with a path that is not there: exit 2, one line on stderr, and Ray never started. Run
# in one fresh interpreter (the imports once; nothing else in it has started Ray), each case timed.
PROBE = r"""
import contextlib, io, json, sys, time
from flows.core.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    ray = sys.modules.get("ray")
    out.append({"argv": argv, "rc": rc, "err": err.getvalue(), "s": time.perf_counter() - t0,
                "ray": bool(ray is not None and hasattr(ray, "is_initialized") and ray.is_initialized())})
print(json.dumps(out))
"""


def test_missing_inputs_fail_in_one_line_before_ray(tmp_path):
    nope, file = tmp_path / "nope", tmp_path / "file.txt"
    file.write_text("x")
    (tmp_path / "folder").mkdir()
    cases = {
        "preprocess": (["--input", str(nope), "--output", str(tmp_path / "o")], f"--input {nope}: no such"),
        "train": (["--data", str(nope)], f"--data {nope}: no manifest.json"),
        "tune": (["--data", str(nope)], f"--data {nope}: no manifest.json"),
        "predict": (["--input", str(nope), "--output", str(tmp_path / "p.parquet")], f"--input {nope}: no such"),
        "scan": ([str(nope / "clip.mp4"), "--output", str(tmp_path / "s")], "clip.mp4: no such file"),
        "serve": ([f"model={nope}"], f"model {nope}: no such folder"),
        "make-corpus": ([str(file / "sub")], "is a file, not a folder"),
        "scrape": (["--config", str(nope / "x.yaml"), "http://127.0.0.1:9/"], "x.yaml: no such file"),
        "classify": ([str(nope)], f"no such file or folder: {nope}"),
        "score-folder": ([str(nope), "--label", "A"], f"folder {nope}: no such folder"),
    }
    more = [  # the model: a local dir that is not there, a registry entry that is not there
        ("predict", ["--input", str(tmp_path / "folder"), "--output", str(tmp_path / "p.parquet"),
                     "--model", str(nope)], f"--model {nope}: no such folder"),
        ("classify", [str(file), "--model", str(nope)], f"--model {nope}: no such folder"),
        ("scan", [str(file), "--output", str(tmp_path / "s"), "--model", "models:/nope@champion"],
         "models:/nope@champion: not in the MLflow registry"),
    ]
    runs = [(name, argv, msg) for name, (argv, msg) in cases.items()] + more
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(SIFT_HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps([[n, *a] for n, a, _ in runs])], capture_output=True,
                       text=True, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert len(got) == len(runs)
    for (name, _, msg), g in zip(runs, got):
        assert g["rc"] == 2, g
        assert g["err"].startswith(f"sift {name}: error: ") and g["err"].count("\n") == 1 and msg in g["err"], g
        assert not g["ray"], g
        assert g["s"] < 60, g  # imports included (torch, MLflow's first store); a Ray start would add more
    assert not (tmp_path / "home" / "ray_results").exists()
