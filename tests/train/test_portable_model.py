"""The registered model runs outside sift: its code (``code_paths``) and pinned requirements travel
with it, so ``mlflow models predict --env-manager uv`` rebuilds its environment from scratch and
gives what :class:`SiftModel` gives in-process; and a training run records the data it read."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import distributions, version
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from PIL import Image

from flows.core.errors import SiftError
from train import tracking
from train.artifact import META, SiftModel, save
from train.model import Classifier, load_backbone, resolve_backbone

CLASSES = ["BAD", "GOOD", "NEUTRAL"]


def _jpeg(seed: int, size=(160, 120)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize(size).save(buf, "JPEG")
    return buf.getvalue()


def _artifact(root: Path, faces: bool = False, onnx: bool = False, backbone: str = "tiny") -> Path:
    """A tiny artifact as training writes it: the tiny CLIP tower (or ``backbone``), optionally the
    nudenet face detector (as ``faces=true``, the default) and the ONNX graphs (``export_onnx=true``)."""
    from train.faces import DEFAULT_CLASSES, default_weights, feature_names

    backbone, preproc = load_backbone(resolve_backbone(backbone, root / "bb", image_size=32))
    face = {"weights": str(default_weights()), "face_classes": DEFAULT_CLASSES, "extra_classes": (),
            "conf": 0.25} if faces else None
    torch.manual_seed(0)
    model = Classifier(backbone, len(CLASSES), len(feature_names()) if faces else 0, hidden=32)
    art = save(root / "art", model.eval(), backbone_id="tiny", preproc=preproc, short_edge=96, classes=CLASSES,
               thresholds=[0.4, 0.3, 0.3], temperature=1.3, faces=face, hidden=32, dropout=0.1)
    if onnx:
        from train.runtime.export import export_artifact

        export_artifact(art, [_jpeg(s) for s in range(6)], np.array([0, 1, 2, 0, 1, 2]), log=lambda *_: None)
    return art


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private SQLite MLflow store under a private state dir; returns the mlflow module."""
    monkeypatch.setenv("SIFT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.use()


def _register(mlflow, art: Path, name: str = "portable") -> tuple[str, str]:
    """Log + register ``art`` in a run as training does; returns (run id, version)."""
    exp = tracking.experiment(mlflow, "portable")
    with mlflow.start_run(experiment_id=exp) as run:
        v = tracking.log_and_register(mlflow, art, name, CLASSES, _jpeg(99))
    return run.info.run_id, v


def test_pinned_requirements_drop_a_local_version_label_and_name_a_missing_package(tmp_path, monkeypatch):
    assert tracking.pinned("torch") == f"torch=={Version(version('torch')).public}"
    # an installed 1.2.3+cpu (a real dist-info on sys.path): pinned as ==1.2.3, which PEP 440 lets
    # match the +cpu build where an index offers it, and the public build elsewhere
    info = tmp_path / "fakepkg-1.2.3+cpu.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.2.3+cpu\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert version("fakepkg") == "1.2.3+cpu" and tracking.pinned("fakepkg") == "fakepkg==1.2.3"
    spec = SpecifierSet("==1.2.3")
    assert spec.contains("1.2.3+cpu") and spec.contains("1.2.3") and not spec.contains("1.2.4")
    with pytest.raises(SiftError, match="needs no-such-dist-xyz") as exc:
        tracking.pinned("no-such-dist-xyz")
    assert exc.value.reason == "missing_requirement"


def test_requirements_follow_what_the_artifact_loads(tmp_path):
    art = _artifact(tmp_path)
    reqs = tracking.pip_requirements(art)
    names = [r.split("==")[0] for r in reqs]
    assert names == [*tracking.PYFUNC_REQUIREMENTS, "transformers"]  # an HF tower, no detector, no ONNX
    assert all(r == f"{n}=={Version(version(n)).public}" for r, n in zip(reqs, names))
    cnn = _artifact(tmp_path / "cnn", backbone="torchvision:mobilenet_v3_small")
    assert [r.split("==")[0] for r in tracking.pip_requirements(cnn)] == [*tracking.PYFUNC_REQUIREMENTS,
                                                                           "torchvision"]
    # a .pt face detector needs ultralytics; an .onnx one also onnx + onnxruntime, as do ONNX graphs
    meta = json.loads((art / META).read_text())
    (art / META).write_text(json.dumps({**meta, "faces": {"weights": "faces/det.pt"}}))
    extra = [r.split("==")[0] for r in tracking.pip_requirements(art)][len(names):]
    assert extra == ["ultralytics"]
    (art / META).write_text(json.dumps({**meta, "faces": {"weights": "faces/320n.onnx"}, "runtimes": {"x": {}}}))
    extra = [r.split("==")[0] for r in tracking.pip_requirements(art)][len(names):]
    assert extra == ["onnxruntime", "ultralytics", "onnx"]


def test_the_logged_model_carries_its_code_requirements_and_artifact(tmp_path, store, monkeypatch):
    """What the registry serves: sift's source without serve/ or caches, the pinned requirements,
    the artifact copied in under a path relative to the model; the copy predicts like the original
    once the original is gone."""
    import mlflow.pyfunc

    art = _artifact(tmp_path)
    images = [_jpeg(s) for s in range(3)]
    want = SiftModel(art).predict(images)
    _, v = _register(store, art)
    model_dir = Path(store.artifacts.download_artifacts(artifact_uri=f"models:/portable/{v}",
                                                        dst_path=str(tmp_path / "dl")))
    code = model_dir / "code"
    assert sorted(p.name for p in code.iterdir()) == ["flows", "train"]
    assert (code / "train" / "artifact.py").is_file() and (code / "flows" / "media" / "images.py").is_file()
    assert not list(code.rglob("__pycache__")) and not list(code.rglob("test_*.py"))
    reqs = (model_dir / "requirements.txt").read_text().split()
    assert reqs == tracking.pip_requirements(art) and all("==" in r for r in reqs)
    import yaml

    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["code"] == "code" and not Path(flavor["artifacts"]["model"]["path"]).is_absolute()
    # the input example is what `mlflow models predict` reads: a DataFrame of base64 JPEGs
    example = json.loads((model_dir / "serving_input_example.json").read_text())["dataframe_split"]
    assert example["columns"] == ["image"] and base64.b64decode(example["data"][0][0]) == _jpeg(99)
    shutil.rmtree(art)  # another machine: nothing of the training side left
    moved = shutil.move(str(model_dir), str(tmp_path / "elsewhere"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading puts the model's code/ first: not for later tests
    got = mlflow.pyfunc.load_model(moved).predict(
        __import__("pandas").DataFrame({"image": [base64.b64encode(b).decode() for b in images]}))
    assert list(got["label"]) == [r["label"] for r in want]
    np.testing.assert_allclose(got[CLASSES].to_numpy(), [[r["probs"][c] for c in CLASSES] for r in want],
                               atol=1e-6)


def test_a_run_records_its_training_data_with_the_manifest_digest(tmp_path, store):
    data = tmp_path / "prep"
    data.mkdir()
    manifest = {"classes": CLASSES, "by_class_split": {"BAD/train": 5, "GOOD/train": 4, "GOOD/val": 2}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    with store.start_run(experiment_id=tracking.experiment(store, "portable")) as run:
        digest = tracking.log_training_data(store, data)
    assert digest == hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()[:32]
    (inp,) = store.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert inp.dataset.digest == digest and inp.dataset.name == "sift-preprocess:prep"
    assert str(data.resolve()) in inp.dataset.source
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert json.loads(inp.dataset.profile)["num_rows"] == 3  # one row per (class, split)
    # another preprocess output (another manifest) is another digest
    (data / "manifest.json").write_text(json.dumps({**manifest, "by_class_split": {"BAD/train": 6}}))
    assert tracking.manifest_digest(data) != digest


def _uv_env_from_pip() -> dict[str, str]:
    """pip's index settings as uv's variables: the translation ``make`` uses (.ci/uv_env.py)."""
    import runpy

    return runpy.run_path(str(Path(__file__).resolve().parents[2] / ".ci" / "uv_env.py"))["uv_env"]()


@pytest.mark.slow
def test_the_registered_model_predicts_in_a_fresh_uv_environment(tmp_path, store, capsys):
    """``mlflow models predict -m models:/NAME/VERSION --env-manager uv``: a new virtualenv from the
    logged requirements only (no sift installed, the training artifact gone), and the same labels
    and probabilities as in-process. The artifact is as training makes it: faces and ONNX graphs."""
    uv = pytest.importorskip("uv", reason="the uv env manager needs the uv package (pip install uv)")
    art = _artifact(tmp_path, faces=True, onnx=True)
    images = [_jpeg(s, (200, 150)) for s in range(3)]
    want = SiftModel(art).predict(images)
    _, v = _register(store, art)
    assert {"ultralytics", "onnxruntime"} <= {r.split("==")[0] for r in tracking.pip_requirements(art)}
    shutil.rmtree(art)
    inp, out = tmp_path / "input.json", tmp_path / "out.json"
    inp.write_text(json.dumps({"dataframe_split": {"columns": ["image"],
                                                   "data": [[base64.b64encode(b).decode()] for b in images]}}))
    # UV_OFFLINE: local wheels only, the ones `make` put in uv's cache; nothing comes from an index.
    # Offline, uv still knows every version its cached index pages list: the versions installed here
    # are the constraint, so what it picks for the dependencies' dependencies is in the cache.
    installed = tmp_path / "installed.txt"
    installed.write_text("".join(sorted({f"{d.metadata['Name']}=={d.version}\n" for d in distributions()
                                         if d.metadata["Name"] and d.metadata["Name"].lower() != "sift"})))
    uv_env = _uv_env_from_pip()
    constraints = " ".join(filter(None, [os.environ.get("UV_CONSTRAINT", uv_env.get("UV_CONSTRAINT")), str(installed)]))
    env = {**os.environ, **uv_env, "UV_OFFLINE": "1", "UV_CONSTRAINT": constraints,
           "MLFLOW_TRACKING_URI": store.get_tracking_uri(),
           "TMPDIR": str(tmp_path),  # the new env (removed after) on the uv cache's filesystem: hard links
           "PATH": os.pathsep.join([os.path.dirname(uv.find_uv_bin()), os.environ.get("PATH", "")])}
    env.pop("PYTHONPATH", None)
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    t0 = time.monotonic()
    proc = subprocess.run([str(mlflow_cli), "models", "predict", "-m", f"models:/portable/{v}", "-i", str(inp),
                           "-t", "json", "-o", str(out), "--env-manager", "uv"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "Creating a new environment" in proc.stderr and "uv" in proc.stderr
    got = json.loads(out.read_text())["predictions"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([[g[c] for c in CLASSES] for g in got],
                               [[w["probs"][c] for c in CLASSES] for w in want], atol=1e-6)
    with capsys.disabled():
        print(f"\n[portable] mlflow models predict --env-manager uv (fresh env): {took:.1f} s")
