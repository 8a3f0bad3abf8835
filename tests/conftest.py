"""Shared fixtures: one Ray per test session (started lazily, only by tests that need it)."""
from __future__ import annotations


import os
import sys

import pytest

from flows.core.runtime import quiet_env

quiet_env()  # before anything imports Ray, onnxruntime or Ultralytics

# Under pytest-xdist (`TEST_WORKERS=N make test`) each worker is its own session with its own
# Ray and its own state dir: two tests never build the same backbone or write the same MLflow store.
if os.environ.get("PYTEST_XDIST_WORKER") and "SIFT_HOME" not in os.environ:
    import tempfile

    os.environ["SIFT_HOME"] = tempfile.mkdtemp(prefix=f"sift-{os.environ['PYTEST_XDIST_WORKER']}-")

# Tests that use these session fixtures share one trained model (and its deployed app): their modules
# are one group, so that one worker trains it.
SHARED = ("trained", "server")
# The two longest groups (about 12 and 20 minutes run one after the other): under xdist they go first,
# one to each worker, and the short ones fill in around them.
FIRST = ("tests.test_cluster_jobs", "trained")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's loadgroup: a module's tests stay on one worker (its module fixtures
    are built once), the modules that use the shared trained model are one group. xdist hands the
    groups out in the order of the items."""
    shared = {it.module.__name__ for it in items if any(f in it.fixturenames for f in SHARED)}
    group = {it: "trained" if it.module.__name__ in shared else it.module.__name__ for it in items}
    for item, name in group.items():
        item.add_marker(pytest.mark.xdist_group(name))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # stable: each group keeps its collection order
        items.sort(key=lambda it: FIRST.index(group[it]) if group[it] in FIRST else len(FIRST))


@pytest.fixture(autouse=True)
def _mlflow_uri_stays_put():
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; undo that after each test so one
    test's private store never becomes the next test's default."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        if "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(before)


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray shared by the whole session (ray.init costs ~7 s here)."""
    from flows.core.runtime import init_ray

    ray = init_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sift_home(tmp_path_factory):
    """A private state dir (MLflow SQLite store, caches, runs) for the whole session."""
    home = tmp_path_factory.mktemp("sift_home")
    old = os.environ.get("SIFT_HOME")
    os.environ["SIFT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("SIFT_HOME", None)
    else:
        os.environ["SIFT_HOME"] = old


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, ray_session):
    """A small generated corpus, preprocessed once: ``(corpus_dir, data_dir, manifest)``."""
    from flows.ingest.config import load_preprocess
    from flows.corpus import make_corpus
    from flows.ingest.preprocess import run

    root = tmp_path_factory.mktemp("prep")
    make_corpus(root / "corpus", images=120, videos=2, seed=7, workers=1, progress=False)
    cfg = load_preprocess(None, ["video_keyframes=3", "batch_size=16"])
    manifest = run(root / "corpus", root / "data", cfg)
    return root / "corpus", root / "data", manifest


@pytest.fixture(scope="session")
def trained(preprocessed, sift_home):
    """A tiny model trained for a few steps on Ray Train into the session's SQLite MLflow."""
    from train.config import CONFIG_DIR, load_train
    from train.main import run

    _, data, _ = preprocessed
    cfg = load_train(CONFIG_DIR / "tiny.yaml", ["epochs=1", "steps_per_epoch=2", "frozen_steps=1",
                                                "early_stop=0", "run_name=test-run", "calibration_folds=5",
                                                "cache_local_max=0"])  # the actor pool's cache pass
    return run(cfg, data)
