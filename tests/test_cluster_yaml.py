"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema, after Ray fills in the
provider's defaults, exactly as ``ray up`` does before it talks to a cloud), shaped as the README
says, and every ``ray job submit ... -- sift X`` in the README names a real subcommand."""
import copy
import re
import shutil
import subprocess
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


def _ray_rsync_args(cfg: dict) -> list[str]:
    """The filter arguments Ray's SSH command runner puts on its ``rsync -avz`` for file mounts."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    opts = {"rsync_exclude": cfg.get("rsync_exclude"), "rsync_filter": cfg.get("rsync_filter")}
    return SSHCommandRunner._create_rsync_filter_args(None, opts)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync (apt-get install rsync)")
def test_rsync_with_rays_options_leaves_local_state_venv_git_and_caches_home(cfg, tmp_path):
    """The project mount as ``ray up`` syncs it (the head syncs its copy on to each worker the same
    way): real rsync, Ray's own filter arguments, a copy of the project with a populated .venv,
    .sift, .git and caches, at the top and further down."""
    src, dst = tmp_path / "sift", tmp_path / "node"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".sift", ".git", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".ruff_cache", "mlruns"))
    litter = [".venv/bin/python", ".venv/lib/site.py", ".sift/mlflow.db", ".sift/labels.db", ".sift/runs/r/model.pt",
              ".git/HEAD", ".git/objects/ab/cdef", "train/__pycache__/main.cpython-311.pyc", ".pytest_cache/v/x",
              ".ruff_cache/0.6/y", "mlruns/0/meta.yaml", "mlartifacts/1/a.bin", "serve/jobs.db",
              "sift.egg-info/PKG-INFO", "demo/corpus/a.jpg", "serve/.sift/jobs.db", "bench/out/r.json", "x.log"]
    for rel in litter:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("local state")
    p = subprocess.run(["rsync", "-avz", *_ray_rsync_args(cfg), f"{src}/", f"{dst}/"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    arrived = {str(f.relative_to(dst)) for f in dst.rglob("*") if f.is_file()}
    assert not [rel for rel in litter if rel in arrived], sorted(arrived & set(litter))
    assert not any(part in (".venv", ".sift", ".git", "__pycache__") for f in arrived for part in Path(f).parts)
    # ... and the project itself did arrive, whole
    wanted = {"Makefile", "pyproject.toml", "cluster.yaml", "serve/config.yaml", "flows/core/gpus.py",
              "train/configs/tiny.yaml", ".gitignore"}
    assert wanted <= arrived, wanted - arrived
    assert {str(f.relative_to(src)) for f in (src / "flows").rglob("*.py")} <= arrived


def test_gitignore_lists_the_local_state_the_filter_relies_on():
    lines = {ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines()}
    assert {".venv/", ".sift/"} <= lines


def test_gpu_workers_boot_an_image_with_nvidia_drivers_and_the_rest_plain_ubuntu(cfg):
    nodes = cfg["available_node_types"]
    gpu_image = nodes["gpu_worker"]["node_config"]["ImageId"]
    assert "deeplearning" in gpu_image and "nvidia-driver-gpu-ubuntu-22.04" in gpu_image
    for name in ("head", "cpu_worker"):
        assert "canonical/ubuntu/server/22.04" in nodes[name]["node_config"]["ImageId"]
    for node in nodes.values():  # an SSM parameter EC2 resolves at launch, or a pinned id
        assert re.fullmatch(r"resolve:ssm:/aws/service/\S+/ami-id|ami-[0-9a-f]{8,17}", node["node_config"]["ImageId"])


def test_every_node_mounts_shared_storage_and_keeps_sift_home_and_train_results_there(cfg):
    setup = "\n".join(cfg["setup_commands"])
    assert "EFS_ID=fs-REPLACE-ME" in setup and "set EFS_ID" in setup  # a placeholder that stops `ray up`
    assert "mount -t nfs4" in setup and "/mnt/shared" in setup and "mkdir -p /mnt/shared" in setup
    assert "export SIFT_HOME=/mnt/shared/sift" in setup
    # the mount comes before anything that might use it, the exports before Ray starts (setup runs first)
    assert setup.index("mount -t nfs4") < setup.index("make venv")
    # Ray Train's storage_path and Tune's are under SIFT_HOME: on shared storage with it
    for f in ("train/main.py", "train/tune.py"):
        assert re.search(r"storage_path=str\((home|state_dir\(\)) / \"ray_results\"\)", (ROOT / f).read_text()), f
    # MLflow's SQLite store stays on the head's disk, every node finds the server by the head's address
    mlflow = next(c for c in cfg["head_start_ray_commands"] if "sift mlflow-server" in c)
    assert "SIFT_HOME=$HOME/sift/.sift" in mlflow
    assert any("MLFLOW_TRACKING_URI=http://${RAY_HEAD_IP" in c for c in cfg["setup_commands"])


def test_serve_config_args_are_serve_config_keys_with_a_gpu_per_model_replica():
    from serve.config import ServeConfig, from_args

    app = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())["applications"][0]
    args = app["args"]
    assert {"model_gpus", "tracking_uri"} <= set(args) <= {f.name for f in ServeConfig.__dataclass_fields__.values()}
    cfg = from_args(args)
    assert cfg.model_gpus == 1 and cfg.tracking_uri == "" and cfg.min_replicas <= cfg.max_replicas
