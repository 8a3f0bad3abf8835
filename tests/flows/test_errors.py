"""The one error convention: every stage's errors are SiftErrors with a reason; the CLI prints one line, exit 2."""
import ast
from pathlib import Path

import pytest

from flows.core.config import ConfigError
from flows.core.errors import HttpError, ReasonError, SiftError
from flows.scrape.urls import FetchError
from flows.ingest.inputs import IngestError
from flows.core.labels import LabelError
from flows.media.validate import Reject
from flows.media.video import VideoError

ROOT = Path(__file__).resolve().parents[2]


def test_every_stage_error_is_a_sift_error_with_a_reason():
    from serve.predictor import ApiError
    from serve.review.queues import QueueError
    from train.backbones import BackboneError

    for cls, args, reason in ((ConfigError, ("bad key",), "bad_config"), (IngestError, ("no folder",), "bad_input"),
                              (LabelError, ("empty id",), "bad_label"), (BackboneError, ("no such",), "bad_backbone"),
                              (QueueError, ("no predictions",), "bad_queue"), (VideoError, ("decode_error", "x"), "decode_error"),
                              (FetchError, ("too_large", "12 MB"), "too_large"), (Reject, ("too_small",), "too_small"),
                              (ApiError, (413, "too_large", "big"), "too_large")):
        err = cls(*args)
        assert isinstance(err, SiftError) and err.reason == reason, cls
    assert str(FetchError("too_large", "12 MB")) == "too_large: 12 MB" and isinstance(Reject("x"), ReasonError)
    assert isinstance(ConfigError("x"), ValueError)  # callers that catch ValueError keep working
    assert HttpError(404, "unknown_item", "no item").body() == {"error": {"code": "unknown_item", "message": "no item"}}
    assert SiftError("need items", reason="no_labeled_items").reason == "no_labeled_items"


def test_the_cli_turns_any_sift_error_into_one_line_and_exit_2(capsys):
    from flows.core.cli import run_entry

    def entry(argv):
        raise VideoError("video_too_long", "7200 s > 600 s")

    assert run_entry(entry, "scan", []) == 2
    err = capsys.readouterr().err
    assert err == "sift scan: error: video_too_long: 7200 s > 600 s\n"
    assert run_entry(lambda argv: 0, "scan", []) == 0
    with pytest.raises(RuntimeError):  # a bug is not a user error: it keeps its traceback
        run_entry(lambda argv: (_ for _ in ()).throw(RuntimeError("bug")), "scan", [])


def test_library_code_never_raises_system_exit():
    """Only an entry point (``__main__.py``, an ``if __name__ == "__main__"`` block) may: library code
    raises SiftErrors."""
    offenders = []
    for path in [*ROOT.glob("flows/**/*.py"), *ROOT.glob("train/**/*.py"), *ROOT.glob("serve/**/*.py")]:
        if path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        main_blocks = {id(n) for n in ast.walk(tree) if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)}
        allowed = {id(m) for n in ast.walk(tree) if id(n) in main_blocks for m in ast.walk(n)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc) \
                    and id(node) not in allowed:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
