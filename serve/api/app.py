"""The Ray Serve application: FastAPI ingress -> Preprocess (CPU) -> Model (batched).

    sift serve [key=value ...]                  # or: serve run serve.api.app:app_builder
    serve deploy serve/config.yaml              # the same app on a running cluster

Endpoints (OpenAPI at /docs): POST /v1/classify, POST /v1/classify/video, POST /v1/jobs,
GET /v1/jobs/{id}, GET /healthz, GET /readyz, GET /metrics.
"""

import asyncio
import logging
import time

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from ray import serve
from ray.serve.exceptions import BackPressureError

from flows.core.config import ConfigError
from serve.config import ServeConfig, from_args, is_loopback
from serve.api.deployments import Model, Preprocess
from serve.api.http import Metrics, Payload, check_auth, read_payload
from serve.predictor import ApiError

log = logging.getLogger("sift.serve")
# FastAPI's own /docs and /openapi.json are off: ours below sit behind the same auth as the API
api = FastAPI(title="sift", version="1", docs_url=None, redoc_url=None, openapi_url=None,
              description="Media classification: images, videos, batch jobs. Send images as multipart files "
                          "or JSON base64; every error is JSON {error: {code, message}}.")


def bound_host() -> str | None:
    """The address Serve's HTTP proxy binds (``http_options.host``: set by ``serve deploy``'s config or
    ``serve.start``, not by ServeConfig.host), or None when the controller cannot say."""
    try:
        import ray
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        return ray.get(client._controller.get_http_config.remote(), timeout=10).host if client else None
    except Exception:  # an API that moved: the per-request check still holds
        return None


def check_bind(cfg: ServeConfig, host: str | None) -> None:
    """ConfigError when the proxy binds beyond loopback and no token is set: refuse to start."""
    import os

    if host is not None and not is_loopback(host) and not (cfg.token or os.environ.get("SIFT_API_TOKEN")):
        raise ConfigError(f"Serve's HTTP proxy binds {host} (beyond loopback) and no token is set: set token=... "
                          "(or $SIFT_API_TOKEN) in the app's args; the API refuses to serve without auth there")


