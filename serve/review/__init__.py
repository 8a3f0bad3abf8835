"""``sift review``: a small web page to review uncertain, disputed and reported items; every label goes
to the label store (:mod:`flows.core.labels`) and the next ``sift train`` uses it.

    sift review --data DATA_DIR [--run RUN_ID|latest] [--host 127.0.0.1] [--port 8765] [--token T]

A FastAPI app under uvicorn (no Ray: a reviewer's laptop runs it next to a preprocessed dataset and a
run's ``predictions.parquet``). Loopback by default; every request is authenticated: the API by a
bearer token or the cookie the page receives when it is opened once as ``/?token=T`` (a random token
is generated and printed when none is given, so another local user or a web page cannot label in
your name). ``POST /api/report`` answers CORS for ``cors_origins`` (``null``: a ``feed.html`` opened
as a file), which is how the feed's "wrong verdict" buttons reach the store.
"""
from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from flows.core.errors import HttpError
from flows.core.labels import SKIP, LabelError, LabelStore, default_user

from serve.review.queues import STRATEGIES, QueueError, match_reports, rank
from serve.review.data import ReviewConfig, ReviewData, finite, load_review

COOKIE = "sift_review"


def build_app(data: ReviewData, store: LabelStore, cfg: ReviewConfig, token: str) -> FastAPI:
    """The app over one dataset + predictions + store; ``token`` guards every route but preflights."""
    from serve.review.page import PAGE

    app = FastAPI(title="sift review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.data = store, data
    user = cfg.user or default_user()

    @app.exception_handler(HttpError)
    async def _err(request: Request, exc: HttpError):
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=exc.status,
                            headers=_cors(request, cfg))

    @app.exception_handler(404)
    async def _not_found(request: Request, exc):
        return JSONResponse({"error": {"code": "not_found", "message": f"no route {request.url.path}"}}, 404)

    @app.exception_handler(405)
    async def _method(request: Request, exc):
        return JSONResponse({"error": {"code": "method_not_allowed", "message": f"{request.method} "
                                       f"{request.url.path} is not allowed"}}, 405)

    def auth(request: Request) -> None:
        got = request.headers.get("authorization", "")
        got = got[7:].strip() if got.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        if not (got and hmac.compare_digest(got, token)):
            raise HttpError(401, "unauthorized", "missing or wrong token: open the URL `sift review` printed "
                            "(/?token=...) or send Authorization: Bearer <token>")

    @app.get("/")
    def page(request: Request):
        given = request.query_params.get("token")
        if given is not None:  # the one-time link: token -> cookie, then a URL without it
            if not hmac.compare_digest(given, token):
                raise HttpError(401, "unauthorized", "wrong token in the link")
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return resp
        auth(request)
        return Response(PAGE, media_type="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/api/queue")
    def queue(request: Request, strategy: str = "uncertain", limit: str = ""):
        auth(request)
        n = _int(limit, cfg.queue_limit, "limit", 1, 1000)
        open_reports = _frame(store.reports("open"))
        try:
            order = rank(data.preds, data.probs, data.classes, strategy, reviewed=store.reviewed(),
                         reports=open_reports, has_teacher=bool(data.meta.get("teacher", True)), limit=n)
        except QueueError as exc:
            raise HttpError(400, "bad_strategy", str(exc)) from None
        latest = store.latest()
        cards = [card(data, int(r.row), r.score, r.reason, r.reports, latest) for r in order.itertuples()]
        return {"strategy": strategy, "classes": data.classes, "user": user, "items": cards,
                "reviewed": len(store.reviewed()), "open_reports": len(open_reports)}

    @app.get("/api/stats")
    def stats(request: Request):
        auth(request)
        return {"classes": data.classes, "strategies": list(STRATEGIES), "user": user, "corrections": store.counts(),
                "reviewed": len(store.reviewed()), "reports": len(store.reports()),
                "open_reports": len(store.reports("open")), "predictions": str(data.predictions),
                "run": data.meta.get("run_name", ""), "labels_db": str(store.path)}

    @app.get("/api/media/{item_id:path}")
    def media(request: Request, item_id: str):
        auth(request)
        jpeg = data.jpeg(item_id)
        if jpeg is None:
            raise HttpError(404, "unknown_item", f"no item {item_id!r} in {data.data}")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/label")
    async def label(request: Request):
        auth(request)
        check_origin(request, cfg)
        body = await _body(request)
        item_id, lab = str(body.get("id") or ""), body.get("label")
        it = data.item(item_id)
        if it is None:
            raise HttpError(404, "unknown_item", f"no item {item_id!r} in {data.data}")
        if not isinstance(lab, str) or (lab != SKIP and lab not in data.classes):
            raise HttpError(422, "unknown_label", f"label must be one of {data.classes} or {SKIP!r}, got {lab!r}")
        strategy = str(body.get("strategy") or "")
        hits = match_reports(data.items, _frame(store.reports("open")))
        seqs = sorted(int(x) for x in hits["seq"][hits["row"] == data.by_id[item_id]])
        try:
            row = store.add_correction(item_id, lab, who=user, previous=data.current_label(item_id), path=it["path"],
                                       group_id=it["group_id"], source="feed" if seqs else "review",
                                       strategy=strategy, note=str(body.get("note") or ""), resolves=seqs)
        except LabelError as exc:
            raise HttpError(422, "bad_label", str(exc)) from None
        return {"ok": True, "correction": row, "resolved_reports": seqs}

    @app.post("/api/undo")
    async def undo(request: Request):
        auth(request)
        check_origin(request, cfg)
        body = await _body(request, allow_empty=True)
        seq = body.get("seq")
        if seq is not None and not isinstance(seq, int):
            raise HttpError(422, "bad_field", "seq must be an integer")
        row = store.undo(seq, who=user)
        if row is None and seq is not None:
            raise HttpError(404, "unknown_review", f"no live review #{seq}")
        return {"ok": True, "undone": row}

    @app.options("/api/report")
    def report_preflight(request: Request):
        headers = _cors(request, cfg)
        if not headers:
            raise HttpError(403, "origin_not_allowed", f"origin {request.headers.get('origin')!r} is not in cors_origins")
        return Response(status_code=204, headers={**headers, "Access-Control-Allow-Methods": "POST, OPTIONS",
                                                  "Access-Control-Allow-Headers": "authorization, content-type",
                                                  "Access-Control-Allow-Private-Network": "true",
                                                  "Access-Control-Max-Age": "600"})

    @app.post("/api/report")
    async def report(request: Request):
        auth(request)
        check_origin(request, cfg, cors=True)
        body = await _body(request)
        item_id = str(body.get("id") or "").strip()
        if not item_id:
            raise HttpError(422, "missing_id", "id is required")
        fields = {k: str(body.get(k) or "") for k in ("url", "page", "verdict", "suggested", "note")}
        try:
            row = store.add_report(item_id, who=str(body.get("who") or user), **fields)
        except LabelError as exc:
            raise HttpError(422, "bad_report", str(exc)) from None
        matched = _reports_item(data, row)
        return JSONResponse({"ok": True, "report": row, "item": matched or None}, status_code=201,
                            headers=_cors(request, cfg))

    return app


