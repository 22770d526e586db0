"""Models beyond one user vector, through the real server: CRBR answers with each item's beam path
and its codes (exactly, and searched in an index), the generative retriever decodes with the
request's control token, options, scope and excluded history. Every served model declares its
catalogue size (`n_items`), which the service reports."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from crbr.checkpoint import save_weights
from crbr.index import load_index
from crbr.models import build_model
from crbr.retrieval import retrieve


@pytest.fixture(scope="module")
def crbr(world, tmp_path_factory, cli, make_experiment):
    root = tmp_path_factory.mktemp("crbr")
    n = world.ds.n_items
    params = {"name": "crbr", "codebook_sizes": [4, 3], "router_hidden": 16, "beam": 3,
              "base": {"n_items": n, "hidden": 8, "out_dim": 8, "n_heads": 1, "set_blocks": 1,
                       "tower": {"n_items": n, "hidden": 8, "n_queries": 2, "n_layers": 1, "n_heads": 1, "max_len": 16}}}
    cfg = make_experiment(params)
    torch.manual_seed(0)
    m = build_model("crbr", cfg.model_params, world.ds, world.split).eval()
    with torch.no_grad():
        for blk in m.blocks:  # spread the codes so that paths differ clearly
            blk.codebook.normal_(0, 1)
    save_weights(root / "crbr.safetensors", m, "crbr", cfg.to_dict())
    assert cli(["index", "build", "--checkpoint", str(root / "crbr.safetensors"), "--kind", "exact",
                "--out", str(root / "idx")]) == 0
    return m, root / "crbr.safetensors", root / "idx"


def test_crbr_exact_answers_carry_each_items_best_path_and_codes(world, crbr, serve):
    m, ckpt, _ = crbr
    srv = serve(ckpt)
    assert httpx.get(srv.url + "/v1/model").json()["mode"] == "exact"
    for u in range(4):
        r = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(u), "k": 12}).json()
        b = world.batch(u, m.max_len)
        ref = m.rank(b, 12)
        assert [i["item"] for i in r["items"]] == world.original(ref.items[0].tolist())
        assert [i["score"] for i in r["items"]] == ref.scores[0].tolist()
        with torch.no_grad():
            qv = m.query_vectors(b)
            s = torch.einsum("td,kd->tk", qv.vectors[0], m.item_vectors()[ref.items[0]]) + qv.offsets[0][:, None]
        assert [i["path"] for i in r["items"]] == s.argmax(0).tolist()
        codes = qv.details["codes"][0].tolist()
        assert [i["codes"] for i in r["items"]] == [codes[t] for t in s.argmax(0).tolist()]
        assert [p["codes"] for p in r["paths"]] == codes and len(r["paths"]) == 3
        assert [p["score"] for p in r["paths"]] == qv.details["path_scores"][0].float().tolist()


def test_crbr_searched_in_an_index_answers_as_path_retrieval(world, crbr, serve):
    m, ckpt, idx = crbr
    srv = serve(ckpt, index=idx)
    index = load_index(idx)
    for u in range(4):
        r = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(u), "k": 10,
                                                       "options": {"beam": 2}}).json()
        res = retrieve(m, world.batch(u, m.max_len), 10, index=index, beam=2)
        assert [i["item"] for i in r["items"]] == world.original(res.ids[0].tolist())
        assert [i["score"] for i in r["items"]] == res.scores[0].tolist()
        assert [i["path"] for i in r["items"]] == res.path[0].tolist()
        codes = res.queries.details["codes"][0].tolist()
        assert [i["codes"] for i in r["items"]] == [codes[t] for t in res.path[0].tolist()]
        assert len(r["paths"]) == 2
    bad = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(0), "k": 10, "options": {"beem": 2}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "options"


@pytest.fixture(scope="module")
def generative(world, tmp_path_factory, make_experiment, world_settings):
    from crbr.data.synthetic import SyntheticConfig, generate
    from crbr.semantic_ids import RQKMeansConfig, build_semantic_ids

    root = tmp_path_factory.mktemp("gen")
    w = generate(SyntheticConfig(**world_settings))
    sid = build_semantic_ids(world.ds, np.asarray(w.item_embeddings), RQKMeansConfig(levels=2, codebook_size=8),
                             cache_dir=root)
    ids = str(sid.save(root / "ids.parquet"))
    params = {"name": "generative", "semantic_ids": ids, "item_features": "random:8:1", "window": 4, "hidden": 16,
              "n_layers": 1, "n_heads": 2, "beam": 8}
    cfg = make_experiment(params)
    torch.manual_seed(0)
    m = build_model("generative", cfg.model_params, world.ds, world.split).eval()
    with torch.no_grad():
        m.control_emb.weight[1].normal_(0, 1.0)  # make [EXPLORE] matter
    save_weights(root / "gen.safetensors", m, "generative", cfg.to_dict())
    return m, root / "gen.safetensors"


def test_generative_decodes_with_the_requests_control_options_and_scope(world, generative, serve):
    m, ckpt = generative
    srv = serve(ckpt)
    assert httpx.get(srv.url + "/v1/model").json()["mode"] == "rank"
    ds = world.ds
    cat = 2
    in_cat = torch.zeros(ds.n_items + 1, dtype=torch.bool)
    in_cat[torch.from_numpy(np.repeat(np.arange(ds.n_items + 1), np.diff(ds.cat_offsets))[ds.cat_ids == cat])] = True
    for u in range(3):
        ev, b = world.events(u), world.batch(u, m.max_len)
        cases = [({}, {}), ({"control": "explore"}, {"control": "explore"}),
                 ({"control": f"cat:{ds.category_names[cat]}"}, {"control": f"cat:{cat}"}),
                 ({"options": {"beam": 12}}, {"beam": 12}),
                 ({"scope": {"categories": [cat], "exclude_seen": True}}, {"scope": in_cat})]
        for extra, kw in cases:
            r = httpx.post(srv.url + "/v1/retrieve", json={"events": ev, "k": 6, **extra}).json()
            if "scope" in extra:
                seen = torch.tensor(sorted({int(i) for i in b["items"][0] if i > 0}))
                full = world.ds.items[world.ds.offsets[world.split.test.users[u]]:][:len(ev)]
                kw["exclude"] = torch.tensor(sorted(set(seen.tolist()) | {int(x) for x in full}))[None]
            ref = m.rank(b, 6, **kw)
            keep = ref.items[0] > 0
            assert [i["item"] for i in r["items"]] == world.original(ref.items[0][keep].tolist()), extra
            assert [i["score"] for i in r["items"]] == ref.scores[0][keep].tolist()
    plain = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(0), "k": 6}).json()
    explore = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(0), "k": 6, "control": "explore"}).json()
    assert plain["items"] != explore["items"]
    for control in ("cat:999", "cat:no-such-category", "sideways"):
        r = httpx.post(srv.url + "/v1/retrieve", json={"events": world.events(0), "k": 6, "control": control})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "control", r.text


def test_every_served_model_declares_its_catalogue_size_and_the_service_reports_it(world, models, crbr, generative,
                                                                                   serve):
    cases = {"sasrec": (models["sasrec"], world.sasrec),
             "set_transformer": (models["set_transformer"], world.set_transformer),
             "crbr": crbr[:2], "generative": generative}
    for name, (m, ckpt) in cases.items():
        assert m.n_items == m.config.n_items == world.ds.n_items and isinstance(m.n_items, int), name
        info = httpx.get(serve(ckpt).url + "/v1/model").json()
        assert info["catalogue_size"] == m.n_items and info["config"]["n_items"] == m.n_items, name


def test_a_model_whose_config_has_no_catalogue_says_so():
    from dataclasses import dataclass

    from crbr.models.base import LossOutput, Recommender

    @dataclass
    class NoItemsConfig:
        max_len: int = 4

    class NoItems(Recommender):
        model_name = "test_no_items"
        config_class = NoItemsConfig

        def __init__(self, config):
            super().__init__()
            self.config = config

        def loss(self, batch):
            return LossOutput(torch.zeros(()))

    with pytest.raises(TypeError, match="NoItems declares no item catalogue.*NoItemsConfig.*n_items"):
        NoItems(NoItemsConfig()).n_items
