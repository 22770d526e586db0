"""Every kind of bad input gets a 4xx naming the wrong field, never a 5xx, and the server keeps
answering good requests afterwards."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

GOOD = {"events": [{"item": "i1"}, {"item": "i2", "action": "click"}], "k": 5}


def event(**kw):
    return {"events": [{"item": "i1", **kw}], "k": 5}


# (name, raw body or JSON-able body, expected status, expected field)
CASES = [
    ("malformed JSON", b'{"events": [', 422, "body"),
    ("not an object", b"[]", 422, "body"),
    ("a bare string", b'"hello"', 422, "body"),
    ("empty body", b"", 422, "body"),
    ("missing events", {"k": 5}, 422, "events"),
    ("events not a list", {"events": "i1", "k": 5}, 422, "events"),
    ("empty events", {"events": [], "k": 5}, 422, "events"),
    ("event not an object", {"events": ["i1"], "k": 5}, 422, "events[0]"),
    ("item missing", {"events": [{"action": "click"}], "k": 5}, 422, "events[0].item"),
    ("item a boolean", event(item=True), 422, "events[0].item"),
    ("item a float", event(item=1.5), 422, "events[0].item"),
    ("item null", event(item=None), 422, "events[0].item"),
    ("item a list", event(item=["i1"]), 422, "events[0].item"),
    ("item too long", event(item="x" * 300), 422, "events[0].item"),
    ("item beyond 64 bits", event(item=10**30), 422, "events[0].item"),
    ("item empty", event(item=""), 422, "events[0].item"),
    ("unknown action", event(action="teleport"), 422, "events[0].action"),
    ("action id out of range", event(action=99), 422, "events[0].action"),
    ("action id zero (padding)", event(action=0), 422, "events[0].action"),
    ("action a float", event(action=1.0), 422, "events[0].action"),
    ("timestamp NaN", b'{"events": [{"item": "i1", "timestamp": NaN}], "k": 5}', 422, "events[0].timestamp"),
    ("timestamp Infinity", b'{"events": [{"item": "i1", "timestamp": Infinity}], "k": 5}', 422, "events[0].timestamp"),
    ("timestamp negative", event(timestamp=-5), 422, "events[0].timestamp"),
    ("timestamp a string", event(timestamp="yesterday"), 422, "events[0].timestamp"),
    ("timestamp a float", event(timestamp=1.5), 422, "events[0].timestamp"),
    ("timestamp huge", event(timestamp=10**20), 422, "events[0].timestamp"),
    ("timestamps on some events only", {"events": [{"item": "i1", "timestamp": 5}, {"item": "i2"}], "k": 5}, 422,
     "events[1].timestamp"),
    ("k NaN", b'{"events": [{"item": "i1"}], "k": NaN}', 422, "k"),
    ("k -Infinity", b'{"events": [{"item": "i1"}], "k": -Infinity}', 422, "k"),
    ("k negative", {**GOOD, "k": -3}, 422, "k"),
    ("k zero", {**GOOD, "k": 0}, 422, "k"),
    ("k huge", {**GOOD, "k": 10**9}, 422, "k"),
    ("k enormous", {**GOOD, "k": 10**40}, 422, "k"),
    ("k a string", {**GOOD, "k": "10"}, 422, "k"),
    ("k a float", {**GOOD, "k": 10.0}, 422, "k"),
    ("k a boolean", {**GOOD, "k": True}, 422, "k"),
    ("k null", {**GOOD, "k": None}, 422, "k"),
    ("unknown field", {**GOOD, "kk": 5}, 422, "kk"),
    ("unknown event field", event(rating=5), 422, "events[0].rating"),
    ("history beyond the cap", {"events": [{"item": "i1"}] * 51, "k": 5}, 422, "events"),
    ("unknown category", {**GOOD, "scope": {"categories": ["no such category"]}}, 422, "scope.categories[0]"),
    ("category id out of range", {**GOOD, "scope": {"categories": [0, 999]}}, 422, "scope.categories[1]"),
    ("category a float", {**GOOD, "scope": {"categories": [1.5]}}, 422, "scope.categories[0]"),
    ("categories not a list", {**GOOD, "scope": {"categories": "c0"}}, 422, "scope.categories"),
    ("too many scope items", {**GOOD, "scope": {"items": ["i1"] * 101}}, 422, "scope.items"),
    ("scope item a dict", {**GOOD, "scope": {"items": [{"id": 1}]}}, 422, "scope.items[0]"),
    ("exclude_seen a string", {**GOOD, "scope": {"exclude_seen": "yes"}}, 422, "scope.exclude_seen"),
    ("unknown scope field", {**GOOD, "scope": {"brands": ["x"]}}, 422, "scope.brands"),
    ("control on a model without one", {**GOOD, "control": "explore"}, 422, "control"),
    ("option NaN", b'{"events": [{"item": "i1"}], "k": 5, "options": {"beam": NaN}}', 422, "options.beam"),
    ("option negative", {**GOOD, "options": {"beam": -1}}, 422, "options.beam"),
    ("option huge", {**GOOD, "options": {"beam": 10**7}}, 422, "options.beam"),
    ("option a list", {**GOOD, "options": {"beam": [1]}}, 422, "options.beam"),
    ("option the model does not take", {**GOOD, "options": {"beam": 4}}, 422, "options"),
    ("options control", {**GOOD, "options": {"control": "explore"}}, 422, "options.control"),
    ("no usable history", {"events": [{"item": "ghost"}, {"item": "ghost-2"}], "k": 5}, 422, "events"),
    ("deeply nested JSON", b'{"events": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", 400, "body"),
    ("nested JSON beyond the body limit", b'{"events": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 413, "body"),
    ("an integer of 5000 digits", b'{"events": [{"item": "i1"}], "k": ' + b"9" * 5000 + b"}", 400, "body"),
    ("invalid UTF-8", b'{"events": [{"item": "\xff\xfe"}], "k": 5}', 400, "body"),
]

BATCH_CASES = [
    ("no users", {"users": []}, 422, "users"),
    ("too many users", {"users": [GOOD] * 9}, 422, "users"),
    ("a bad user among good ones", {"users": [GOOD, GOOD, {**GOOD, "k": -1}]}, 422, "users[2].k"),
    ("an empty history among good ones", {"users": [GOOD, {"events": [{"item": "ghost"}], "k": 5}]}, 422,
     "users[1].events"),
    ("an unknown category among good ones", {"users": [GOOD, {**GOOD, "scope": {"categories": ["zz"]}}]}, 422,
     "users[1].scope.categories[0]"),
]


@pytest.fixture(scope="module")
def server(world, live_server):
    from crbr.serve import Limits, ServeSettings, create_app

    limits = Limits(max_events=50, max_k=1000, max_users=8, max_scope_items=100)
    app = create_app(ServeSettings(checkpoint=str(world.sasrec), catalogue=str(world.sasrec_catalogue), limits=limits,
                                   max_body_bytes=64 * 1024))
    with live_server(app) as s:
        yield s


def send(server, path: str, body, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json", **headers},
                      timeout=30)


def check(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] and body["detail"], body
    fields = [d["field"] for d in body["detail"]]
    assert field in fields, fields
    assert all(d["message"] for d in body["detail"])


@pytest.mark.parametrize("name, body, status, field", CASES, ids=[c[0] for c in CASES])
def test_bad_retrieve_requests_get_a_4xx_naming_the_field(server, name, body, status, field):
    check(send(server, "/v1/retrieve", body), status, field)


@pytest.mark.parametrize("name, body, status, field", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_bad_batch_requests_get_a_4xx_naming_the_field(server, name, body, status, field):
    check(send(server, "/v1/retrieve:batch", body), status, field)


def test_the_good_request_works_and_the_server_survived_all_of_it(server):
    """(runs after the cases above, on the same server)"""
    r = send(server, "/v1/retrieve", GOOD)
    assert r.status_code == 200 and len(r.json()["items"]) == 5
    text = httpx.get(server.url + "/metrics").text
    assert 'status="5' not in text  # no 5xx was ever answered


def test_oversized_bodies_are_refused_before_parsing(server):
    big = {"events": [{"item": "i1"}], "k": 5, "pad": "x" * (100 * 1024)}
    check(send(server, "/v1/retrieve", big), 413, "body")
    # without a Content-Length (chunked upload): counted while it arrives

    def chunks():
        yield b'{"events": [{"item": "i1"}], "k": 5, "pad": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(server.url + "/v1/retrieve", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    check(r, 413, "body")


def test_a_lying_content_length_and_a_slow_body_are_handled(server):
    # Content-Length that is no number
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 12x\r\n\r\n{}")
        head = s.recv(4096)
    assert head.split(b" ")[1][:1] == b"4", head  # a 4xx (uvicorn's own 400 or ours)


def test_wrong_method_path_and_content_type(server):
    r = httpx.get(server.url + "/v1/retrieve")
    check(r, 405, "method")
    r = httpx.post(server.url + "/v1/nothing-here", json=GOOD)
    check(r, 404, "path")
    r = httpx.post(server.url + "/v1/retrieve", content=json.dumps(GOOD), headers={"content-type": "text/plain"})
    check(r, 422, "body")
