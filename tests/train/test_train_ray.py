"""Training end to end: real Ray Train, real SQLite MLflow store, the tiny model."""
import pytest


@pytest.mark.slow
def test_train_registers_a_candidate_with_metrics_plots_and_a_loadable_model(trained, sift_home):
    from train.artifact import SiftModel
    from train.tracking import SELECTION, use

    s = trained
    assert s["run_id"] and s["version"] and len(s["thresholds"]) == 3
    mlflow = use()
    assert mlflow.get_tracking_uri().startswith("sqlite:///") and str(sift_home) in mlflow.get_tracking_uri()
    client = mlflow.MlflowClient()
    run = client.get_run(s["run_id"])
    assert run.data.params["backbone"] == "tiny" and run.data.params["mean_teacher"] == "True"
    assert SELECTION in run.data.metrics and "test_macro_f1" in run.data.metrics
    # the run's latest selection score is the best epoch's (what promotion compares)
    assert run.data.metrics[SELECTION] == pytest.approx(run.data.metrics["best_val_selection"])
    assert run.data.metrics[SELECTION] == pytest.approx(max(  # "better" needs a 1e-4 relative gain
        m.value for m in client.get_metric_history(s["run_id"], SELECTION)), rel=1e-3)
    assert any(k.startswith("train_loss") for k in run.data.metrics)
    assert run.data.metrics["corrections_used"] == 0  # no label store: nothing corrected (tests/train/test_mlflow_server.py)
    history = client.get_metric_history(s["run_id"], "train_loss")
    assert history  # per-epoch metric recorded with its step
    plots = {a.path for a in client.list_artifacts(s["run_id"], "plots")}
    assert {"plots/confusion_test.png", "plots/curves.png"} <= plots
    # the NEUTRAL noisy pool's mix, estimated from its held-out items, next to the prior
    mix = s["noisy_pools"]["NEUTRAL"]
    assert mix["n"] > 0 and set(mix["estimate"]) == {"BAD", "GOOD", "NEUTRAL"}
    assert mix["prior"] == {"BAD": 0.30, "GOOD": 0.05, "NEUTRAL": 0.65}
    assert sum(mix["estimate"].values()) == pytest.approx(1.0, abs=1e-3)
    assert run.data.metrics["noisy_NEUTRAL_distance"] == pytest.approx(mix["distance"])
    assert "noisy_pools.json" in {a.path for a in client.list_artifacts(s["run_id"])}
    mv = client.get_model_version_by_alias("sift-classifier", "candidate")
    assert mv.run_id == s["run_id"]
    # the artifact is self-describing and loads back
    model = SiftModel(s["model"])
    assert model.classes == ["BAD", "GOOD", "NEUTRAL"] and model.detector is not None
    assert model.meta["faces"]["face_classes"] == ["FACE_FEMALE", "FACE_MALE"]
    # the colour-statistics branch (on by default) travels in the artifact
    from train.colour import DIM

    assert model.meta["colour_stats"] is True and model.model.embed_dim == model.model.backbone.dim + DIM
    # a thin clean val split: the operating point also rests on cross-fitted clean training items,
    # counted in the summary, the artifact and MLflow
    assert min(s["calibration_items"][c] for c in model.classes) < 30
    cv = s["crossfit_items"]
    assert cv["total"] >= 10 and model.meta["decision"]["crossfit"] == {"folds": 5, "items": cv}
    assert run.data.metrics["calibration_cv_n_total"] == cv["total"]
    # the ONNX graphs travel in the artifact, measured on the val split, the numbers in MLflow too
    rt = model.meta["runtimes"]
    import pyarrow.dataset as pads

    splits = pads.dataset(f"{run.data.params['data']}/data", format="parquet").to_table(columns=["split"])
    n_val = splits.column("split").to_pylist().count("val")
    for name in ("onnx", "onnx-int8"):
        assert (model.path / rt[name]["file"]).exists() and rt[name]["n"] == n_val > 0
        key = name.replace("-", "_")
        assert run.data.metrics[f"export_{key}_agreement"] == pytest.approx(rt[name]["agreement"])
        assert run.data.metrics[f"export_{key}_max_prob_diff"] == pytest.approx(rt[name]["max_prob_diff"])
    assert rt["onnx"]["agreement"] == 1.0
    assert model.runtime in ("onnx", "onnx-int8") and model.runtime_reason.startswith("auto")
    from train.tracking import resolve_model

    got, _, _ = resolve_model(f"models:/sift-classifier/{s['version']}")
    assert (got / rt["onnx-int8"]["file"]).exists()
    # the registered model stands alone: sift's code and the pinned requirements of what it loads
    # (a face detector and ONNX graphs here) travel with it (tests/train/test_portable_model.py)
    root = got.parent.parent
    reqs = {r.split("==")[0] for r in (root / "requirements.txt").read_text().split()}
    assert {"mlflow", "torch", "transformers", "ultralytics", "onnxruntime"} <= reqs
    assert (root / "code" / "train" / "artifact.py").is_file() and not (root / "code" / "serve").exists()
    # the run says what it trained on: the preprocess output, by its manifest's digest
    from train.tracking import manifest_digest

    (data_input,) = run.inputs.dataset_inputs
    assert data_input.dataset.digest == manifest_digest(run.data.params["data"])
    assert {t.key: t.value for t in data_input.tags}["mlflow.data.context"] == "training"


@pytest.mark.slow
def test_promote_and_runs(trained, sift_home, capsys):
    from train.promote import main as promote
    from train.runs import main as runs
    from train.tracking import use

    assert promote([trained["run_id"]]) == 0
    client = use().MlflowClient()
    assert client.get_model_version_by_alias("sift-classifier", "champion").run_id == trained["run_id"]
    assert "already the champion" in (promote([trained["run_id"]]) == 0 and capsys.readouterr().out)
    assert runs(["--plot", str(sift_home / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert "test-run" in out and (sift_home / "cmp.png").stat().st_size > 1000
