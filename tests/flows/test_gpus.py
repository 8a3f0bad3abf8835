"""use_gpu=auto sees the GPU nodes an autoscaling cluster can add, not only those it has now."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from flows.core.config import ConfigError
from flows.core.gpus import (NodeType, monitor_config_path, node_types_from_groups, node_types_from_yaml,
                             reachable, use_gpu)

ROOT = Path(__file__).resolve().parents[2]
CPU = NodeType("cpu_worker", {"CPU": 16.0}, 10)
GPU = NodeType("gpu_worker", {"CPU": 8.0, "GPU": 1.0}, 2)


@pytest.mark.parametrize("resources, types, expected", [
    ({"CPU": 4.0}, [], False),                                  # a laptop: no GPU, none to come
    ({"CPU": 4.0, "GPU": 1.0}, [], True),                       # a GPU now
    ({"CPU": 0.0}, [CPU, GPU], True),                           # cluster.yaml at rest: a GPU type to add
    ({"CPU": 0.0}, [CPU], False),                               # only CPU types
    ({"CPU": 0.0}, [CPU, NodeType("gpu", {"GPU": 4.0}, 0)], False),  # a GPU type it may not add
    ({"CPU": 0.0}, [NodeType("gpu", {"GPU": 1.0}, -1)], True),  # unbounded (KubeRay maxReplicas unset)
])
def test_auto_counts_gpus_now_and_gpu_types_the_autoscaler_may_add(resources, types, expected):
    assert use_gpu("auto", resources, types) is expected


def test_true_and_false_are_taken_as_given_and_anything_else_is_refused():
    assert use_gpu("true", {}, []) is True  # Ray waits for (or the autoscaler adds) a GPU
    assert use_gpu("false", {"GPU": 8.0}, [GPU]) is False
    with pytest.raises(ConfigError, match="use_gpu='yes'"):
        use_gpu("yes", {}, [])


def test_reachable_adds_every_type_at_its_limit_within_the_cluster_limit():
    assert reachable({"CPU": 0.0}, [CPU, GPU]) == {"CPU": 176.0, "GPU": 2.0}
    assert reachable({"CPU": 2.0}, [CPU, GPU], max_workers=11) == {"CPU": 2.0 + 160 + 8, "GPU": 1.0}
    assert reachable({"CPU": 1.0}, [NodeType("any", {"CPU": 2.0}, -1)]) == {"CPU": 3.0}
    assert reachable({"CPU": 3.0}, []) == {"CPU": 3.0}


def test_the_repositorys_cluster_yaml_reads_as_a_gpu_cluster():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types, limit = node_types_from_yaml(cfg)
    assert {t.name for t in types} == {"cpu_worker", "gpu_worker"} and limit == cfg["max_workers"]
    # `ray up` fills in the instance types' CPUs and GPUs before it writes ~/ray_bootstrap_config.yaml
    # on the head; the decision on that filled-in config:
    filled = {**cfg, "available_node_types": {**cfg["available_node_types"], "gpu_worker": {
        **cfg["available_node_types"]["gpu_worker"], "resources": {"CPU": 8, "GPU": 1}}}}
    assert use_gpu("auto", {"CPU": 0.0}, node_types_from_yaml(filled)[0]) is True


def test_gcs_cluster_config_groups():
    groups = [SimpleNamespace(name="gpu-group", resources={"GPU": 1, "CPU": 8}, max_count=-1)]
    assert node_types_from_groups(groups) == [NodeType("gpu-group", {"GPU": 1.0, "CPU": 8.0}, -1)]


def test_the_monitor_of_this_cluster_names_the_config_file():
    argv = [["/venv/bin/python", "-u", "/x/ray/autoscaler/_private/monitor.py", "--logs-dir=/t",
             "--gcs-address=10.0.0.1:6379", "--autoscaling-config=~/ray_bootstrap_config.yaml"],
            ["/venv/bin/python", "-u", "/x/ray/autoscaler/_private/monitor.py", "--gcs-address=10.0.0.1:7000",
             "--autoscaling-config=/other.yaml"],
            ["/venv/bin/python", "-u", "/x/ray/_private/log_monitor.py", "--gcs-address=10.0.0.1:6379"]]
    assert monitor_config_path("10.0.0.1:6379", argv) == "~/ray_bootstrap_config.yaml"
    assert monitor_config_path("10.0.0.1:7000", argv) == "/other.yaml"
    assert monitor_config_path("10.0.0.1:8000", argv) is None
    assert monitor_config_path("10.0.0.1:6379", argv[2:]) is None  # a monitor without a config: no autoscaler
