"""HTTP details of the API: reading bounded payloads, auth, Prometheus metrics.

A payload is read at most ``limit`` bytes far — by Content-Length when present, by counting the
stream otherwise — before anything parses it, so an oversized upload costs the server nothing.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from dataclasses import dataclass, field

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from serve.config import is_loopback
from serve.predictor import ApiError


@dataclass
class Payload:
    items: list[tuple[str, bytes]] = field(default_factory=list)
    tiles: int = 1
    tile_agg: str = "mean"
    aggregate: str | None = None
    fps: float | None = None


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


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, "too_large", f"body of {declared} bytes > {limit}")
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    data = b"".join(chunks)
    request._body = data  # starlette's cache: form() parses these bytes instead of the spent stream
    return data


def _b64(value, what: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(422, "bad_field", f"{what} must be a base64 string")
    try:
        return base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{what} is not valid base64") from None


def _name(value, what: str) -> str:
    """An item's name: a string or a number (shown back as text), at most 1000 characters."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ApiError(422, "bad_field", f"{what} must be a string")
    if len(str(value)) > 1000:
        raise ApiError(422, "bad_field", f"{what} is longer than 1000 characters")
    return str(value)


def _options(p: Payload, opts) -> Payload:
    try:
        if "tiles" in opts:
            p.tiles = int(opts["tiles"])
        if "fps" in opts:
            p.fps = float(opts["fps"])
    except (TypeError, ValueError):
        raise ApiError(422, "bad_option", "tiles must be an integer and fps a number") from None
    p.tile_agg = opts.get("tile_agg", p.tile_agg)
    p.aggregate = opts.get("aggregate", p.aggregate)
    if not isinstance(p.tile_agg, str) or not isinstance(p.aggregate, (str, type(None))):
        raise ApiError(422, "bad_option", "tile_agg and aggregate must be strings")
    if p.tiles not in (1, 5):
        raise ApiError(422, "bad_option", "tiles must be 1 or 5")
    if p.tile_agg not in ("mean", "max"):
        raise ApiError(422, "bad_option", "tile_agg must be mean or max")
    if p.aggregate not in (None, "max", "mean", "topk"):
        raise ApiError(422, "bad_option", "aggregate must be max, mean or topk")
    if p.fps is not None and not (0.01 <= p.fps <= 60):
        raise ApiError(422, "bad_option", "fps must be within 0.01..60")
    return p


async def read_payload(request: Request, cfg, limit: int, video: bool = False) -> Payload:
    """Multipart files or JSON base64 -> Payload; options from the body or the query string."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    await read_body(request, limit)
    p = Payload()
    opts = dict(request.query_params)
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max(cfg.max_items, 1) * 4, max_fields=64)
        except Exception as exc:  # malformed multipart
            raise ApiError(400, "bad_multipart", f"could not parse multipart body: {exc}") from None
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                p.items.append((value.filename or key, await value.read()))
            else:
                opts.setdefault(key, value)
    elif ctype == "application/json":
        try:
            body = json.loads(request._body or b"null")
        except ValueError:
            raise ApiError(400, "bad_json", "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(422, "bad_json", "body must be a JSON object")
        if video:
            if "video" in body:
                p.items.append((_name(body.get("name", "video"), "name"), _b64(body["video"], "video")))
        else:
            images = body.get("images", [body["image"]] if "image" in body else [])
            items = body.get("items")
            if items is not None:  # jobs: [{name, image}]
                if not isinstance(items, list):
                    raise ApiError(422, "bad_field", "items must be a list")
                images = [it.get("image") if isinstance(it, dict) else it for it in items]
                names = [_name(it.get("name", i), f"items[{i}].name") if isinstance(it, dict) else str(i)
                         for i, it in enumerate(items)]
            else:
                names = body.get("names", [str(i) for i in range(len(images))] if isinstance(images, list) else [])
                if not isinstance(names, list):
                    raise ApiError(422, "bad_field", "names must be a list of strings")
                names = [_name(n, f"names[{i}]") for i, n in enumerate(names)]
            if not isinstance(images, list):
                raise ApiError(422, "bad_field", "images must be a list of base64 strings")
            p.items += [(names[i] if i < len(names) else str(i), _b64(v, f"images[{i}]")) for i, v in enumerate(images)]
        opts.update({k: v for k, v in body.items() if k in ("tiles", "tile_agg", "aggregate", "fps")})
    else:
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data or application/json")
    if not p.items:
        raise ApiError(422, "no_items", "no image or video in the request")
    return _options(p, opts)


class Metrics:
    """Prometheus metrics of this replica (own registry, so replicas and tests don't collide)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("sift_requests", "API requests", ["endpoint", "code"], registry=self.registry)
        self.errors = Counter("sift_errors", "API errors by status code", ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("sift_request_latency_seconds", "request latency", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.batch = Histogram("sift_batch_size", "model batch size seen by requests",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()

    def render(self) -> str:
        return generate_latest(self.registry).decode()
