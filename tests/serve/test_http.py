"""serve.api.http without Ray: auth by the client's address, and malformed bodies -> 4xx ApiError."""
import asyncio
import base64
import json

import pytest
from starlette.requests import Request

from flows.core.config import ConfigError
from serve.api.app import check_bind
from serve.api.http import BodyLimit, check_auth, json_images, json_video, read_payload
from serve.config import load_serve
from serve.predictor import ApiError


def _request(body: bytes = b"", ctype: str = "application/json", client: str = "127.0.0.1",
             headers: dict | None = None, query: str = "") -> Request:
    raw = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": raw, "query_string": query.encode(),
             "client": (client, 50000), "server": ("0.0.0.0", 8000)}
    sent = []

    async def receive():
        if sent:
            return {"type": "http.disconnect"}
        sent.append(1)
        return {"type": "http.request", "body": body, "more_body": False}
    return Request(scope, receive)


def _status(fn):
    with pytest.raises(ApiError) as exc:
        fn()
    return exc.value.status, exc.value.code


def test_without_a_token_only_loopback_clients_are_served(monkeypatch):
    monkeypatch.delenv("SIFT_API_TOKEN", raising=False)
    cfg = load_serve(None, [])
    check_auth(_request(client="127.0.0.1"), cfg)
    check_auth(_request(client="::1"), cfg)
    assert _status(lambda: check_auth(_request(client="10.1.2.3"), cfg)) == (401, "token_required")
    assert _status(lambda: check_auth(_request(client="10.1.2.3"), cfg, loopback_free=True)) == (401, "token_required")


def test_with_a_token_every_request_needs_it_and_odd_tokens_are_401_not_500(monkeypatch):
    monkeypatch.delenv("SIFT_API_TOKEN", raising=False)
    cfg = load_serve(None, ["token=s3cret", "host=0.0.0.0"])
    ok = {"Authorization": "Bearer s3cret"}
    check_auth(_request(client="10.1.2.3", headers=ok), cfg)
    for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cr\u00e9t"},
                {"Authorization": "Basic s3cret"}, {"Authorization": "Bearer \u00ff\u00fe"}):
        assert _status(lambda: check_auth(_request(client="10.1.2.3", headers=bad), cfg)) == (401, "unauthorized")
        assert _status(lambda: check_auth(_request(client="127.0.0.1", headers=bad), cfg)) == (401, "unauthorized")
    # the metrics, docs and readiness pages: open on loopback, token off it
    check_auth(_request(client="127.0.0.1"), cfg, loopback_free=True)
    assert _status(lambda: check_auth(_request(client="10.1.2.3"), cfg, loopback_free=True))[0] == 401


def test_a_proxy_bound_beyond_loopback_without_a_token_refuses_to_start(monkeypatch):
    monkeypatch.delenv("SIFT_API_TOKEN", raising=False)
    cfg = load_serve(None, [])  # ServeConfig.host is loopback: only http_options.host tells
    with pytest.raises(ConfigError, match="0.0.0.0"):
        check_bind(cfg, "0.0.0.0")
    check_bind(cfg, "127.0.0.1")
    check_bind(cfg, None)  # unknown: the per-request check holds
    check_bind(load_serve(None, ["token=t"]), "0.0.0.0")


IMG = base64.b64encode(b"\xff\xd8\xff" + b"x" * 64).decode()


@pytest.mark.parametrize("body, status", [
    ({"images": [IMG], "names": 5}, 422), ({"images": [IMG], "names": [{"a": 1}]}, 422),
    ({"images": [IMG], "names": ["x" * 2000]}, 422), ({"images": 5}, 422), ({"images": [5]}, 422),
    ({"images": [IMG], "names": [True]}, 422),
    ({"items": [{"name": [], "image": IMG}]}, 422), ({"items": "x"}, 422), ({"images": [IMG], "tiles": [1]}, 422),
    ({"images": [IMG], "tiles": 3}, 422), ({"images": [IMG], "tile_agg": ["max"]}, 422), ([1, 2], 422), ("x", 422),
    ({"images": ["!!"]}, 400),
])
def test_malformed_json_bodies_are_4xx(body, status):
    assert _status(lambda: json_images(json.dumps(body).encode(), jobs=True))[0] == status


@pytest.mark.parametrize("body, status", [
    ({"video": IMG, "name": {"x": 1}}, 422), ({"video": IMG, "aggregate": {"a": 1}}, 422),
    ({"video": IMG, "fps": "nan"}, 422), ({"video": IMG, "fps": 1e9}, 422), ({"video": 5}, 422),
    ({"video": "!!"}, 400),
])
def test_malformed_video_bodies_are_4xx(body, status):
    assert _status(lambda: json_video(json.dumps(body).encode()))[0] == status


def test_good_json_bodies_and_options_over_the_query():
    p = json_images(json.dumps({"images": [IMG, IMG], "names": ["a", 7], "tiles": 5}).encode())
    assert [n for n, _ in p.items] == ["a", "7"] and p.items[0][1].startswith(b"\xff\xd8") and p.tiles == 5
    jobs = json_images(json.dumps({"items": [{"name": "x", "image": IMG}, IMG]}).encode(), jobs=True)
    assert [n for n, _ in jobs.items] == ["x", "1"]
    v = json_video(json.dumps({"video": IMG, "fps": 2}).encode())
    assert v.items[0][0] == "video" and v.fps == 2.0
    # a JSON body's own options win; the query's fill the rest; an empty request is 422, text/plain 415
    req = _request(json.dumps({"images": [IMG], "tile_agg": "max"}).encode())
    p = asyncio.run(read_payload(req, None, {"tiles": 5, "tile_agg": "mean"}))
    assert (p.tiles, p.tile_agg) == (5, "max")
    assert _status(lambda: asyncio.run(read_payload(_request(b'{"images": []}'), None, {})))[0] == 422
    assert _status(lambda: asyncio.run(read_payload(_request(b"abc", ctype="text/plain"), None, {})))[0] == 415


def _through_limit(body: bytes, limit: int, declared: bool = True, chunk: int = 1000):
    """Run the BodyLimit middleware over ``body`` (sent in chunks): (status, what the app received)."""
    got, sent = [], []
    state = type("State", (), {"body_limits": {"/v1/classify": ("classify", limit)}})()
    headers = [(b"content-length", str(len(body)).encode())] if declared else []
    scope = {"type": "http", "path": "/v1/classify", "headers": headers, "app": type("App", (), {"state": state})()}
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive():
        return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)} if parts else \
            {"type": "http.disconnect"}

    async def app(scope, receive, send):
        got.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(msg):
        sent.append(msg)
    asyncio.run(BodyLimit(app)(scope, receive, send))
    return sent[0]["status"], got


def test_the_body_limit_stops_an_upload_by_its_length_or_by_counting():
    body = b"x" * 5000
    assert _through_limit(body, 10_000) == (200, [body])
    assert _through_limit(body, 10_000, declared=False) == (200, [body])
    assert _through_limit(body, 4999) == (413, [])
    assert _through_limit(body, 4999, declared=False) == (413, [])
