"""Export an artifact's classifier to ONNX, quantise it, and measure both against the torch weights.

    ARTIFACT/onnx/model.onnx        pixels (N,3,S,S), face (N,F) -> logits (N,C) [, score (N,)] [, tags (N,T)]
    ARTIFACT/onnx/model.int8.onnx   the same graph, MatMul/Gemm weights in INT8 (dynamic quantisation:
                                    activations are quantised per batch at run time, no calibration set)

The graph is the whole forward pass after preprocessing (backbone, colour statistics, head), so every
runtime gets the same inputs from ``SiftModel.model_inputs``. The agreement is measured on labelled
validation items prepared exactly as serving prepares them, through the artifact's own decision
rule: label agreement with torch fp32, the largest calibrated-probability difference, and each
runtime's macro-F1 on the clean ones, in batches of the serving size (dynamic quantisation scales
activations per batch, so an item's INT8 output moves a little with its batch-mates). It is recorded
in ``sift_model.json`` (``runtimes``), where ``runtime=auto`` reads it.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

OPSET = 17
FP32, INT8 = "onnx/model.onnx", "onnx/model.int8.onnx"


class _Graph(nn.Module):
    """Classifier -> a tuple of tensors (what ONNX export takes): logits [, score] [, tags]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, face: torch.Tensor | None = None):
        o = self.model(pixels=pixels, face=face)
        return tuple(t for t in (o.logits, o.score, o.tags) if t is not None)


