"""The API's request and response bodies as pydantic models: what ``/openapi.json`` documents and
what a generated client builds and parses.

Images come as multipart files (the typed ``files`` / ``file`` fields of the endpoints) or, for
clients that cannot send multipart, as base64 in JSON: the ``*Json`` models below validate those
bodies. Responses keep sift's extra fields open (``extra="allow"``: a score head adds ``score``, a
tag head ``tags``), so a new head never breaks a client generated from an older schema.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr



class Tiles(IntEnum):
    """1: the centre crop; 5: four corners and the centre, aggregated. An IntEnum, not a Literal:
    a query string's "5" must validate (pydantic's Literal refuses the string)."""
    ONE = 1
    FIVE = 5


TileAgg = Literal["mean", "max"]
Aggregate = Literal["max", "mean", "topk"]
MAX_NAME = 1000


def _name(v: str | int | float) -> str:
    s = str(v)
    if len(s) > MAX_NAME:
        raise ValueError(f"longer than {MAX_NAME} characters")
    return s


# An item's name: text, or a number shown back as text (never a bool, a list or an object)
Name = Annotated[StrictStr | StrictInt | StrictFloat, AfterValidator(_name)]
Fps = Annotated[float, Field(ge=0.01, le=60, description="frames sampled per second of video")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImagesJson(_Body):
    """``POST /v1/classify`` as JSON: base64 images (``data:`` URLs too) and optional names."""
    images: list[StrictStr] | None = Field(None, description="base64-encoded images")
    image: StrictStr | None = Field(None, description="one base64 image (instead of `images`)")
    names: list[Name] | None = Field(None, description="a name per image, echoed in the results")
    tiles: Tiles = Field(Tiles.ONE, description="1: the centre crop; 5: four corners and the centre, aggregated")
    tile_agg: TileAgg = Field("mean", description="how the 5 tiles' probabilities are combined")


class JobItem(_Body):
    name: Name | None = None
    image: StrictStr = Field(description="base64-encoded image")


class JobJson(ImagesJson):
    """``POST /v1/jobs`` as JSON: ``items`` [{name, image}] or the ``images`` of ImagesJson."""
    items: list[JobItem | StrictStr] | None = Field(None, description="the job's images with their names")


class VideoJson(_Body):
    """``POST /v1/classify/video`` as JSON: one base64 video."""
    video: StrictStr | None = Field(None, description="base64-encoded video (mp4, webm, mov, mkv)")
    name: Name = "video"
    aggregate: Aggregate | None = Field(None, description="frame scores -> video label (default: the server's)")
    fps: Fps | None = None


class ErrorBody(BaseModel):
    code: str = Field(description="a stable reason code, e.g. too_large, not_media, overloaded")
    message: str


class ErrorResponse(BaseModel):
    """Every error answer: 4xx for the request's fault, 503 when overloaded (retry), 5xx otherwise."""
    error: ErrorBody


class ItemResult(BaseModel):
    """One image's answer: a label and probabilities, or its own ``status`` and ``error``."""
    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None
    uncertain: bool | None = Field(None, description="no class reached its threshold: the label is the fallback")
    probs: dict[str, float] | None = None
    thresholds: dict[str, float] | None = None
    score: float | None = Field(None, description="the score head's value, when the model has one")
    tags: list[str] | None = Field(None, description="the tag head's tags that are on, when the model has one")
    tag_probs: dict[str, float] | None = None
    model: str | None = None
    version: str | None = None
    latency_ms: float | None = None
    batch_size: int | None = None
    status: int | None = Field(None, description="set when this item failed (the HTTP status it would get alone)")
    error: ErrorBody | None = None


class ClassifyResponse(BaseModel):
    """``results`` in request order. When every item failed, the response itself has the status the
    items share (or 422 when they differ) and ``error.code`` is ``all_failed``."""
    results: list[ItemResult]
    error: ErrorBody | None = None


class Frame(BaseModel):
    model_config = ConfigDict(extra="allow")
    t: float
    kind: str
    label: str
    probs: dict[str, float]
    score: float | None = None


class VideoResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    label: str
    probs: dict[str, float]
    aggregate: str
    frames: list[Frame]
    segments: list[dict[str, Any]]
    duration: float | None = None
    score: float | None = None
    model: str | None = None
    version: str | None = None


class JobAccepted(BaseModel):
    id: str
    status: Literal["queued"]
    n_items: int
    status_url: str


class JobStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    status: Literal["queued", "running", "done", "failed"]
    n_items: int
    results: list[ItemResult | None] | None = None


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["ready", "not ready"]
    model: str | None = None
    version: str | None = None
    classes: list[str] | None = None
    runtime: str | None = None
    runtime_reason: str | None = None
    detail: str | None = None
    jobs: dict[str, Any] | None = None


def errors(*codes: int) -> dict:
    """``responses=`` for an endpoint: each status answered with an ErrorResponse."""
    what = {400: "malformed request", 401: "missing or wrong bearer token", 404: "not found",
            413: "too large", 415: "not a supported media type", 422: "invalid request or every item failed",
            503: "overloaded: retry later", 504: "timed out"}
    return {c: {"model": ErrorResponse, "description": what.get(c, "error")} for c in codes}


def json_alternative(model: type[BaseModel]) -> dict:
    """``openapi_extra`` that documents ``model`` as the JSON alternative to an endpoint's multipart
    body, its nested models inlined (``$defs`` refs would not resolve inside the OpenAPI document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"content": {"application/json": {"schema": inline(schema)}}}}


def with_file_uploads(spec: dict) -> dict:
    """Mark the multipart bodies' file fields the way upload widgets and client generators read
    them: ``format: binary`` beside OpenAPI 3.1's ``contentMediaType`` (Swagger UI's file picker and
    openapi-python-client's ``File`` key on it), and without the ``null`` alternative of an optional
    field (leaving a field out is how a multipart body says "none"). Changes ``spec`` in place."""
    def binary(node):
        if isinstance(node, dict):
            if node.get("type") == "string" and node.get("contentMediaType") == "application/octet-stream":
                node["format"] = "binary"
            for v in node.values():
                binary(v)
        elif isinstance(node, list):
            for v in node:
                binary(v)

    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        if not name.startswith("Body_"):
            continue
        for prop, field in schema.get("properties", {}).items():
            alts = [a for a in field.get("anyOf", []) if a.get("type") != "null"]
            if "anyOf" in field and len(alts) == 1:
                schema["properties"][prop] = {**alts[0], **{k: v for k, v in field.items() if k != "anyOf"}}
        binary(schema)
    return spec