def card(data: ReviewData, row: int, score: float, reason: str, reports: list[int], latest: dict) -> dict:
    """One queue entry as the page shows it."""
    p = data.preds.iloc[row]
    item_id = str(p["id"])
    it = data.item(item_id)
    student, teacher = data.probs_of(item_id)
    return {"id": item_id, "group_id": str(p["group_id"]), "kind": str(p["kind"]), "split": str(p["split"]),
            "path": str(p["path"]), "timestamp": finite(it["timestamp"]), "pool": str(p["pool"]),
            "label": latest.get(item_id, data.name(p["label"])), "pred": max(student, key=student.get),
            "pred_teacher": max(teacher, key=teacher.get), "probs": student, "teacher_probs": teacher,
            "loss": finite(p["loss"]), "score": finite(score), "reason": reason, "reports": list(reports),
            "frames": data.frames(str(p["group_id"])) if p["kind"] != "image" else []}


def _reports_item(data: ReviewData, report: dict) -> str:
    """The data item a feed report is about ("" when it is not in this dataset)."""
    hit = match_reports(data.items, _frame([report]))
    return str(data.items["id"].iat[int(hit["row"].iat[0])]) if len(hit) else ""


def _frame(rows: list[dict]):
    import pandas as pd

    cols = ["seq", "item_id", "url", "page", "verdict", "suggested", "at"]
    return pd.DataFrame(rows, columns=None if rows else cols)


