"""serve.api.http without Ray: auth by the client's address, and malformed bodies -> 4xx ApiError."""
import asyncio
import base64
import json

import pytest
from starlette.requests import Request

from flows.core.config import ConfigError
from serve.api.app import check_bind
from serve.api.http import check_auth, read_payload
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
    ({"items": [{"name": [], "image": IMG}]}, 422), ({"items": "x"}, 422), ({"images": [IMG], "tiles": [1]}, 422),
    ({"images": [IMG], "tile_agg": ["max"]}, 422), ({"images": [IMG], "aggregate": {"a": 1}}, 422),
    ({"images": [IMG], "fps": "nan"}, 422), ({"images": [IMG], "fps": 1e9}, 422), ([1, 2], 422), ("x", 422),
    ({"images": ["!!"]}, 400), ({"images": []}, 422),
])
def test_malformed_json_bodies_are_4xx(body, status):
    cfg = load_serve(None, [])
    req = _request(json.dumps(body).encode())
    assert _status(lambda: asyncio.run(read_payload(req, cfg, 10_000)))[0] == status


def test_a_malformed_video_name_and_a_good_body(monkeypatch):
    cfg = load_serve(None, [])
    req = _request(json.dumps({"video": IMG, "name": {"x": 1}}).encode())
    assert _status(lambda: asyncio.run(read_payload(req, cfg, 10_000, video=True)))[0] == 422
    p = asyncio.run(read_payload(_request(json.dumps({"images": [IMG, IMG], "names": ["a", 7]}).encode()), cfg, 10_000))
    assert [n for n, _ in p.items] == ["a", "7"] and p.items[0][1].startswith(b"\xff\xd8")
