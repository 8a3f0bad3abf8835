"""An exported graph on ONNX Runtime's CPU provider, sized for a share of the cores.

ONNX Runtime's intra-op pool spins between ops by default: each of its threads keeps its core busy
for a while after its part of an op is done, waiting for the next. That is fastest on an idle
machine and wrong on a shared one: Serve's proxy, the preprocessing replica or ffmpeg in a scan then
wait for cores that are only spinning. Spinning is therefore on only when the session has every
core to itself.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def session_options(threads: int, spin: bool | None = None):
    """``onnxruntime.SessionOptions``: ``threads`` intra-op threads (>= 1), one inter-op thread
    (the graph is a chain), spin-wait only when ``spin`` (default: ``threads`` covers every core)."""
    import onnxruntime as ort

    threads = max(1, int(threads))
    if spin is None:
        spin = threads >= (os.cpu_count() or 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: its warnings about unused initialisers are not ours
    return so


class OrtGraph:
    """An exported classifier graph: ``(pixels (N,3,S,S) float32 normalised, face (N,F) float32)``
    -> {output name: array}; the outputs are ``logits`` (N,C) and, when the head has them, ``score``
    (N,) and ``tags`` (N,T)."""

    def __init__(self, path: str | Path, threads: int = 1, spin: bool | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads, spin),
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, pixels: np.ndarray, face: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feed = {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)}
        if "face" in self.inputs:
            feed["face"] = np.ascontiguousarray(face, dtype=np.float32)
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))
