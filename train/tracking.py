"""MLflow: where runs go, how the model is logged and registered, promotion and comparison.

Embedded default: a SQLite store and an artifact folder under the state dir (``$SIFT_HOME`` or
``./.sift``). A server URI (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``) works the same way.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import warnings
from pathlib import Path

import pandas as pd

from flows.core.errors import SiftError

from .config import state_dir

SELECTION = "val_selection"  # the metric promotion compares (higher is better)
# What the logged pyfunc imports when it loads and predicts, as distribution names: the import
# closure of train.artifact (torch; flows.media.images -> pillow, numpy, ImageHash; flows.core.config
# -> PyYAML), the wrapper itself (pandas, mlflow) and cloudpickle, which unpickles the python model.
# :func:`pip_requirements` adds the backbone's library and what the artifact's extras need.
PYFUNC_REQUIREMENTS = ("mlflow", "cloudpickle", "torch", "numpy", "pandas", "pillow", "ImageHash", "PyYAML")


def tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else the embedded SQLite store (made absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = state_dir()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def use(uri: str | None = None):
    """Point the mlflow client at the store; returns the module."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    return mlflow


def experiment(mlflow, name: str) -> str:
    """Get or create the experiment; a SQLite store keeps artifacts under the state dir."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _pyfunc_class():
    import mlflow.pyfunc

    class SiftPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc wrapper: a DataFrame with base64 ``image`` -> label + per-class probs."""

        def load_context(self, context):
            from train.artifact import SiftModel

            self.model = SiftModel(context.artifacts["model"])

        def predict(self, context, model_input, params=None):
            items = [base64.b64decode(s) for s in model_input["image"]]
            rows = self.model.predict(items)
            return pd.DataFrame([{"label": r["label"], **r["probs"]} for r in rows])

    return SiftPyfunc


def pinned(name: str) -> str:
    """``name==installed version``. A local version label is dropped (``2.13.0+cpu`` -> ``==2.13.0``):
    no public index serves ``+cpu``, and by PEP 440 a public ``==2.13.0`` still matches a
    ``2.13.0+cpu`` wheel where an index or find-links offers one. SiftError when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        return f"{name}=={Version(version(name)).public}"
    except PackageNotFoundError:
        raise SiftError(f"the model needs {name} at load time, and it is not installed here",
                        reason="missing_requirement") from None


def pip_requirements(artifact_dir: Path) -> list[str]:
    """The pinned requirements of the pyfunc around the artifact at ``artifact_dir``: the base set;
    torchvision for a torchvision CNN backbone, else transformers (an HF tower; without torchvision
    its image processor is the PIL one, and sift reads only its crop, mean and std); onnxruntime when
    ONNX graphs were exported (``runtime=auto`` runs them on a CPU); ultralytics when the artifact
    carries a face detector (+ onnx and onnxruntime for an .onnx one: Ultralytics' ONNX backend
    checks both and would try to pip-install a missing one at load)."""
    from .artifact import META
    from .backbones import SIFT_JSON

    meta = json.loads((Path(artifact_dir) / META).read_text())
    cnn = (Path(artifact_dir) / "backbone" / SIFT_JSON).is_file()  # how backbones.load tells them apart
    names = [*PYFUNC_REQUIREMENTS, "torchvision" if cnn else "transformers"]
    if meta.get("runtimes"):
        names.append("onnxruntime")
    faces = meta.get("faces")
    if faces:
        names.append("ultralytics")
        if str(faces.get("weights", "")).endswith(".onnx"):
            names += ["onnx", "onnxruntime"]
    return [pinned(n) for n in dict.fromkeys(names)]


def code_paths() -> list[str]:
    """The source the pyfunc imports, as whole package dirs: ``train`` (the artifact code) and
    ``flows`` (what train imports: image decoding, config, errors). Never ``serve``: train does not
    import it. MLflow copies them under the model's ``code/`` and puts that first on sys.path."""
    import flows

    return [str(Path(__file__).resolve().parent), str(Path(flows.__file__).resolve().parent)]


def log_and_register(mlflow, artifact_dir: Path, model_name: str, classes: list[str], example_jpeg: bytes,
                     alias: str | None = "candidate") -> str:
    """Log the artifact as a pyfunc model with its signature, register it, alias it ``alias``.

    The model stands alone: its code (``code_paths``) and pinned requirements travel with it, and
    the artifact is copied in (``artifacts/<its dir name>``, resolved against the model dir at load), so
    ``mlflow models predict|serve --env-manager uv`` runs it in a fresh environment on any machine.
    The input example is a DataFrame with one base64 JPEG in column ``image``."""
    from mlflow.models import infer_signature

    example = pd.DataFrame({"image": [base64.b64encode(example_jpeg).decode()]})
    output = pd.DataFrame([{"label": classes[0], **{c: 1.0 / len(classes) for c in classes}}])
    info = mlflow.pyfunc.log_model(
        name="model", python_model=_pyfunc_class()(), artifacts={"model": str(artifact_dir)},
        signature=infer_signature(example, output), input_example=example, code_paths=code_paths(),
        pip_requirements=pip_requirements(artifact_dir), registered_model_name=model_name)
    version = str(info.registered_model_version)
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(model_name, alias, version)
    return version


def manifest_digest(data_dir: Path) -> str:
    """32 hex chars of the sha256 of ``DATA/manifest.json``: preprocess writes the manifest last,
    after the shards, so it identifies one published output (MLflow keeps at most 36 chars)."""
    import hashlib

    return hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()[:32]


