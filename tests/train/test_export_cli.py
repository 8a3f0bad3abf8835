"""`sift export`: ONNX graphs for a model trained without them, local and registered."""
import json
import shutil

import pytest

from flows.core.errors import SiftError


@pytest.mark.slow
def test_export_a_local_artifact_and_a_registered_version(trained, preprocessed, tmp_path, capsys):
    from train.artifact import META, SiftModel
    from train.runtime.main import main
    from train.tracking import resolve_model, use

    # an artifact as sift wrote it before export_onnx: no onnx/, no runtimes record
    old = tmp_path / "old"
    shutil.copytree(trained["model"], old)
    shutil.rmtree(old / "onnx")
    meta = json.loads((old / META).read_text())
    meta.pop("runtimes")
    (old / META).write_text(json.dumps(meta))
    assert SiftModel(old).runtime == "torch"
    with pytest.raises(Exception, match="sift export"):
        SiftModel(old, runtime="onnx")
    assert main([str(old)]) == 0  # the run's own data (its MLflow "data" param) is found
    rt = json.loads((old / META).read_text())["runtimes"]
    assert rt["onnx"]["agreement"] == 1.0 and rt["onnx-int8"]["n"] > 0
    assert SiftModel(old, runtime="onnx").predict([open(next(iter(sorted(
        (preprocessed[0] / "GOOD").glob("img_*.jpg")))), "rb").read()])[0]["label"]
    with pytest.raises(SiftError, match="no such folder"):
        main([str(tmp_path / "missing")])
    with pytest.raises(SiftError, match="not in the MLflow registry"):
        main(["models:/no-such-model@champion"])

    # a registered version: a new version of the same run with onnx/, the aliases follow it
    client = use().MlflowClient()
    before = client.get_model_version("sift-classifier", trained["version"])
    client.set_registered_model_alias("sift-classifier", "export-test", before.version)
    capsys.readouterr()
    assert main([f"models:/sift-classifier/{before.version}"]) == 0
    assert "moved" in capsys.readouterr().out
    new = client.get_model_version_by_alias("sift-classifier", "export-test")
    assert int(new.version) > int(before.version) and new.run_id == before.run_id
    assert new.tags["exported_from"] == str(before.version)
    path, _, version = resolve_model("models:/sift-classifier@export-test")
    assert version == str(new.version) and (path / "onnx" / "model.int8.onnx").exists()
    run = client.get_run(before.run_id)
    assert "export_onnx_int8_agreement" in run.data.metrics
    client.delete_registered_model_alias("sift-classifier", "export-test")
