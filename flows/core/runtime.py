"""Starting or joining Ray, the same way for every stage.

Inside ``ray job submit`` (or with ``RAY_ADDRESS`` set) we join that cluster; otherwise we start a
local Ray with twice as many logical CPUs as cores. Two measured reasons: a pool of two 1-CPU actors
plus a 0.1-CPU write task never gets scheduled on exactly 2 logical CPUs (Ray Data then waits forever
without an error); and Ray Data's resource allocator reserves part of the CPU budget for each
downstream operator, so with cores + 1 the preprocessing pool never grows past one actor (measured:
pool sizes [1] and 77 s for 300 images at 3 logical CPUs; [1, 2] and 39 s at 4).
"""
from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Where sift keeps its local state (MLflow store, caches, label store): ``$SIFT_HOME`` or ./.sift.

    Lives in flows (not train) because the label store in :mod:`flows.core.labels` needs it and flows
    never imports train; ``train.config.state_dir`` is this function.
    """
    return Path(os.environ.get("SIFT_HOME", ".sift")).resolve()


def quiet_env() -> None:
    """Environment every sift process wants before Ray, MLflow or Ultralytics start."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime's first import
    # Ray Data 2.60's parquet datasource v2 starts fresh "FooterReader" actors on every read,
    # 3-10 s per dataset execution here (each imports pydantic & co.); v1 reads the same in 0.3 s.
    os.environ.setdefault("RAY_DATA_USE_DATASOURCE_V2", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def local_cpus() -> int:
    """Logical CPUs for a local Ray: 2 x cores (see module docstring)."""
    return 2 * (os.cpu_count() or 1)


def quiet_worker() -> None:
    """Setup hook of every worker of a local Ray. Without a dashboard there is no state API, so Ray
    Train's PlacementGroupCleaner fails its liveness query once a second for the whole fit and logs a
    warning each time (dozens of identical lines in the middle of the training log). Its job, removing
    a dead controller's placement group, is done anyway when the local Ray ends with this process."""
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def init_ray(num_cpus: int | None = None, quiet: bool = True):
    """Join the cluster in ``RAY_ADDRESS`` (set by ``ray job submit``) or start a local Ray."""
    quiet_env()
    import ray

    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": "WARNING", "log_to_driver": True} if quiet else {}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or local_cpus(), include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": "flows.core.runtime.quiet_worker"}, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.print_on_execution_start = False
    ctx.use_datasource_v2 = os.environ["RAY_DATA_USE_DATASOURCE_V2"] not in ("0", "false", "False")
    return ray
