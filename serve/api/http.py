"""HTTP details of the API: bounded bodies, multipart or JSON payloads, auth, Prometheus metrics.

A body is read at most its endpoint's limit far (the BodyLimit middleware) before anything parses
it, so an oversized upload costs the server nothing; FastAPI then parses multipart into the typed
``files`` of an endpoint, and a JSON body is validated against the models in ``serve.api.schemas``.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from dataclasses import dataclass, field

from fastapi import Request, UploadFile
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ValidationError

from serve.api.schemas import ImagesJson, JobJson, VideoJson
from serve.config import is_loopback
from serve.predictor import ApiError


@dataclass
class Payload:
    items: list[tuple[str, bytes]] = field(default_factory=list)
    tiles: int = 1
    tile_agg: str = "mean"
    aggregate: str | None = None
    fps: float | None = None
    options_set: set[str] = field(default_factory=set)  # the options a JSON body gave itself


def client_is_loopback(request: Request) -> bool:
    """The peer of this request is on this machine (Serve's proxy passes the client's address on)."""
    return bool(request.client) and is_loopback(request.client.host)


def check_auth(request: Request, cfg, loopback_free: bool = False) -> None:
    """Bearer-token auth. With a token configured every request needs it (``loopback_free``: except
    from loopback, for the metrics, docs and readiness pages); without one only loopback clients are
    served, whatever address the proxy binds (``http_options.host`` of a ``serve deploy`` config is
    not ServeConfig.host, so the rule is checked on every request, not only at start)."""
    token = cfg.token or os.environ.get("SIFT_API_TOKEN", "")
    local = client_is_loopback(request)
    if not token:
        if not local:
            raise ApiError(401, "token_required", "this server has no token: it answers loopback clients only "
                           "(set token=... or $SIFT_API_TOKEN to serve beyond loopback)")
        return
    if loopback_free and local:
        return
    got = request.headers.get("authorization", "")
    # bytes, not str: compare_digest refuses non-ASCII str (a 500 for a token of "Bearer é")
    if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), token.encode())):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")


def _json(body: bytes, model: type[BaseModel]) -> BaseModel:
    """A JSON body -> ``model``: 400 when it is not JSON, 422 (the first problem named) when it is
    not the shape ``model`` documents."""
    try:
        obj = json.loads(body or b"null")
    except ValueError:
        raise ApiError(400, "bad_json", "body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(422, "bad_json", "body must be a JSON object")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ApiError(422, "bad_field", first_problem(exc.errors())) from None


def first_problem(errors: list[dict]) -> str:
    """Pydantic/FastAPI validation errors -> one line: ``where: what`` of the first (+ how many more)."""
    if not errors:
        return "invalid request"
    e = errors[0]
    where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query"))
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where or 'request'}: {e.get('msg', 'invalid')}{more}"[:500]


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{what} is not valid base64") from None


def json_images(body: bytes, jobs: bool = False) -> Payload:
    """An ImagesJson (or, for ``jobs``, a JobJson) body -> Payload, names defaulting to the index."""
    b = _json(body, JobJson if jobs else ImagesJson)
    p = Payload(tiles=int(b.tiles), tile_agg=b.tile_agg)
    if jobs and b.items is not None:
        for i, it in enumerate(b.items):
            name, image = (str(i), it) if isinstance(it, str) else (str(i) if it.name is None else it.name, it.image)
            p.items.append((name, _b64(image, f"items[{i}].image")))
    else:
        images = b.images if b.images is not None else [b.image] if b.image is not None else []
        names = b.names or []
        p.items = [(names[i] if i < len(names) else str(i), _b64(v, f"images[{i}]")) for i, v in enumerate(images)]
    p.options_set = {k for k in ("tiles", "tile_agg") if k in b.model_fields_set}
    return p


def json_video(body: bytes) -> Payload:
    """A VideoJson body -> Payload with one item (none when ``video`` is absent)."""
    b = _json(body, VideoJson)
    p = Payload(aggregate=b.aggregate, fps=b.fps)
    if b.video is not None:
        p.items.append((b.name, _b64(b.video, "video")))
    p.options_set = {k for k in ("aggregate", "fps") if k in b.model_fields_set}
    return p


async def read_payload(request: Request, files: list[UploadFile] | None, query: dict, video: bool = False,
                       jobs: bool = False) -> Payload:
    """The request's media -> Payload: multipart ``files`` (already parsed by FastAPI from a body
    the BodyLimit middleware bounded) or a JSON body (options in it win over ``query``'s)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        p = Payload(**query)
        p.items = [(f.filename or "file", await f.read()) for f in files or []]
    elif ctype == "application/json":
        p = json_video(await request.body()) if video else json_images(await request.body(), jobs=jobs)
        for k, v in query.items():
            if k not in p.options_set:
                setattr(p, k, v)
    else:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data or application/json")
    if not p.items:
        raise ApiError(422, "no_items", "no image or video in the request")
    p.tiles = int(p.tiles)  # the query's Tiles enum: plain ints travel to the replicas and the job DB
    return p


class BodyLimit:
    """ASGI middleware: a request body is read at most its endpoint's limit far -- by Content-Length
    when present, by counting the stream otherwise -- before any parser sees it, so an oversized
    upload costs the server nothing; the bounded body is then handed on as one message.

    The limits come from ``app.state.body_limits`` ({path: (endpoint name, bytes)}, set by the
    deployment from its config); other paths get ``default`` (the GET endpoints carry no body).
    A 413 is counted in ``app.state.metrics`` like every other answer."""

    def __init__(self, app, default: int = 1 << 20):
        self.app, self.default = app, default

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = getattr(scope.get("app"), "state", None)
        endpoint, limit = getattr(state, "body_limits", {}).get(scope["path"], (scope["path"], self.default))
        try:
            body = await self._read(scope, receive, limit)
        except ApiError as exc:
            metrics = getattr(state, "metrics", None)
            if metrics is not None:
                metrics.observe(endpoint, exc.status, 0.0)
            return await JSONResponse(exc.body(), status_code=exc.status)(scope, receive, send)
        if body is None:
            return await self.app(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, when it comes
        return await self.app(scope, replay, send)

    @staticmethod
    async def _read(scope, receive, limit: int) -> bytes | None:
        """The whole body (None when the client left before sending it), or ApiError 413/400."""
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise ApiError(413, "too_large", f"body of {int(declared)} bytes > {limit}")
            except ValueError:
                raise ApiError(400, "bad_request", "invalid Content-Length") from None
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)


LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Request, error, latency and batch-size metrics, recorded twice from one call:

    - into Ray's metrics (``ray.serve.metrics``) when running in a Serve replica: Ray's metrics agent
      exports them on every node's metrics port as ``ray_sift_*`` with the deployment and replica as
      labels, so one Prometheus scrape config sums them over all replicas and nodes;
    - into this replica's own registry, which ``GET /metrics`` renders (a quick look without a
      Prometheus; behind Serve's load balancing it is one replica's view)."""

    def __init__(self, cluster: bool = True):
        self.registry = CollectorRegistry()
        self.requests = Counter("sift_requests", "API requests", ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("sift_errors", "API errors by status code", ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("sift_request_latency_seconds", "request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = _Both(Histogram("sift_batch_size", "model batch size seen by requests",
                                     buckets=BATCH_BUCKETS, registry=self.registry), None)
        self.ray = None
        if cluster:
            import ray

            if ray.is_initialized():
                from ray.serve import metrics as rm

                tags = ("endpoint", "code")
                self.ray = {"requests": rm.Counter("sift_requests", "API requests", tag_keys=tags),
                            "errors": rm.Counter("sift_errors", "API errors by status code", tag_keys=tags),
                            "latency": rm.Histogram("sift_request_latency_seconds", "request latency",
                                                    boundaries=list(LATENCY_BUCKETS), tag_keys=("endpoint",))}
                self.batch.ray = rm.Histogram("sift_batch_size", "model batch size seen by requests",
                                              boundaries=list(BATCH_BUCKETS))

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()
        if self.ray is not None:
            tags = {"endpoint": endpoint, "code": str(code)}
            self.ray["requests"].inc(1, tags=tags)
            self.ray["latency"].observe(seconds, tags={"endpoint": endpoint})
            if code >= 400:
                self.ray["errors"].inc(1, tags=tags)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class _Both:
    """One histogram observed into the local registry and, when present, Ray's metrics."""

    def __init__(self, local, ray_metric):
        self.local, self.ray = local, ray_metric

    def observe(self, value: float) -> None:
        self.local.observe(value)
        if self.ray is not None:
            self.ray.observe(value)