def log_training_data(mlflow, data_dir: Path) -> str:
    """Record on the active run what it trains on: a dataset input (context ``training``) named after
    the data dir, its source the dir, its digest :func:`manifest_digest`, its rows the manifest's
    item counts per (class, split). Returns the digest."""
    from mlflow.data.pandas_dataset import from_pandas

    data_dir = Path(data_dir).resolve()
    manifest = json.loads((data_dir / "manifest.json").read_text())
    counts = [(*k.rsplit("/", 1), int(v)) for k, v in (manifest.get("by_class_split") or {}).items()]
    table = pd.DataFrame(counts, columns=["label", "split", "items"]).astype({"items": "int64"})
    digest = manifest_digest(data_dir)
    with warnings.catch_warnings():
        # MLflow's noise, not ours: a local path matches its two local-file sources (both the same
        # class), and it hints that an integer column cannot hold a missing value (counts have none)
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", message=".*integer column")
        ds = from_pandas(table, source=str(data_dir), name=f"sift-preprocess:{data_dir.name}", digest=digest)
        mlflow.log_input(ds, context="training")  # the schema is inferred here
    return digest


def find_artifact(root: Path) -> Path:
    """The artifact dir inside a downloaded MLflow model (pyfunc keeps it under artifacts/model)."""
    from .artifact import META

    for cand in (root, root / "artifacts" / "model"):
        if (cand / META).exists():
            return cand
    hits = list(root.rglob(META))
    if not hits:
        raise SiftError(f"no {META} under {root}: not a sift model", reason="not_a_model")
    return hits[0].parent


def model_version(client, uri: str):
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> its ModelVersion."""
    ref = uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, number = ref.rsplit("/", 1)
    return client.get_model_version(name, number)


def resolve_model(uri: str, tracking_uri: str | None = None, cache: Path | None = None) -> tuple[Path, str, str]:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a local dir -> (local dir, name, version).

    A registered version is downloaded once into ``cache`` (default $SIFT_HOME/serve_models), keyed by
    version and run (version numbers restart in every MLflow store)."""
    if not uri.startswith("models:/"):
        path = Path(uri)
        return find_artifact(path), path.name, "local"
    mlflow = use(tracking_uri or None)
    mv = model_version(mlflow.MlflowClient(), uri)
    name, version = mv.name, str(mv.version)
    dst = Path(cache or state_dir() / "serve_models") / name / f"{version}-{mv.run_id}"
    if not (dst / ".complete").exists():
        dst.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst))
        (dst / ".complete").write_text("ok")
    return find_artifact(dst), name, version


def version_of_run(client, model_name: str, run_id: str):
    versions = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if not versions:
        raise SiftError(f"run {run_id} has no registered version of model {model_name!r}",
                        reason="no_registered_model")
    return max(versions, key=lambda v: int(v.version))


@contextlib.contextmanager
def promotion_lock(store: str, model_name: str, timeout_s: float = 120.0):
    """An exclusive lock per (tracking store, model name), held while the champion is read, compared
    and set: two ``sift promote`` at once are serialised, and the second compares against the
    first's result (read-compare-set is otherwise a race that can leave the weaker model champion).
    A file lock (``flock``) under the state dir: it covers every process on this machine; promotions
    from several machines against one remote server are serialised per machine only."""
    import fcntl
    import hashlib

    locks = state_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{store}\0{model_name}".encode()).hexdigest()[:16]
    with open(locks / f"promote-{key}.lock", "a+") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SiftError(f"another promotion of {model_name!r} has held the lock for {timeout_s:g} s",
                                    reason="promotion_locked") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def promote(run_id: str, model_name: str, force: bool = False, uri: str | None = None) -> tuple[bool, str]:
    """Move alias ``champion`` to the run's model version if it beats the current champion on
    ``val_selection`` (or with ``force``). Returns ``(moved, message)``. The champion is read,
    compared and set under :func:`promotion_lock`."""
    mlflow = use(uri)
    client = mlflow.MlflowClient()
    mv = version_of_run(client, model_name, run_id)
    score = client.get_run(run_id).data.metrics.get(SELECTION, float("nan"))
    with promotion_lock(mlflow.get_tracking_uri(), model_name):
        try:
            champ = client.get_model_version_by_alias(model_name, "champion")
        except Exception:  # no champion yet
            champ = None
        if champ is not None and champ.version == mv.version:
            return False, f"version {mv.version} is already the champion"
        if champ is not None and not force:
            mine, theirs = client.get_run(run_id).data, client.get_run(champ.run_id).data
            for key, what in (("classes_list", "label set"), ("selection", "selection criterion")):
                a, b = mine.params.get(key), theirs.params.get(key)
                if a != b:
                    return False, (f"not promoted: its {what} ({a}) differs from champion v{champ.version}'s "
                                   f"({b}), so {SELECTION} does not compare; use --force to promote anyway, "
                                   "or train under another model_name=")
            best = theirs.metrics.get(SELECTION, float("nan"))
            if not score > best:
                return False, (f"not promoted: {SELECTION} {score:.4f} does not beat champion v{champ.version} "
                               f"({best:.4f}); use --force to promote anyway")
        client.set_registered_model_alias(model_name, "champion", mv.version)
    return True, (f"{model_name} v{mv.version} (run {run_id}, {SELECTION}={score:.4f}) is now @champion; a running "
                  "server pins the version it resolved at deploy time: redeploy (sift serve, or serve deploy "
                  "serve/config.yaml) to serve it")
