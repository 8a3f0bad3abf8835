"""``use_gpu=auto|true|false``: does this run ask Ray for GPUs?

``auto`` means GPUs when the cluster has some *or can get some*: on an autoscaling cluster (the
``cluster.yaml`` shape) the GPU worker type has 0 nodes until something asks for a GPU, so looking at
``ray.cluster_resources()`` alone would train on CPU forever on a cluster built for GPUs. The node
types the autoscaler may launch come from, in this order:

1. the cluster config the autoscaler reported to the GCS (``node_group_configs``, what Ray Train's
   own "can this worker group ever fit" check reads; reported by newer autoscalers and KubeRay);
2. the autoscaling config file of this cluster's monitor (``ray start --head --autoscaling-config=F``,
   found from the monitor process on this node; ``ray up`` writes ``~/ray_bootstrap_config.yaml``
   with the node types' resources already filled in from the instance types), then that default path.

The decision and the reading of both formats are pure functions; :func:`cluster_view` is the thin Ray
shell and never fails a job: whatever it cannot read counts as "no node types" (current resources only).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from flows.core.config import ConfigError

CHOICES = ("auto", "true", "false")
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the cluster config on the head
UNBOUNDED = -1  # max_workers / max_count of a node type without a limit


@dataclasses.dataclass(frozen=True)
class NodeType:
    """A kind of node the autoscaler may add: its resources per node and how many it may run."""

    name: str
    resources: Mapping[str, float]
    max_workers: int  # UNBOUNDED: no limit of its own

    @property
    def can_add(self) -> bool:
        return self.max_workers != 0


def use_gpu(knob: str, resources: Mapping[str, float], node_types: Sequence[NodeType] = ()) -> bool:
    """``true``/``false`` as given; ``auto``: a GPU in ``resources`` (the cluster now) or a node type
    with a GPU that the autoscaler may add (``max_workers`` != 0). ConfigError for any other knob."""
    if knob not in CHOICES:
        raise ConfigError(f"use_gpu={knob!r}: expected one of {list(CHOICES)}", reason="bad_config")
    if knob != "auto":
        return knob == "true"
    return resources.get("GPU", 0) > 0 or any(t.can_add and t.resources.get("GPU", 0) > 0 for t in node_types)


def reachable(resources: Mapping[str, float], node_types: Sequence[NodeType],
              max_workers: int = UNBOUNDED) -> dict[str, float]:
    """What the cluster can grow to: ``resources`` (now) plus every node type at its ``max_workers``
    (a type without a limit counts once: at least one such node fits). ``max_workers`` (the cluster's
    own limit on all workers together) caps the count of added nodes, spent in the types' order."""
    out = dict(resources)
    budget = max_workers if max_workers >= 0 else None
    for t in node_types:
        n = 1 if t.max_workers == UNBOUNDED else max(t.max_workers, 0)
        if budget is not None:
            n, budget = min(n, budget), budget - min(n, budget)
        for k, v in t.resources.items():
            out[k] = out.get(k, 0.0) + n * float(v)
    return out


def node_types_from_yaml(cfg: Mapping) -> tuple[list[NodeType], int]:
    """The worker node types of a cluster-launcher config (``cluster.yaml``, ``ray_bootstrap_config.yaml``,
    a fake multinode config) and its global ``max_workers`` (UNBOUNDED when absent). The head type is
    left out: it is there already, its resources are in the current ones."""
    head = cfg.get("head_node_type")
    types = [NodeType(str(name), {k: float(v) for k, v in (t.get("resources") or {}).items()},
                      int(t.get("max_workers", 0)))
             for name, t in (cfg.get("available_node_types") or {}).items() if name != head]
    return types, int(cfg.get("max_workers", UNBOUNDED))


def node_types_from_groups(groups: Iterable) -> list[NodeType]:
    """Node types from the GCS ``ClusterConfig.node_group_configs`` (objects with ``name``,
    ``resources`` (name -> amount) and ``max_count``, -1 = unbounded)."""
    return [NodeType(str(g.name), {k: float(v) for k, v in dict(g.resources).items()}, int(g.max_count))
            for g in groups]


def monitor_config_path(gcs_address: str, processes: Iterable[Sequence[str]]) -> str | None:
    """The ``--autoscaling-config`` of the autoscaler monitor of the cluster at ``gcs_address``, from
    the command lines of this node's processes; None when none is found."""
    for argv in processes:
        if not any("monitor.py" in a for a in argv[:3]) or f"--gcs-address={gcs_address}" not in argv:
            continue
        for a in argv:
            if a.startswith("--autoscaling-config="):
                return a.split("=", 1)[1]
    return None


def _command_lines() -> list[list[str]]:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            out.append(list(p.info["cmdline"] or []))
        except psutil.Error:
            continue
    return out


def _from_gcs() -> tuple[list[NodeType], int] | None:
    from ray._private.state import state  # Ray Train's own source of the node types (no public API in 2.60)

    config = state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return node_types_from_groups(config.node_group_configs), UNBOUNDED


def _from_file(gcs_address: str) -> tuple[list[NodeType], int] | None:
    import yaml

    for path in (monitor_config_path(gcs_address, _command_lines()), BOOTSTRAP_CONFIG):
        if path and (p := Path(os.path.expanduser(path))).is_file():
            return node_types_from_yaml(yaml.safe_load(p.read_text()) or {})
    return None


def cluster_view() -> tuple[dict[str, float], list[NodeType], int]:
    """(current resources, node types the autoscaler may add, cluster max_workers) of the connected
    Ray. Never raises past the current resources: a lookup that fails means no node types."""
    import ray

    resources = dict(ray.cluster_resources())
    for lookup in (_from_gcs, lambda: _from_file(ray.get_runtime_context().gcs_address)):
        try:
            found = lookup()
        except Exception:  # a diagnostic lookup: never the reason a job fails
            found = None
        if found:
            return resources, *found
    return resources, [], UNBOUNDED


def resolve_use_gpu(knob: str) -> bool:
    """:func:`use_gpu` on the connected cluster (Ray initialised)."""
    if knob != "auto":
        return use_gpu(knob, {})
    resources, types, _ = cluster_view()
    return use_gpu(knob, resources, types)
