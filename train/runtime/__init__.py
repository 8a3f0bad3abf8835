"""Which engine runs a model's forward pass: PyTorch, or ONNX Runtime in fp32 or dynamic INT8.

    runtime=torch       the torch weights (the only choice on a GPU under auto)
    runtime=onnx        ARTIFACT/onnx/model.onnx on ONNX Runtime's CPU provider (labels equal to torch)
    runtime=onnx-int8   ARTIFACT/onnx/model.int8.onnx: the same graph with INT8 weights (quantize_dynamic)
    runtime=auto        torch on a GPU; on a CPU INT8 when its label agreement with fp32, measured at
                        export on the run's validation split, reaches min_agreement, else ONNX fp32,
                        else torch (an artifact exported before ONNX)

``sift train`` writes both graphs into the artifact (``export_onnx``); ``sift export`` adds them to an
older one. The agreement is measured once, at export, and recorded in the artifact's
``sift_model.json`` under ``runtimes``: serving only reads it (it writes nothing).
"""
from __future__ import annotations

import dataclasses

from flows.core.config import knob
from flows.core.errors import SiftError

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
MIN_AGREEMENT = 0.99  # auto takes INT8 when at least this share of val labels equal fp32's


class RuntimeChoiceError(SiftError, ValueError):
    """A runtime was asked for that the artifact cannot give (no export, export failed)."""

    reason = "bad_runtime"


@dataclasses.dataclass(frozen=True)
class RuntimeKnobs:
    """The inference engine, shared by ``serve``, ``scan``, ``predict`` and ``classify`` configs."""
    runtime: str = knob("auto", choices=RUNTIMES, help="auto | torch | onnx | onnx-int8; auto: INT8 ONNX on a "
                        "CPU when the artifact's recorded agreement passes, torch on a GPU")
    min_agreement: float = knob(-1.0, lo=-1.0, hi=1.0, help="auto takes INT8 only when its val label agreement "
                                "with fp32 is at least this; -1: 0.99")

    def runtime_kwargs(self) -> dict:
        """Keyword arguments of ``SiftModel`` for the engine."""
        return {"runtime": self.runtime, "min_agreement": self.min_agreement if self.min_agreement >= 0 else None}


def choose(runtimes: dict | None, requested: str, device: str, min_agreement: float | None = None) -> tuple[str, str]:
    """(runtime, why) for an artifact's ``runtimes`` record, the requested runtime and the device.

    An explicit request is honoured or refused (RuntimeChoiceError naming what is missing); ``auto``
    never fails: it falls back from INT8 to ONNX fp32 to torch and says why."""
    if requested not in RUNTIMES:
        raise RuntimeChoiceError(f"runtime={requested!r}: choose one of {list(RUNTIMES)}")
    runtimes = runtimes or {}
    if requested == "torch":
        return "torch", "asked for"
    if requested != "auto":
        rec = runtimes.get(requested) or {}
        if not rec.get("file"):
            why = rec.get("error") or "the artifact has no ONNX export"
            raise RuntimeChoiceError(f"runtime={requested}: {why}; run `sift export MODEL` to add it, or use runtime=torch")
        if device != "cpu":
            raise RuntimeChoiceError(f"runtime={requested} runs on the CPU; this model is on {device} (device=cpu, "
                                "or runtime=torch)")
        return requested, "asked for"
    if device != "cpu":
        return "torch", f"auto: {device}"
    threshold = MIN_AGREEMENT if min_agreement is None else float(min_agreement)
    int8, fp32 = runtimes.get("onnx-int8") or {}, runtimes.get("onnx") or {}
    agreement = int8.get("agreement")
    if int8.get("file") and agreement is not None and agreement >= threshold:
        return "onnx-int8", f"auto: INT8 agreed with fp32 on {agreement:.1%} of {int8.get('n', '?')} val items"
    if fp32.get("file"):
        why = (f"INT8 agreed on only {agreement:.1%} (< {threshold:.1%})" if agreement is not None
               else "no INT8 agreement recorded")
        return "onnx", f"auto: {why}, ONNX fp32"
    return "torch", "auto: the artifact has no ONNX export"


__all__ = ["RUNTIMES", "MIN_AGREEMENT", "RuntimeKnobs", "choose", "RuntimeChoiceError"]
