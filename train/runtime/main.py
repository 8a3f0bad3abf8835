"""``sift export MODEL``: add the ONNX fp32 and INT8 graphs to a model trained before ``export_onnx``.

    sift export .sift/runs/RUN/model               a local artifact: onnx/ is written into it
    sift export models:/sift-classifier@champion   a registered model: a new version of it, with onnx/,
                                                   from the same run; the aliases of the old version
                                                   move to the new one (same weights, same thresholds)

The agreement of each graph with torch is measured on the validation split of the data the model was
trained on (the run's ``data`` parameter, or ``--data``), prepared as serving prepares it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from flows.core.errors import SiftError


def val_items(data: Path, classes: list[str], limit: int) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Up to ``limit`` validation images of a ``sift preprocess`` output: (encoded images, label
    indices in ``classes`` (-1: unlabeled or a class the model lacks), clean (bool))."""
    import pyarrow.dataset as pads

    root = Path(data) / "data"
    if not root.is_dir():
        raise SiftError(f"--data {data}: not a `sift preprocess` output (no data/ folder)", reason="bad_input")
    ds = pads.dataset(str(root), format="parquet")
    cols = [c for c in ("image", "label_name", "pool", "id") if c in ds.schema.names]
    table = ds.to_table(columns=cols, filter=pads.field("split") == "val").to_pandas()
    if "id" in table:  # the same items whatever order preprocessing wrote them in
        table = table.sort_values("id", kind="stable")
    table = table.head(limit)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index.get(str(v), -1) for v in table.get("label_name", [None] * len(table))], np.int64)
    clean = np.array([str(v) == "clean" for v in table.get("pool", [""] * len(table))], bool)
    return [bytes(b) for b in table["image"]], labels, clean


def _data_of_run(mlflow, run_id: str) -> str:
    try:
        return mlflow.MlflowClient().get_run(run_id).data.params.get("data", "")
    except Exception:  # noqa: BLE001 - no such run in this store: --data is then required
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift export", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a local artifact dir, or models:/NAME@ALIAS | models:/NAME/VERSION")
    ap.add_argument("--data", help="`sift preprocess` output to measure agreement on (default: the run's data)")
    ap.add_argument("--items", type=int, default=256, help="validation items to measure agreement on")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or .sift/mlflow.db)")
    args = ap.parse_args(argv)
    from .. import tracking
    from ..artifact import META
    from .export import export_artifact, flat_metrics

    from ..preflight import check_model

    registered = args.model.startswith("models:/")
    check_model(args.model, args.tracking_uri)  # one line for a missing dir or an unregistered model
    mlflow = tracking.use(args.tracking_uri) if registered or not args.data else None
    path, name, version = tracking.resolve_model(args.model, args.tracking_uri)
    meta = json.loads((path / META).read_text())
    data = args.data or (_data_of_run(mlflow, meta.get("run_id", "")) if meta.get("run_id") else "")
    if not data or not Path(data).exists():
        raise SiftError(f"{args.model}: the data it was trained on ({data or 'unknown'}) is not here; "
                        "pass --data DIR (a `sift preprocess` output with a val split)", reason="bad_input")
    images, labels, clean = val_items(Path(data), meta["classes"], args.items)
    print(f"[export] {name} ({version}): measuring on {len(images)} val items of {data}", flush=True)
    if not registered:
        export_artifact(path, images, labels, clean)
        print(f"[export] wrote {path / 'onnx'}; serve it with runtime=auto (or onnx / onnx-int8)")
        return 0
    # a registered version is immutable: register the exported copy as a new version of the same run
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "model"
        shutil.copytree(path, art)
        record = export_artifact(art, images, labels, clean)
        client = mlflow.MlflowClient()
        old = tracking.model_version(client, args.model)
        with tracking.promotion_lock(tracking.tracking_uri(args.tracking_uri), name), \
                mlflow.start_run(run_id=old.run_id):
            mlflow.log_metrics(flat_metrics(record))
            new = tracking.log_and_register(mlflow, art, name, meta["classes"], images[0] if images else _grey_jpeg(),
                                            alias=None)
            client.set_model_version_tag(name, new, "exported_from", str(old.version))
            moved = list(old.aliases or [])
            for alias in moved:
                client.set_registered_model_alias(name, alias, new)
    print(f"[export] registered {name} v{new} (v{old.version} + onnx/)"
          + (f"; moved {', '.join('@' + a for a in moved)} to it" if moved else ""))
    return 0


def _grey_jpeg() -> bytes:
    """An input example when there are no val items: a grey JPEG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, "JPEG")
    return buf.getvalue()


if __name__ == "__main__":
    from flows.core.cli import run_entry

    raise SystemExit(run_entry(main, "export"))
