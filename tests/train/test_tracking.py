"""Promotion rules against a real SQLite MLflow store (no training needed)."""
import pytest

from train.tracking import SELECTION, promote, use


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFT_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow = use()
    client = mlflow.MlflowClient()
    client.create_registered_model("m")

    def make_run(score):
        with mlflow.start_run() as run:
            mlflow.log_metric(SELECTION, score)
        client.create_model_version("m", source=str(tmp_path), run_id=run.info.run_id)
        return run.info.run_id

    return client, make_run


def test_first_promotion_then_only_better_runs_move_champion(store):
    client, make_run = store
    a, worse, better = make_run(0.5), make_run(0.4), make_run(0.7)
    assert promote(a, "m")[0]
    moved, msg = promote(worse, "m")
    assert not moved and "does not beat" in msg
    assert client.get_model_version_by_alias("m", "champion").run_id == a
    assert promote(better, "m")[0]
    assert client.get_model_version_by_alias("m", "champion").run_id == better
    assert promote(worse, "m", force=True)[0]
    assert client.get_model_version_by_alias("m", "champion").run_id == worse


def test_unknown_run_is_a_clear_error(store):
    from flows.core.errors import SiftError

    with pytest.raises(SiftError, match="no registered version") as exc:
        promote("0" * 32, "m")
    assert exc.value.reason == "no_registered_model"


def test_concurrent_promotions_leave_the_stronger_model_champion(store, monkeypatch):
    """Both promoters read the champion before either sets it (a slow store, forced here): without
    the lock the later writer, the weaker model, would win."""
    import threading
    import time

    import mlflow

    client, make_run = store
    base, strong, weak = make_run(0.5), make_run(0.9), make_run(0.6)
    assert promote(base, "m")[0]
    real = mlflow.MlflowClient.get_model_version_by_alias

    def slow_read(self, name, alias):
        got = real(self, name, alias)
        time.sleep(0.5)  # the window between reading the champion and setting it
        return got

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version_by_alias", slow_read)
    out = {}

    def go(run, delay):
        time.sleep(delay)
        out[run] = promote(run, "m")

    threads = [threading.Thread(target=go, args=(strong, 0.0)), threading.Thread(target=go, args=(weak, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version_by_alias", real)
    assert out[strong][0] and not out[weak][0] and "does not beat" in out[weak][1]
    assert client.get_model_version_by_alias("m", "champion").run_id == strong


def test_a_server_pins_the_version_the_alias_names_at_deploy_time(store):
    from serve.api.app import pinned
    from train.tracking import tracking_uri

    client, make_run = store
    first, second = make_run(0.5), make_run(0.9)
    promote(first, "m")
    uri = tracking_uri()
    assert pinned("models:/m@champion", uri) == "models:/m/1"
    promote(second, "m")
    assert pinned("models:/m@champion", uri) == "models:/m/2"  # a redeploy picks the new one up
    assert pinned("models:/m/1", uri) == "models:/m/1" and pinned("/some/dir", uri) == "/some/dir"
    from flows.core.config import ConfigError
    with pytest.raises(ConfigError, match="no version with alias"):
        pinned("models:/m@nope", uri)
