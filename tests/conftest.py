"""Shared fixtures: one Ray per test session (started lazily, only by tests that need it)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("YOLO_OFFLINE", "True")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray shared by the whole session (ray.init costs ~7 s here)."""
    from flows.runtime import init_ray

    ray = init_ray(num_cpus=3)
    yield ray
    ray.shutdown()
