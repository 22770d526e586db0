"""The API key: required on every route but /healthz and /readyz, as a bearer token or X-API-Key;
a missing or wrong key is a 401 naming `authorization`, and no work is done for it."""

from __future__ import annotations

import httpx
import pytest

KEY = "s3cret-key-for-tests"
GOOD = {"events": [{"item": "i1"}, {"item": "i2"}], "k": 3}
ROUTES = [("POST", "/v1/retrieve", GOOD), ("POST", "/v1/retrieve:batch", {"users": [GOOD]}),
          ("POST", "/v1/noop", GOOD), ("GET", "/v1/model", None), ("POST", "/v1/admin/reload", None),
          ("GET", "/metrics", None), ("GET", "/openapi.json", None), ("GET", "/docs", None)]


@pytest.fixture(scope="module")
def server(world, live_server):
    import os

    from crbr.serve import ServeSettings, create_app

    os.environ["CRBR_TEST_SERVE_KEY"] = KEY
    try:
        app = create_app(ServeSettings(checkpoint=str(world.sasrec), catalogue=str(world.sasrec_catalogue),
                                       api_key_env="CRBR_TEST_SERVE_KEY"))
    finally:
        del os.environ["CRBR_TEST_SERVE_KEY"]
    with live_server(app) as s:
        yield s


def call(server, method, path, body, headers=None):
    return httpx.request(method, server.url + path, json=body, headers=headers or {}, timeout=30)


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[r[1] for r in ROUTES])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
                         ids=["none", "wrong-bearer", "wrong-x-api-key", "no-scheme", "basic"])
def test_every_route_but_health_needs_the_key(server, method, path, body, headers):
    r = call(server, method, path, body, headers)
    assert r.status_code == 401, r.text
    assert r.json()["detail"][0]["field"] == "authorization"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[r[1] for r in ROUTES])
@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}],
                         ids=["bearer", "x-api-key"])
def test_the_key_opens_every_route(server, method, path, body, headers):
    r = call(server, method, path, body, headers)
    assert r.status_code == 200, r.text


def test_health_needs_no_key_and_refusals_cost_no_model_call(server):
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    before = server.metrics.value("crbr_jobs_accepted_total")
    for _ in range(5):
        assert call(server, "POST", "/v1/retrieve", GOOD).status_code == 401
    assert server.metrics.value("crbr_jobs_accepted_total") == before
    # a huge body without a key is refused on the key, not read
    r = httpx.post(server.url + "/v1/retrieve", content=b"x" * (4 << 20), timeout=30)
    assert r.status_code == 401
