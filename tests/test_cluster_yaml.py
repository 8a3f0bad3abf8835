"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema, after Ray fills in the
provider's defaults, exactly as ``ray up`` does before it talks to a cloud), shaped as the README
says, and every ``ray job submit ... -- sift X`` in the README names a real subcommand."""
import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _validate(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cfg():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_ray_accepts_it_and_rejects_a_typo(cfg):
    from jsonschema.exceptions import ValidationError

    prepared = _validate(cfg)
    assert set(prepared["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["cpu_worker"]["min_workrs"] = 0
    with pytest.raises(ValidationError, match="min_workrs"):
        _validate(bad)


def test_head_schedules_nothing_and_workers_autoscale_from_zero(cfg):
    nodes = cfg["available_node_types"]
    assert nodes["head"]["resources"] == {"CPU": 0}  # the head runs Ray, MLflow and drivers only
    for name in ("cpu_worker", "gpu_worker"):
        assert nodes[name]["min_workers"] == 0 < nodes[name]["max_workers"] <= cfg["max_workers"]
    assert nodes["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))


def test_token_auth_project_install_and_mlflow_on_the_head(cfg):
    assert any(dst.endswith(".ray/auth_token") for dst in cfg["file_mounts"])
    assert any("make venv" in c for c in cfg["setup_commands"])
    head = " ".join(cfg["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "sift mlflow-server" in head
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"] if "ray start" in c)


def test_every_job_in_the_readme_is_a_sift_subcommand():
    from flows.core.cli import COMMANDS

    jobs = re.findall(r"ray job submit\b[^\n`]*?-- sift ([a-z-]+)", (ROOT / "README.md").read_text())
    assert {"preprocess", "train", "predict", "scan"} <= set(jobs), jobs
    assert set(jobs) <= set(COMMANDS)


def test_nothing_listens_beyond_the_head_without_auth_and_local_state_stays_home(cfg):
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--dashboard-host=0.0.0.0" not in head
    mlflow = next(c for c in cfg["head_start_ray_commands"] if "sift mlflow-server" in c)
    assert "--token-file ~/.ray/auth_token" in mlflow  # 0.0.0.0 is the token proxy, MLflow binds loopback
    assert any("MLFLOW_TRACKING_TOKEN" in c for c in cfg["setup_commands"])
    assert {".sift", ".venv", ".git"} <= set(cfg["rsync_exclude"]) and cfg["rsync_filter"] == [".gitignore"]
