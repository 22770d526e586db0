"""The HTTP API against in-process retrieval: the same ids and the same scores, exactly, for exact
ranking (SASRec) and index search (the Set-Transformer retriever), with scopes, excluded history,
unknown items and the batch route; model info, health, metrics and the OpenAPI page."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch

from crbr.index import Scope, load_index
from crbr.retrieval import retrieve


def post(server, path: str, body, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def got(r: httpx.Response) -> tuple[list[str], list[float]]:
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    return [i["item"] for i in items], [i["score"] for i in items]


def test_exact_ranking_equals_the_model_in_process(world, models, serve):
    srv = serve(world.sasrec, catalogue=world.sasrec_catalogue)
    m = models["sasrec"]
    for u in range(8):
        ids, scores = got(post(srv, "/v1/retrieve", {"events": world.events(u), "k": 20}))
        ref = m.rank(world.batch(u, m.max_len), 20)
        assert ids == world.original(ref.items[0].tolist())
        assert scores == ref.scores[0].tolist()  # exactly: float32 -> JSON -> float


def test_index_search_equals_retrieve_in_process(world, models, serve):
    srv = serve(world.set_transformer, index=world.set_transformer_index)
    m = models["set_transformer"]
    index = load_index(world.set_transformer_index)
    info = httpx.get(srv.url + "/v1/model").json()
    assert info["mode"] == "index" and info["index"]["kind"] == "flat" and info["catalogue_size"] == world.ds.n_items
    for u in range(8):
        r = post(srv, "/v1/retrieve", {"events": world.events(u), "k": 15})
        ids, scores = got(r)
        ref = retrieve(m, world.batch(u, m.max_len), 15, index=index)
        assert ids == world.original(ref.ids[0].tolist())
        assert scores == ref.scores[0].tolist()
        assert [i["path"] for i in r.json()["items"]] == ref.path[0].tolist()  # one vector: path 0


def test_scopes_and_excluded_history_equal_the_model_in_process(world, models, serve):
    srv = serve(world.sasrec)  # catalogue prepared from the checkpoint's experiment config
    m = models["sasrec"]
    ds = world.ds
    names = ds.category_names
    cat_items = np.repeat(np.arange(ds.n_items + 1), np.diff(ds.cat_offsets))[np.isin(ds.cat_ids, [1, 4])]
    in_cats = torch.zeros(ds.n_items + 1, dtype=torch.bool)
    in_cats[torch.from_numpy(cat_items)] = True
    allow = [str(ds.item_ids[i]) for i in range(1, 120, 3)]
    listed = torch.zeros(ds.n_items + 1, dtype=torch.bool)
    listed[torch.tensor(range(1, 120, 3))] = True
    for u in range(4):
        ev = world.events(u)
        b = world.batch(u, m.max_len)
        seen = torch.tensor(sorted({int(i) for i in b["items"][0] if i > 0} |
                                   {int(x) for x in world.ds.items[world.ds.offsets[world.split.test.users[u]]:][:len(ev)]}))
        cases = [
            ({"categories": [names[1], 4]}, {"scope": in_cats}),
            ({"items": allow + ["no-such-item"]}, {"scope": listed}),
            ({"categories": [names[1], names[4]], "items": allow}, {"scope": in_cats & listed}),
            ({"exclude_seen": True}, {"exclude": seen[None]}),
            ({"categories": [1, 4], "exclude_seen": True}, {"scope": in_cats, "exclude": seen[None]}),
        ]
        for scope, kw in cases:
            r = post(srv, "/v1/retrieve", {"events": ev, "k": 10, "scope": scope})
            ids, scores = got(r)
            ref = m.rank(b, 10, **kw)
            keep = ref.items[0] > 0
            assert ids == world.original(ref.items[0][keep].tolist()), scope
            assert scores == ref.scores[0][keep].tolist()
            if "items" in scope and "categories" not in scope:
                assert r.json()["unknown_scope_items"] == {"count": 1, "items": ["no-such-item"]}


def test_index_scopes_hold_and_excluded_history_is_gone(world, models, serve):
    srv = serve(world.set_transformer, index=world.set_transformer_index)
    m = models["set_transformer"]
    index = load_index(world.set_transformer_index)
    ds = world.ds
    for u in range(3):
        ev = world.events(u)
        b = world.batch(u, m.max_len)
        ids, scores = got(post(srv, "/v1/retrieve", {"events": ev, "k": 10, "scope": {"categories": [2, 5]}}))
        ref = retrieve(m, b, 10, index=index, scope=[Scope(categories=[2, 5])])
        assert ids == world.original(ref.ids[0][ref.ids[0] >= 0].tolist()) and scores == ref.scores[0][:len(ids)].tolist()
        ids, _ = got(post(srv, "/v1/retrieve", {"events": ev, "k": 10, "scope": {"exclude_seen": True}}))
        assert len(ids) == 10 and not set(ids) & {e["item"] for e in ev}
        full, _ = got(post(srv, "/v1/retrieve", {"events": ev, "k": 10 + len(ev)}))
        assert ids == [i for i in full if i not in {e["item"] for e in ev}][:10]  # the next unseen ones, in order


def test_unknown_history_items_are_dropped_and_reported(world, models, serve):
    srv = serve(world.sasrec, catalogue=world.sasrec_catalogue)
    m = models["sasrec"]
    ev = world.events(0)
    noisy = [{"item": "ghost-1"}] + ev[:3] + [{"item": 10**12}] + ev[3:]
    for e in noisy:
        e.pop("timestamp", None)
    r = post(srv, "/v1/retrieve", {"events": noisy, "k": 5})
    assert r.json()["unknown_items"] == {"count": 2, "items": ["ghost-1", str(10**12)]}
    plain = [{k: v for k, v in e.items() if k != "timestamp"} for e in ev]
    assert got(r) == got(post(srv, "/v1/retrieve", {"events": plain, "k": 5}))
    # items may be given as integers when their original ids are numbers; actions default to the most common
    ids, _ = got(post(srv, "/v1/retrieve", {"events": [{"item": ev[0]["item"]}], "k": 3}))
    ref = m.rank({"items": torch.tensor([[world.ds.items[world.ds.offsets[world.split.test.users[0]]]]]),
                  "actions": torch.tensor([[srv.host.snapshot.catalogue.default_action]])}, 3)
    assert ids == world.original(ref.items[0].tolist())


def test_batch_route_answers_each_user_as_the_single_route(world, serve):
    srv = serve(world.set_transformer, index=world.set_transformer_index)
    users = [{"events": world.events(u), "k": 5 + u} for u in range(6)]
    r = post(srv, "/v1/retrieve:batch", {"users": users})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 6
    for q, res in zip(users, results):
        assert res == post(srv, "/v1/retrieve", q).json()


def test_concurrent_requests_share_model_calls_and_keep_their_answers(world, models, serve):
    srv = serve(world.sasrec, catalogue=world.sasrec_catalogue, max_batch=16, max_wait_ms=50)
    m = models["sasrec"]

    async def fire():
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            return await asyncio.gather(*[c.post("/v1/retrieve", json={"events": world.events(u), "k": 10})
                                          for u in range(24)])

    responses = asyncio.run(fire())
    for u, r in enumerate(responses):
        ids, scores = got(r)
        ref = m.rank(world.batch(u, m.max_len), 10)
        assert ids == world.original(ref.items[0].tolist())
        np.testing.assert_allclose(scores, ref.scores[0].numpy(), rtol=1e-5, atol=1e-6)
    calls = srv.metrics.value("crbr_batch_size_count")
    assert srv.metrics.value("crbr_batch_size_sum") == 24 + 1 - 1  # every request in one call, none twice
    assert calls < 24  # ... and fewer calls than requests: they were batched


def test_model_info_health_metrics_and_openapi(world, serve):
    srv = serve(world.sasrec, catalogue=world.sasrec_catalogue)
    info = httpx.get(srv.url + "/v1/model").json()
    assert info["model"] == "sasrec" and info["mode"] == "exact" and info["index"] is None
    assert info["catalogue_size"] == world.ds.n_items and info["categories"] == len(world.ds.category_names)
    assert info["config"]["hidden"] == 16 and info["dataset"] and info["code_version"].startswith("crbr ")
    assert info["checkpoint_sha256"] and info["model_version"] == 1
    assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(srv.url + "/readyz").status_code == 200
    post(srv, "/v1/retrieve", {"events": world.events(0), "k": 3})
    post(srv, "/v1/retrieve", {"events": [], "k": 3})
    text = httpx.get(srv.url + "/metrics").text
    for line in ('crbr_http_requests_total{route="/v1/retrieve",status="200"} 1.0',
                 'crbr_http_requests_total{route="/v1/retrieve",status="422"} 1.0',
                 "crbr_http_request_seconds_bucket", "crbr_batch_size_bucket", "crbr_queue_depth",
                 "crbr_model_seconds_bucket", 'crbr_jobs_answered_total{outcome="ok"} 1.0'):
        assert line in text, line
    spec = httpx.get(srv.url + "/openapi.json").json()
    for path in ("/v1/retrieve", "/v1/retrieve:batch", "/v1/model", "/v1/admin/reload", "/healthz", "/readyz",
                 "/metrics"):
        assert path in spec["paths"], path
    body = spec["components"]["schemas"]["RetrieveRequest"]
    assert body["properties"]["k"]["maximum"] == 1000 and "events" in body["required"]
    assert httpx.get(srv.url + "/docs").status_code == 200


@pytest.mark.parametrize("k", [1, 7, 300, 1000])
def test_k_beyond_the_catalogue_returns_every_rankable_item_once(world, serve, k):
    srv = serve(world.sasrec, catalogue=world.sasrec_catalogue)
    ids, scores = got(post(srv, "/v1/retrieve", {"events": world.events(1), "k": k}))
    assert len(ids) == min(k, world.ds.n_items) and len(set(ids)) == len(ids)
    assert scores == sorted(scores, reverse=True)
