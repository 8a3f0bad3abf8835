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
