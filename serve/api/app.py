"""The Ray Serve application: FastAPI ingress -> Preprocess (CPU) -> Model (batched).

    sift serve [key=value ...]                  # or: serve run serve.api.app:app_builder
    serve deploy serve/config.yaml              # the same app on a running cluster

Endpoints (OpenAPI at /docs): POST /v1/classify, POST /v1/classify/video, POST /v1/jobs,
GET /v1/jobs/{id}, GET /healthz, GET /readyz, GET /metrics.
"""

import asyncio
import logging
import time
from typing import Annotated

from fastapi import Depends, FastAPI, File, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flows.core.config import ConfigError
from serve.api import schemas as s
from serve.api.http import BodyLimit, Metrics, check_auth, first_problem, read_payload
from serve.config import ServeConfig, from_args, is_loopback
from serve.api.deployments import Model, Preprocess
from serve.predictor import ApiError

# a replica stopped under a request (redeploy, scale-down): the request may go again, TRIES times in all
GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
TRIES = 3
log = logging.getLogger("sift.serve")
# FastAPI's own /docs and /openapi.json are off: ours below sit behind the same auth as the API
api = FastAPI(title="sift", version="1", docs_url=None, redoc_url=None, openapi_url=None,
              generate_unique_id_function=lambda route: route.name,  # operationIds: classify, jobs_get, ...
              description="Media classification: images, videos, batch jobs. Send images as multipart files "
                          "or as base64 in JSON (the alternative body each endpoint documents); every error "
                          "is JSON {error: {code, message}}. A request whose every item failed gets the items' "
                          "status (422 when they differ) with error.code all_failed and the per-item results.")
api.add_middleware(BodyLimit)


def _openapi() -> dict:
    """FastAPI's document with the upload fields marked for file pickers and generated clients."""
    if api.openapi_schema is None:
        api.openapi_schema = s.with_file_uploads(FastAPI.openapi(api))
    return api.openapi_schema


api.openapi = _openapi
BEARER = HTTPBearer(auto_error=False, scheme_name="token",
                    description="`Authorization: Bearer <token>` when the server has a token (`token=` or "
                                "$SIFT_API_TOKEN): needed for every API call, and for the readiness, metrics "
                                "and docs pages off loopback. A server without a token answers loopback only.")
NAMES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 422: "invalid"}


class Auth:
    """The endpoints' dependency: ``check_auth`` with the deployment's config. Its ``Security``
    parameter declares the bearer scheme in OpenAPI (so /docs has "Authorize" and generated clients
    take a token); ``check_auth`` reads the same header, with the loopback rule on top."""

    def __init__(self, loopback_free: bool = False):
        self.loopback_free = loopback_free

    def __call__(self, request: Request,
                 _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None) -> None:
        check_auth(request, request.app.state.cfg, self.loopback_free)


API, OPEN = [Depends(Auth())], [Depends(Auth(loopback_free=True))]


def _answer(request: Request, exc: ApiError) -> JSONResponse:
    """An error raised before an endpoint's body ran (auth, validation, parsing): JSON, counted."""
    route = request.scope.get("route")
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe(getattr(route, "name", "unknown"), exc.status, 0.0)
    return JSONResponse(exc.body(), status_code=exc.status)


def _unless_unauthorized(request: Request, exc: ApiError) -> JSONResponse:
    """``exc``, or the auth error when the request has no right to hear about its own mistakes."""
    try:
        if getattr(request.app.state, "cfg", None) is not None:
            check_auth(request, request.app.state.cfg, loopback_free=True)
    except ApiError as denied:
        exc = denied
    return _answer(request, exc)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _answer(request, exc)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _unless_unauthorized(request, ApiError(422, "bad_option", first_problem(list(exc.errors()))))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and "pars" in message:  # FastAPI's "There was an error parsing the body"
        return _unless_unauthorized(request, ApiError(400, "bad_multipart", f"could not parse the body: {message}"))
    err = ApiError(exc.status_code, NAMES.get(exc.status_code, "http_error"), message)
    return _unless_unauthorized(request, err) if exc.status_code != 404 else _answer(request, err)


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


def all_failed(results: list[dict]) -> dict:
    """The multi-item status rule: ``{results}`` with 200 when any item answered; when every item
    failed, the status they share (422 when they differ) and ``error.code`` ``all_failed``, so a
    client's ``raise_for_status()`` does not take a request of text files as classified."""
    failed = [r["status"] for r in results if "status" in r]
    if not results or len(failed) < len(results):
        return {"results": results}
    status = failed[0] if len(set(failed)) == 1 else 422
    first = results[0]["error"]
    return {"_status": status, "results": results,
            "error": {"code": "all_failed", "message": f"every item failed ({len(results)}); the first: "
                                                        f"{first['code']}: {first['message']}"[:500]}}


