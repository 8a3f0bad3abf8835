"""The model a command names, checked before Ray starts or a replica tries to load it.

``sift serve model=/nope``, ``sift predict --model models:/x@champion`` with no such version: one line
and exit 2, instead of a deploy that fails in a replica or an MLflow traceback.
"""
from __future__ import annotations

import contextlib
import logging

from flows.core.errors import SiftError
from flows.core.preflight import existing


def check_model(uri: str, tracking_uri: str | None = None, what: str = "model") -> None:
    """A local artifact dir must hold a sift model; ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
    must name a version in the registry (looked up, not downloaded). SiftError otherwise."""
    from .tracking import find_artifact, model_version, tracking_uri as store_uri, use

    if not uri.startswith("models:/"):
        find_artifact(existing(uri, what, "dir"))
        return
    ref = uri[len("models:/"):]
    if not ref or ("@" not in ref and "/" not in ref):
        raise SiftError(f"{what} {uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION", reason="bad_model_uri")
    mlflow = use(tracking_uri or None)
    from mlflow.exceptions import MlflowException

    try:
        with quiet_loggers("mlflow.store.db.utils", "alembic"):  # a fresh store's "Creating tables" lines
            model_version(mlflow.MlflowClient(), uri)
    except MlflowException as exc:
        first = str(exc.message if hasattr(exc, "message") else exc).strip().splitlines()[0][:200]
        raise SiftError(f"{what} {uri}: not in the MLflow registry at {store_uri(tracking_uri or None)} ({first}); "
                        "train one (sift train) or pass an artifact dir", reason="no_registered_model") from None


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING):
    """These loggers at ``level`` or above for the block, their own levels back after."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, lv in zip(loggers, before):
            lg.setLevel(lv)
