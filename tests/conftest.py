"""Shared fixtures: one Ray per test session (started lazily, only by tests that need it)."""
from __future__ import annotations


import pytest

from flows.runtime import quiet_env  # noqa: E402

quiet_env()  # before anything imports Ray, onnxruntime or Ultralytics


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray shared by the whole session (ray.init costs ~7 s here)."""
    from flows.runtime import init_ray

    ray = init_ray(num_cpus=3)
    yield ray
    ray.shutdown()