IMAGES = Annotated[list[UploadFile] | None, File(description="the images (multipart field `files`, repeated)")]
TILES = Annotated[s.Tiles, Query(description="1: the centre crop; 5: four corners and the centre")]
TILE_AGG = Annotated[s.TileAgg, Query(description="how the 5 tiles' probabilities are combined")]


@serve.deployment(name="Api")
@serve.ingress(api)
class Api:
    def __init__(self, pre, model, cfg: ServeConfig):
        from flows.core.runtime import quiet_env

        quiet_env()
        check_bind(cfg, bound_host())
        self.pre, self.model, self.cfg = pre, model, cfg
        self.metrics = Metrics()
        # what the auth dependency, the error handlers and the body-limit middleware read
        api.state.cfg, api.state.metrics = cfg, self.metrics
        api.state.body_limits = {"/v1/classify": ("classify", cfg.max_body_bytes),
                                 "/v1/classify/video": ("classify_video", cfg.max_video_bytes),
                                 "/v1/jobs": ("jobs_submit", cfg.max_body_bytes * 4)}
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
        for attempt in range(TRIES):
            try:
                out = await self.pre.classify.remote(data, edge, tiles, agg)
                break
            except GONE:
                # the replica it went to (or the Model replica behind it) was stopped under it: a redeploy
                # or a scale-down past its graceful shutdown. Classifying is idempotent: again, on a live
                # one; a rolling update can stop the next one too on a loaded machine
                if attempt == TRIES - 1:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        res = ApiError.raise_for(out)
        self.metrics.batch.observe(res.get("batch_size", 1))
        return res

    async def _guard(self, endpoint: str, work):
        """Timeout, overload and error mapping around an endpoint's work (auth and validation ran
        before it); records metrics. ``work`` returns a dict (JSON; ``_status`` sets the code) or a
        ready Response."""
        t0 = time.perf_counter()
        try:
            body = await asyncio.wait_for(work(), timeout=self.cfg.request_timeout_s)
            resp = body if not isinstance(body, dict) else \
                JSONResponse(body, status_code=body.pop("_status", 200))
        except ApiError as exc:
            resp = JSONResponse(exc.body(), status_code=exc.status)
        except BackPressureError:
            resp = JSONResponse(ApiError(503, "overloaded", "too many requests queued; retry later").body(), 503)
        except asyncio.TimeoutError:
            resp = JSONResponse(ApiError(504, "timeout", f"no answer within {self.cfg.request_timeout_s} s").body(),
                                504)
        except Exception as exc:  # a bug, not the request's fault: JSON like every error, and logged
            log.exception("%s: unexpected error", endpoint)
            resp = JSONResponse(ApiError(500, "internal_error", f"unexpected server error ({type(exc).__name__}, "
                                         "logged)").body(), 500)
        self.metrics.observe(endpoint, resp.status_code, time.perf_counter() - t0)
        return resp

    @api.post("/v1/classify", name="classify", summary="Classify one or many images",
              description="Multipart `files` (repeated), or JSON base64 `{images: [...], names: [...]}`. Results "
                          "come in request order; a bad image gets its own `status` and `error` while the rest "
                          "answer.", response_model=s.ClassifyResponse,
              responses=s.errors(400, 401, 413, 415, 422, 503, 504), openapi_extra=s.json_alternative(s.ImagesJson),
              dependencies=API)
    async def classify(self, request: Request, files: IMAGES = None, tiles: TILES = s.Tiles.ONE,
                       tile_agg: TILE_AGG = "mean") -> JSONResponse:
        async def work():
            p = await read_payload(request, files, {"tiles": tiles, "tile_agg": tile_agg})
            if len(p.items) > self.cfg.max_items:
                raise ApiError(413, "too_many_items", f"{len(p.items)} images > max_items={self.cfg.max_items}")
            results = await asyncio.gather(*[self._one(name, data, p.tiles, p.tile_agg) for name, data in p.items],
                                           return_exceptions=False)
            return all_failed(results)
        return await self._guard("classify", work)

    async def _one(self, name: str, data: bytes, tiles: int, agg: str) -> dict:
        """One image of a multi-image request: a bad one gets its own error, the rest still answer."""
        try:
            return {"name": name, **await self.classify_bytes(data, tiles, agg)}
        except ApiError as exc:
            if exc.status == 503:
                raise
            return {"name": name, "status": exc.status, **exc.body()}

    @api.post("/v1/classify/video", name="classify_video",
              summary="Classify a video: per-frame scores, timeline, video label",
              description="Multipart `file`, or JSON base64 `{video: ...}`.", response_model=s.VideoResponse,
              responses=s.errors(400, 401, 413, 415, 422, 503, 504), openapi_extra=s.json_alternative(s.VideoJson),
              dependencies=API)
    async def classify_video(
            self, request: Request, file: Annotated[UploadFile | None, File(description="the video")] = None,
            aggregate: Annotated[s.Aggregate | None, Query(description="frames -> video label")] = None,
            fps: Annotated[float | None, Query(ge=0.01, le=60, description="frames sampled per second")] = None,
    ) -> JSONResponse:
        async def work():
            p = await read_payload(request, [file] if file is not None else [], {"aggregate": aggregate, "fps": fps},
                                   video=True)
            if len(p.items) != 1:
                raise ApiError(422, "one_video", "send exactly one video")
            info = await self.info()
            return ApiError.raise_for(await self.pre.classify_video.remote(
                p.items[0][1], info["short_edge"], p.fps or self.cfg.video_fps,
                p.aggregate or self.cfg.video_aggregate, self.cfg.video_smooth))
        return await self._guard("classify_video", work)

    @api.post("/v1/jobs", name="jobs_submit", status_code=202, summary="Queue many images; poll GET /v1/jobs/{id}",
              description="Multipart `files`, or JSON `{items: [{name, image}]}` / `{images: [...]}`.",
              response_model=s.JobAccepted, responses=s.errors(400, 401, 413, 415, 422, 503, 504),
              openapi_extra=s.json_alternative(s.JobJson), dependencies=API)
    async def submit_job(self, request: Request, files: IMAGES = None, tiles: TILES = s.Tiles.ONE,
                         tile_agg: TILE_AGG = "mean") -> JSONResponse:
        async def work():
            p = await read_payload(request, files, {"tiles": tiles, "tile_agg": tile_agg}, jobs=True)
            # SQLite work (a few ms, an fsync) runs off the event loop: other requests go on meanwhile
            if await asyncio.to_thread(self.jobs.pending) >= self.cfg.max_pending_jobs:
                raise ApiError(503, "queue_full", f"{self.cfg.max_pending_jobs} jobs already waiting")
            if not self.runner.ensure_running():
                raise ApiError(503, "jobs_stopped", "the job runner is stopped")
            job_id = await asyncio.to_thread(self.runner.submit, p)
            return {"_status": 202, "id": job_id, "status": "queued", "n_items": len(p.items),
                    "status_url": f"/v1/jobs/{job_id}"}
        return await self._guard("jobs_submit", work)

    @api.get("/v1/jobs/{job_id}", name="jobs_get", summary="Job status and per-item results",
             response_model=s.JobStatus, responses=s.errors(401, 404), dependencies=API)
    async def get_job(self, job_id: str) -> JSONResponse:
        async def work():
            job = await asyncio.to_thread(self.jobs.get, job_id)
            if job is None:
                raise ApiError(404, "no_such_job", f"no job {job_id}")
            return job
        return await self._guard("jobs_get", work)

    @api.get("/healthz", name="healthz", summary="Liveness", response_model=s.Health)
    async def healthz(self) -> dict:
        return {"status": "ok"}

    # Readiness, metrics and docs say what model runs and how: a token is needed off loopback.
    @api.get("/readyz", name="readyz", summary="Readiness: the model is loaded", response_model=s.Ready,
             responses={503: {"model": s.Ready, "description": "not ready"}, **s.errors(401)}, dependencies=OPEN)
    async def readyz(self) -> JSONResponse:
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
        return await self._guard("readyz", work)

    @api.get("/metrics", name="metrics", summary="Prometheus metrics (this replica; Ray's exporter has all)",
             response_class=PlainTextResponse, responses=s.errors(401), dependencies=OPEN)
    async def metrics_endpoint(self) -> PlainTextResponse:
        async def work():
            return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")
        return await self._guard("metrics", work)

    @api.get("/openapi.json", name="openapi", include_in_schema=False, dependencies=OPEN)
    async def openapi(self) -> JSONResponse:
        async def work():
            return JSONResponse(api.openapi())
        return await self._guard("openapi", work)

    @api.get("/docs", name="docs", include_in_schema=False, dependencies=OPEN)
    async def docs(self) -> HTMLResponse:
        async def work():
            return get_swagger_ui_html(openapi_url="/openapi.json", title="sift API")
        return await self._guard("docs", work)


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
    # A redeploy stops the old ingress once its requests are done, but those may wait on the new
    # Preprocess and Model replicas (the old ones stop at once) and these can take longer than Serve's
    # 20 s default to start on a loaded machine: the old ingress waits as long as a request may run.
    return Api.options(ray_actor_options={"num_cpus": cfg.ingress_cpus}, logging_config=logs,
                       max_ongoing_requests=front,
                       graceful_shutdown_timeout_s=cfg.request_timeout_s + 5).bind(pre, model, cfg)


def app_builder(args: dict):
    """Entry for ``serve run serve.api.app:app_builder`` and ``serve deploy serve/config.yaml``."""
    return build_app(from_args(args))