def _onnx_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    """The one export call: TorchScript tracing at ``OPSET``, a dynamic batch axis on every tensor."""
    with warnings.catch_warnings():  # the tracer's notes on Python control flow in HF code are not ours
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={k: {0: "n"} for k in inputs + outputs}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def export_graph(model: nn.Module, path: Path, crop: int) -> dict:
    """Write ``model`` (a ``train.model.Classifier``) as an ONNX graph with a dynamic batch axis.

    Traced on a random batch of 2 in eval mode (the exporter's TorchScript path: the ops of every
    supported backbone map to ONNX opset 17); the model's train/eval mode is restored after."""
    was_training = model.training
    graph = _Graph(model).eval()
    n_face = int(model.n_face)
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 3, crop, crop, generator=g),)
    inputs = ["pixels"]
    if n_face:
        args += (torch.randn(2, n_face, generator=g),)
        inputs.append("face")
    with torch.no_grad():
        o = model(pixels=args[0], face=args[1] if n_face else None)
    outputs = ["logits"] + (["score"] if o.score is not None else []) + (["tags"] if o.tags is not None else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    _onnx_export(graph, args, path, inputs, outputs)
    model.train(was_training)
    return {"file": str(path), "inputs": inputs, "outputs": outputs, "opset": OPSET}


def quantize(src: Path, dst: Path) -> None:
    """Dynamic INT8 (QInt8 weights) of the MatMul/Gemm ops: what carries a ViT's and a head's cost."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the graph first, every time
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.getLogger().setLevel(level)


def compare(ref_probs: np.ndarray, probs: np.ndarray, ref_labels: np.ndarray, labels: np.ndarray) -> dict:
    """How far a runtime's calibrated probs (N, C) and labels (N,) are from the reference's:
    {agreement: share of equal labels, max_prob_diff: max |p - p_ref| over items and classes, n}."""
    if len(ref_labels) == 0:
        return {"agreement": None, "max_prob_diff": None, "n": 0}
    return {"agreement": float(np.mean(labels == ref_labels)),
            "max_prob_diff": float(np.abs(probs - ref_probs).max()), "n": int(len(labels))}


def _batched(fn, x: torch.Tensor, face: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([fn(x[i:i + batch], face[i:i + batch]) for i in range(0, len(x), batch)]) \
        if len(x) else np.zeros((0,), np.float32)


def export_artifact(path: str | Path, images: list[bytes], labels: np.ndarray, clean: np.ndarray | None = None,
                    batch: int = 32, log=print) -> dict:
    """Add ``onnx/`` to the artifact at ``path`` and record the runtimes in its sift_model.json.

    ``images``: encoded validation images, ``labels`` (N,) their class indices (-1: none),
    ``clean`` (N,) bool: which labels are trustworthy (default all), for the macro-F1 of each runtime.
    Returns the ``runtimes`` record. An export or quantisation that fails is recorded as
    ``{"error": ...}`` for that runtime (auto then keeps torch or fp32) instead of failing the run."""
    from ..artifact import META, SiftModel
    from ..metrics import evaluate
    from .session import OrtGraph

    path = Path(path)
    sm = SiftModel(path, runtime="torch")
    labels = np.asarray(labels, dtype=np.int64)
    clean = np.ones(len(labels), bool) if clean is None else np.asarray(clean, bool)
    x, face = sm.model_inputs([sm.prepare(b) for b in images]) if images else (
        torch.zeros(0, 3, sm.preproc.crop, sm.preproc.crop), torch.zeros(0, sm.meta["n_face"]))
    ref_logits = _batched(lambda a, f: sm.forward(a, f).logits.numpy(), x, face, batch)
    ref_p = sm.probs(ref_logits) if len(x) else ref_logits
    ref_y = sm.decide(ref_p)[0] if len(x) else np.zeros(0, np.int64)
    keep = clean & (labels >= 0)

    def quality(p: np.ndarray) -> dict:
        if not keep.any():
            return {}
        m = evaluate(p[keep], labels[keep], sm.classes, thresholds=sm.decision)
        return {"val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"], "val_items": int(keep.sum())}

    record: dict = {"torch": {"runtime": "torch fp32", **quality(ref_p)}}
    threads = max(1, torch.get_num_threads())
    for name, rel in (("onnx", FP32), ("onnx-int8", INT8)):
        t0 = time.perf_counter()
        try:
            if name == "onnx":
                export_graph(sm.model, path / rel, sm.preproc.crop)
            else:
                quantize(path / FP32, path / rel)
            g = OrtGraph(path / rel, threads=threads)
            logits = _batched(lambda a, f: g(a.numpy(), f.numpy())["logits"], x, face, batch)
        except Exception as exc:  # noqa: BLE001 - any exporter/ORT failure: record it, keep the run
            record[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"[export] {name} failed: {record[name]['error']}")
            continue
        p = sm.probs(logits) if len(x) else logits
        y = sm.decide(p)[0] if len(x) else ref_y
        record[name] = {"file": rel, "bytes": (path / rel).stat().st_size, "opset": OPSET,
                        **compare(ref_p, p, ref_y, y), **quality(p), "seconds": round(time.perf_counter() - t0, 2)}
        r = record[name]
        agree = f"label agreement {r['agreement']:.2%}, max prob diff {r['max_prob_diff']:.2g}" if r["n"] else \
            "no validation items to measure it on"
        log(f"[export] {name}: {r['bytes'] / 1e6:.1f} MB, {agree} ({r['n']} val items)")
    meta = json.loads((path / META).read_text())
    meta["runtimes"] = record
    (path / META).write_text(json.dumps(meta, indent=2, default=float))
    return record


def flat_metrics(record: dict) -> dict[str, float]:
    """The runtimes record as MLflow metrics: export_<runtime>_<key> for every number in it."""
    out = {}
    for name, rec in record.items():
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "opset":
                out[f"export_{name.replace('-', '_')}_{k}"] = float(v)
    return out


# -- the embedding cache: the frozen backbone's embedding function alone -----------------------

MIN_COSINE = 0.999  # auto embeds the cache with INT8 when every sampled embedding is this close to fp32


class _Embed(nn.Module):
    """``train.model.embed`` as a module: pixels (N,3,S,S) -> [L2-normalised features ; colour stats]."""

    def __init__(self, backbone: nn.Module, stats: nn.Module | None):
        super().__init__()
        self.backbone, self.stats = backbone, stats

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        from ..model import embed

        return embed(self.backbone, pixels, self.stats)


def export_embedder(backbone: nn.Module, stats: nn.Module | None, sample: torch.Tensor, out_dir: Path,
                    runtime: str = "auto", min_cosine: float = MIN_COSINE, log=print) -> tuple[str, Path | None, dict]:
    """The engine of the embedding cache's actors: (runtime, graph file or None for torch, record).

    ``sample``: normalised pixels (K,3,S,S) of the data being cached. For an ONNX runtime the
    embedding function is exported to ``out_dir`` (fp32, and INT8 for onnx-int8 or auto) and its
    cosine to torch measured on ``sample``; auto takes INT8 when the smallest cosine reaches
    ``min_cosine``, else fp32 ONNX (cosine 1 up to float error). Any export failure under auto keeps
    torch (recorded); an explicit ONNX runtime that cannot be exported raises."""
    from . import RUNTIMES, RuntimeChoiceError
    from .session import OrtGraph

    if runtime not in RUNTIMES:
        raise RuntimeChoiceError(f"cache_runtime={runtime!r}: choose one of {list(RUNTIMES)}")
    if runtime == "torch":
        return "torch", None, {"runtime": "torch"}
    module = _Embed(backbone, stats).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out_dir / "embed.onnx", out_dir / "embed.int8.onnx"
    try:
        _onnx_export(module, (sample[:2],), fp32, ["pixels"], ["emb"])
        with torch.no_grad():
            ref = module(sample).numpy()
        record: dict = {}
        for name, path in (("onnx", fp32), ("onnx-int8", int8)):
            if name == "onnx-int8":
                if runtime == "onnx":
                    break
                quantize(fp32, int8)
            got = OrtGraph(path, threads=max(1, torch.get_num_threads()))(sample.numpy())["emb"]
            cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
            record[name] = {"min_cosine": float(cos.min()), "n": int(len(cos))}
            log(f"[cache] {name} embeddings: min cosine to torch {cos.min():.5f} over {len(cos)} images")
    except Exception as exc:  # noqa: BLE001 - the exporter or ORT refused this backbone
        if runtime != "auto":
            raise RuntimeChoiceError(f"cache_runtime={runtime}: the backbone did not export to ONNX "
                                     f"({type(exc).__name__}: {exc})"[:500]) from None
        log(f"[cache] ONNX export failed ({type(exc).__name__}: {exc}); embedding with torch")
        return "torch", None, {"runtime": "torch", "error": str(exc)[:500]}
    if runtime == "auto":
        runtime = "onnx-int8" if record["onnx-int8"]["min_cosine"] >= min_cosine else "onnx"
    record["runtime"] = runtime
    return runtime, (int8 if runtime == "onnx-int8" else fp32), record