def _cors(request: Request, cfg: ReviewConfig) -> dict:
    origin = request.headers.get("origin")
    if origin is None or origin not in cfg.cors_origins or request.url.path != "/api/report":
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def check_origin(request: Request, cfg: ReviewConfig, cors: bool = False) -> None:
    """Writes come from this page (or, for ``/api/report`` with ``cors``, an origin in
    ``cors_origins``), as JSON. A page on another loopback port shares the cookie (SameSite ignores
    ports) and a ``text/plain`` POST needs no preflight, so both are checked: the browser's ``Origin``
    / ``Sec-Fetch-Site`` must say same-origin (or name an allowed origin), and the body must be
    ``application/json``, which no cross-origin page can send without a preflight we refuse.
    Clients that are not browsers send neither header and pass with their token."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HttpError(415, "json_required", "send the body as application/json")
    origin, site = request.headers.get("origin"), request.headers.get("sec-fetch-site")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is None:
        if site in (None, "same-origin", "none"):
            return
    elif origin == own or (cors and origin in cfg.cors_origins):
        return
    raise HttpError(403, "cross_origin", f"a write from {origin or site!r} is not this page's")


def _int(raw: str, default: int, name: str, lo: int, hi: int) -> int:
    if raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise HttpError(422, "bad_option", f"{name} must be an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise HttpError(422, "bad_option", f"{name} must be within {lo}..{hi}, got {v}")
    return v


async def _body(request: Request, allow_empty: bool = False) -> dict:
    raw = await request.body()
    if len(raw) > 64_000:
        raise HttpError(413, "too_large", "body over 64 kB")
    if not raw and allow_empty:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise HttpError(400, "bad_json", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(422, "bad_json", "body must be a JSON object")
    return body


def make(cfg: ReviewConfig) -> tuple[FastAPI, str, ReviewData]:
    """App, token and data from a config (the token generated when none is set)."""
    from pathlib import Path

    from flows.core.runtime import state_dir

    from serve.review.data import find_predictions

    preds = Path(cfg.predictions) if cfg.predictions else find_predictions(cfg.run, Path(cfg.data), state_dir())
    data = ReviewData(cfg.data, preds, cfg.max_frames)
    store = LabelStore(cfg.labels_db or None, data.classes)
    token = cfg.token or secrets.token_urlsafe(24)
    return build_app(data, store, cfg, token), token, data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift review", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="output folder of `sift preprocess`")
    ap.add_argument("--run", help="run name, MLflow run id, or latest (default)")
    ap.add_argument("--host", help="bind address (default 127.0.0.1; beyond loopback needs a token)")
    ap.add_argument("--port", type=int, help="port (default 8765)")
    ap.add_argument("--token", default=os.environ.get("SIFT_REVIEW_TOKEN"), help="token ($SIFT_REVIEW_TOKEN)")
    ap.add_argument("--user", help="who corrections are recorded as (default: $USER)")
    ap.add_argument("--config", help="YAML of settings")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (labels_db=, queue_limit=, ...)")
    args = ap.parse_args(argv)
    flags = {k: getattr(args, k) for k in ("data", "run", "host", "port", "token", "user") if getattr(args, k)}
    from flows.core.config import parse_overrides

    cfg = load_review(args.config, {**parse_overrides(args.overrides), **flags})
    app, token, data = make(cfg)
    import uvicorn

    print(f"sift review: {len(data.preds)} items of {data.data} scored by {data.predictions}\n"
          f"labels -> {app.state.store.path}\nopen http://{cfg.host}:{cfg.port}/?token={token}", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    return 0