def _json_error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@serve.deployment(name="Api")
@serve.ingress(api)
class Api:
    def __init__(self, pre, model, cfg: ServeConfig):
        from flows.core.runtime import quiet_env

        quiet_env()
        check_bind(cfg, bound_host())
        self.pre, self.model, self.cfg = pre, model, cfg
        self.metrics = Metrics()
        self._info: dict | None = None
        self.jobs = self.runner = None
        from serve.api.jobrunner import JobRunner

        self.runner = JobRunner(self, cfg)
        self.jobs = self.runner.store
        self.runner.ensure_running()

    async def info(self) -> dict:
        if self._info is None:
            self._info = await self.model.info.remote()
        return self._info

    # -- the shared path: bytes -> preprocess -> batched model ----------------------------------
    async def classify_bytes(self, data: bytes, tiles: int, agg: str) -> dict:
        info = await self.info()
        edge = info["tile_edge"] if tiles == 5 else info["short_edge"]  # tiles crop a larger decode
        res = ApiError.raise_for(await self.pre.classify.remote(data, edge, tiles, agg))
        self.metrics.batch.observe(res.get("batch_size", 1))
        return res

    async def _guard(self, request: Request, endpoint: str, work, loopback_free: bool = False):
        """Auth, timeout, overload and error mapping around every API call; records metrics.
        ``work`` returns a dict (JSON; ``_status`` sets the code) or a ready Response."""
        t0 = time.perf_counter()
        try:
            check_auth(request, self.cfg, loopback_free)
            body = await asyncio.wait_for(work(), timeout=self.cfg.request_timeout_s)
            resp = body if not isinstance(body, dict) else \
                JSONResponse(body, status_code=body.pop("_status", 200))
        except ApiError as exc:
            resp = _json_error(exc)
        except BackPressureError:
            resp = _json_error(ApiError(503, "overloaded", "too many requests queued; retry later"))
        except asyncio.TimeoutError:
            resp = _json_error(ApiError(504, "timeout", f"no answer within {self.cfg.request_timeout_s} s"))
        except Exception:  # a bug, not the request's fault: JSON like every error, and logged
            log.exception("%s: unexpected error", endpoint)
            resp = _json_error(ApiError(500, "internal_error", "unexpected server error (logged)"))
        self.metrics.observe(endpoint, resp.status_code, time.perf_counter() - t0)
        return resp

    @api.post("/v1/classify", summary="Classify one or many images",
              description="multipart files (field `files`) or JSON `{images: [base64, ...]}`; "
                          "options `tiles` (1 or 5) and `tile_agg` (mean or max).")
    async def classify(self, request: Request) -> JSONResponse:
        async def work():
            p: Payload = await read_payload(request, self.cfg, self.cfg.max_body_bytes)
            if len(p.items) > self.cfg.max_items:
                raise ApiError(413, "too_many_items", f"{len(p.items)} images > max_items={self.cfg.max_items}")
            results = await asyncio.gather(*[self._one(name, data, p.tiles, p.tile_agg) for name, data in p.items],
                                           return_exceptions=False)
            return {"results": results}
        return await self._guard(request, "classify", work)

    async def _one(self, name: str, data: bytes, tiles: int, agg: str) -> dict:
        """One image of a multi-image request: a bad one gets its own error, the rest still answer."""
        try:
            return {"name": name, **await self.classify_bytes(data, tiles, agg)}
        except ApiError as exc:
            if exc.status == 503:
                raise
            return {"name": name, "status": exc.status, **exc.body()}

    @api.post("/v1/classify/video", summary="Classify a video: per-frame scores, timeline, video label",
              description="multipart file (field `file`) or JSON `{video: base64}`; options `aggregate` "
                          "(max, mean, topk) and `fps`.")
    async def classify_video(self, request: Request) -> JSONResponse:
        async def work():
            p = await read_payload(request, self.cfg, self.cfg.max_video_bytes, video=True)
            if len(p.items) != 1:
                raise ApiError(422, "one_video", "send exactly one video")
            info = await self.info()
            return ApiError.raise_for(await self.pre.classify_video.remote(
                p.items[0][1], info["short_edge"], p.fps or self.cfg.video_fps,
                p.aggregate or self.cfg.video_aggregate, self.cfg.video_smooth))
        return await self._guard(request, "classify_video", work)

    @api.post("/v1/jobs", status_code=202, summary="Queue many images; poll GET /v1/jobs/{id}")
    async def submit_job(self, request: Request) -> JSONResponse:
        async def work():
            p = await read_payload(request, self.cfg, self.cfg.max_body_bytes * 4)
            # SQLite work (a few ms, an fsync) runs off the event loop: other requests go on meanwhile
            if await asyncio.to_thread(self.jobs.pending) >= self.cfg.max_pending_jobs:
                raise ApiError(503, "queue_full", f"{self.cfg.max_pending_jobs} jobs already waiting")
            if not self.runner.ensure_running():
                raise ApiError(503, "jobs_stopped", "the job runner is stopped")
            job_id = await asyncio.to_thread(self.runner.submit, p)
            return {"_status": 202, "id": job_id, "status": "queued", "n_items": len(p.items),
                    "status_url": f"/v1/jobs/{job_id}"}
        return await self._guard(request, "jobs_submit", work)

    @api.get("/v1/jobs/{job_id}", summary="Job status and per-item results")
    async def get_job(self, job_id: str, request: Request) -> JSONResponse:
        async def work():
            job = await asyncio.to_thread(self.jobs.get, job_id)
            if job is None:
                raise ApiError(404, "no_such_job", f"no job {job_id}")
            return job
        return await self._guard(request, "jobs_get", work)

    @api.get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    # Readiness, metrics and docs say what model runs and how: a token is needed off loopback.
    @api.get("/readyz", summary="Readiness: the model is loaded")
    async def readyz(self, request: Request) -> JSONResponse:
        async def work():
            running = self.runner.ensure_running()
            jobs = self.runner.health()
            try:
                info = await asyncio.wait_for(self.model.info.remote(), timeout=5)
            except Exception as exc:  # not ready is an answer, not a crash
                return {"_status": 503, "status": "not ready", "detail": str(exc)[:200], "jobs": jobs}
            if not running:
                return {"_status": 503, "status": "not ready", "detail": "job runner stopped", "jobs": jobs, **info}
            return {"status": "ready", "jobs": jobs, **info}
        return await self._guard(request, "readyz", work, loopback_free=True)

    @api.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint(self, request: Request) -> PlainTextResponse:
        async def work():
            return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")
        return await self._guard(request, "metrics", work, loopback_free=True)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        async def work():
            return JSONResponse(api.openapi())
        return await self._guard(request, "openapi", work, loopback_free=True)

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        async def work():
            return get_swagger_ui_html(openapi_url="/openapi.json", title="sift API")
        return await self._guard(request, "docs", work, loopback_free=True)


