"""Overload, timeouts and hot reload on the real server: a full queue answers 503 + Retry-After
and every accepted request is answered correctly; a reload under concurrent traffic fails no
request and each answer comes from the model version it reports; a failed reload keeps the old
model serving and says why; an index built from another checkpoint is refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time

import httpx
import numpy as np
import torch

from crbr.checkpoint import save_weights
from crbr.index import load_index
from crbr.models import load_model
from crbr.retrieval import retrieve


def slow_down(server, seconds: float) -> None:
    """Make every model call of the current snapshot take at least `seconds` longer."""
    snap = server.host.snapshot
    run = snap.run

    def slow(group, timing=None):
        time.sleep(seconds)
        return run(group, timing)

    snap.run = slow


def fire(url: str, bodies: list[dict], path: str = "/v1/retrieve") -> list[httpx.Response]:
    async def go():
        limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
            return await asyncio.gather(*[c.post(path, json=b) for b in bodies])

    return asyncio.run(go())


def replace_file(src, dst) -> None:
    tmp = f"{dst}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_a_full_queue_answers_503_and_loses_no_accepted_request(world, models, serve):
    srv = serve(world.sasrec, catalogue=world.sasrec_catalogue, queue_size=4, max_batch=2, max_wait_ms=1)
    slow_down(srv, 0.05)
    m = models["sasrec"]
    n = 60
    responses = fire(srv.url, [{"events": world.events(u % 30), "k": 10} for u in range(n)])
    ok = [u for u, r in enumerate(responses) if r.status_code == 200]
    busy = [r for r in responses if r.status_code == 503]
    assert len(ok) + len(busy) == n and ok and busy
    for r in busy:
        assert r.headers["retry-after"] == "1"
        assert r.json()["detail"][0]["field"] == "queue"
    for u in ok:
        items = responses[u].json()["items"]
        ref = m.rank(world.batch(u % 30, m.max_len), 10)
        assert [i["item"] for i in items] == world.original(ref.items[0].tolist())
        np.testing.assert_allclose([i["score"] for i in items], ref.scores[0].numpy(), rtol=1e-5, atol=1e-6)
    v = srv.metrics.value
    assert v("crbr_jobs_accepted_total") == len(ok) == v("crbr_jobs_answered_total", outcome="ok")
    assert v("crbr_jobs_rejected_total", reason="queue_full") == len(busy)
    assert v("crbr_http_requests_total", route="/v1/retrieve", status="503") == len(busy)
    assert srv.app.state.batcher.depth == 0  # nothing left behind
    assert httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(0), "k": 3}).status_code == 200


def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(world, serve):
    srv = serve(world.sasrec, catalogue=world.sasrec_catalogue, request_timeout_s=0.2)
    slow_down(srv, 0.6)
    r = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(0), "k": 3}, timeout=30)
    assert r.status_code == 504 and r.json()["detail"][0]["field"] == "request"
    srv.host.snapshot.run = type(srv.host.snapshot).run.__get__(srv.host.snapshot)  # fast again
    deadline = time.monotonic() + 10
    while srv.app.state.batcher.depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(0), "k": 3}).status_code == 200


def test_reload_under_concurrent_traffic_drops_nothing(world, models, serve, tmp_path):
    live = tmp_path / "live.safetensors"
    shutil.copyfile(world.sasrec, live)
    srv = serve(live, catalogue=world.sasrec_catalogue, max_batch=8, max_wait_ms=2)
    expected = {name: [models[name].rank(world.batch(u, 32), 10) for u in range(16)] for name in ("sasrec", "sasrec_v2")}
    results: list[tuple[int, httpx.Response]] = []
    stop = threading.Event()

    async def traffic():
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            async def loop(w: int):
                i = 0
                while not stop.is_set() or i < 5:
                    u = (w * 7 + i) % 16
                    results.append((u, await c.post("/v1/retrieve", json={"events": world.events(u), "k": 10})))
                    i += 1
            await asyncio.gather(*[loop(w) for w in range(8)])

    t = threading.Thread(target=lambda: asyncio.run(traffic()))
    t.start()
    try:
        versions = []
        for i in range(4):
            time.sleep(0.15)
            replace_file(world.sasrec_v2 if i % 2 == 0 else world.sasrec, live)
            r = httpx.post(srv.url + "/v1/admin/reload", timeout=60)
            assert r.status_code == 200 and r.json()["reloaded"], r.text
            versions.append(r.json()["model_version"])
        time.sleep(0.15)
    finally:
        stop.set()
        t.join(60)
    assert versions == [2, 3, 4, 5]
    assert len(results) > 40
    seen = set()
    for u, r in results:
        assert r.status_code == 200, r.text
        body = r.json()
        v = body["model_version"]
        seen.add(v)
        ref = expected["sasrec_v2" if v % 2 == 0 else "sasrec"][u]
        assert [i["item"] for i in body["items"]] == world.original(ref.items[0].tolist())
        np.testing.assert_allclose([i["score"] for i in body["items"]], ref.scores[0].numpy(), rtol=1e-5, atol=1e-6)
    assert len(seen) >= 3  # the traffic saw several models
    m = srv.metrics
    assert m.value("crbr_jobs_accepted_total") == m.value("crbr_jobs_answered_total", outcome="ok") == len(results)


def test_a_failed_reload_keeps_the_old_model_and_says_why(world, serve, tmp_path):
    live = tmp_path / "live.safetensors"
    shutil.copyfile(world.sasrec, live)
    srv = serve(live, catalogue=world.sasrec_catalogue)
    body = {"events": world.events(2), "k": 5}
    before = httpx.post(srv.url + "/v1/retrieve", json=body).json()
    data = bytearray(live.read_bytes())
    data[-100:] = bytes(100)  # corrupt the weights: the integrity hash no longer matches
    live.write_bytes(bytes(data))
    r = httpx.post(srv.url + "/v1/admin/reload", timeout=60)
    assert r.status_code == 409 and not r.json()["reloaded"]
    assert "hash" in r.json()["error"] and str(live) in r.json()["error"]
    assert httpx.post(srv.url + "/v1/retrieve", json=body).json() == before  # version 1 still serves
    info = httpx.get(srv.url + "/v1/model").json()
    assert info["model_version"] == 1 and info["last_reload"]["ok"] is False
    live.write_bytes(b"not a checkpoint")
    r = httpx.post(srv.url + "/v1/admin/reload", timeout=60)
    assert r.status_code == 409 and "checkpoint" in r.json()["error"]
    live.unlink()
    assert httpx.post(srv.url + "/v1/admin/reload", timeout=60).status_code == 409
    assert httpx.post(srv.url + "/v1/retrieve", json=body).json() == before
    assert 'crbr_reloads_total{result="failed"} 3.0' in httpx.get(srv.url + "/metrics").text


def test_index_reload_swaps_model_and_index_together(world, models, serve, tmp_path, cli):
    ckpt, idx = tmp_path / "st.safetensors", tmp_path / "idx"
    shutil.copyfile(world.set_transformer, ckpt)
    assert cli(["index", "build", "--checkpoint", str(ckpt), "--kind", "hnsw", "--param", "M=8", "--out", str(idx)]) == 0
    srv = serve(ckpt, index=idx)
    m2, meta = load_model(world.set_transformer)
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_weights(tmp_path / "st2.safetensors", m2, "set_transformer", meta["experiment"])
    replace_file(tmp_path / "st2.safetensors", ckpt)  # the new model, but still the old index
    r = httpx.post(srv.url + "/v1/admin/reload", timeout=60)
    assert r.status_code == 409 and "another checkpoint" in r.json()["error"]
    assert cli(["index", "build", "--checkpoint", str(ckpt), "--kind", "hnsw", "--param", "M=8", "--out", str(idx)]) == 0
    r = httpx.post(srv.url + "/v1/admin/reload", timeout=60)
    assert r.status_code == 200 and r.json()["model_version"] == 2
    index = load_index(idx)
    for u in range(4):
        got = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(u), "k": 10}).json()
        ref = retrieve(m2.eval(), world.batch(u, m2.max_len), 10, index=index)
        assert [i["item"] for i in got["items"]] == world.original(ref.ids[0].tolist())
        assert [i["score"] for i in got["items"]] == ref.scores[0].tolist()