def resolved(cfg: ServeConfig) -> ServeConfig:
    """Pin the MLflow store and the jobs DB to absolute locations here, where the app is built:
    replicas run in other processes (other nodes, other working dirs) and must not each guess."""

    from train.config import state_dir
    from train.tracking import tracking_uri

    from flows.core.config import replace

    from serve.api.jobs import JobStore

    store = cfg.tracking_uri or tracking_uri()
    out = replace(cfg, tracking_uri=store, jobs_db=cfg.jobs_db or str(state_dir() / "jobs.db"),
                  model=pinned(cfg.model, store))
    if not cfg.jobs_db:  # made here, so a replica that does not find it knows it is on another node
        JobStore(out.jobs_db).close()
    return out


def pinned(uri: str, store: str) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION``, the version the alias names now. Every
    replica (the first ones and those the autoscaler adds later) then loads that one version; a new
    champion is served after a redeploy (``sift serve`` again, or ``serve deploy``, which reloads the
    replicas in place), never by some replicas only. Other URIs are returned as they are."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    from train.tracking import use

    name, alias = uri[len("models:/"):].split("@", 1)
    try:
        mv = use(store).MlflowClient().get_model_version_by_alias(name, alias)
    except Exception as exc:
        raise ConfigError(f"model={uri}: {name!r} has no version with alias @{alias} in {store} ({exc})"[:400]) from None
    return f"models:/{name}/{mv.version}"


def build_app(cfg: ServeConfig):
    """The bound application graph, sized from the config."""
    cfg = resolved(cfg)
    logs = {"enable_access_log": cfg.access_log}
    model = Model.options(
        logging_config=logs,
        autoscaling_config={"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests},
        max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.model_cpus, "num_gpus": cfg.model_gpus},
        user_config={"model": cfg.model}).bind(cfg)
    # Preprocess holds each image request while the Model batches it, so it takes as many at once
    # as the ingress does (Serve's default of 5 would queue the rest in front of it).
    front = max(100, cfg.max_ongoing_requests * 2)
    pre = Preprocess.options(num_replicas=cfg.preprocess_replicas, logging_config=logs, max_ongoing_requests=front,
                             ray_actor_options={"num_cpus": cfg.preprocess_cpus}).bind(cfg, model)
    return Api.options(ray_actor_options={"num_cpus": cfg.ingress_cpus}, logging_config=logs,
                       max_ongoing_requests=front).bind(pre, model, cfg)


def app_builder(args: dict):
    """Entry for ``serve run serve.api.app:app_builder`` and ``serve deploy serve/config.yaml``."""
    return build_app(from_args(args))
