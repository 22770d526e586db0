"""`crbr evaluate` / `crbr retrieve --checkpoint` with a category scope, a control token and the
model's declared rank options; the evaluator's scope against a hand-built reference."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from crbr.checkpoint import save_weights
from crbr.cli.main import main
from crbr.config import ExperimentConfig
from crbr.data.batching import history_batch
from crbr.data.prepare import prepare_with_split
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.eval import Evaluator
from crbr.data.dataset import train_item_counts
from crbr.models import build_model
from crbr.settings import call_options, from_dict

WORLD = dict(n_users=120, n_items=150, n_categories=6, dim=16, history_median=20.0, max_history=100, seed=3)


def experiment(model: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {"name": "rank_options_test", "data": {"name": "synthetic", "synthetic": WORLD},
                                        "model": model, "eval": {"ks": [5, 10]}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from crbr.semantic_ids import RQKMeansConfig, build_semantic_ids

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rank_options")
    w = generate(SyntheticConfig(**WORLD))
    cfg = experiment({"name": "sasrec", "hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 16})
    ds, split = prepare_with_split(cfg)
    sid = build_semantic_ids(ds, np.asarray(w.item_embeddings), RQKMeansConfig(levels=2, codebook_size=6), cache_dir=root)
    ids = str(sid.save(root / "ids.parquet"))
    gcfg = experiment({"name": "generative", "semantic_ids": ids, "window": 4, "hidden": 16, "n_layers": 1,
                       "n_heads": 2, "beam": 8})
    torch.manual_seed(0)
    gen = build_model("generative", gcfg.model_params, ds, split).eval()
    with torch.no_grad():
        gen.control_emb.weight[1].normal_(0, 1.0)  # [EXPLORE] changes the lists
    save_weights(root / "gen.safetensors", gen, "generative", gcfg.to_dict())
    torch.manual_seed(0)
    sas = build_model("sasrec", cfg.model_params, ds, split).eval()
    save_weights(root / "sas.safetensors", sas, "sasrec", cfg.to_dict())
    return root, ds, split, gen, sas


def in_scope(ds, names):
    return ds.category_scope(",".join(names))


def test_category_scope_by_name_and_id_and_errors(setup):
    _, ds, *_ = setup
    by_name = ds.category_scope(ds.category_names[2])
    by_id = ds.category_scope("2")
    assert np.array_equal(by_name, by_id) and by_name.sum() > 0 and not by_name[0]
    for i in np.nonzero(by_name)[0][:20]:
        assert 2 in ds.item_categories(i)
    with pytest.raises(ValueError, match="unknown category 'nope'"):
        ds.category_scope("nope")
    with pytest.raises(ValueError, match="unknown category '99'"):
        ds.category_scope("99")


def test_call_options_accept_only_declared_names():
    assert call_options(["beam=12", "control=explore"], ("beam", "control"), "model 'g'") == {"beam": 12, "control": "explore"}
    with pytest.raises(ValueError, match="model 's' accepts none"):
        call_options(["beam=3"], (), "model 's'")
    with pytest.raises(ValueError, match="accepts beam, control"):
        call_options(["beem=3"], ("beam", "control"), "model 'g'")


def test_scoped_evaluation_equals_a_reference_and_both_paths_agree(setup):
    """A scoring model evaluated within a scope: the scored path equals scores set to -inf
    outside the scope by hand, and the ranked path (top-K within the scope) gives the same
    numbers; targets outside the scope are misses."""
    _, ds, split, _, sas = setup
    scope = torch.from_numpy(in_scope(ds, ds.category_names[:2]))
    ev = Evaluator(ds, split.test, train_item_counts(ds, split), ks=(5, 10), max_len=sas.max_len)

    def masked(b):
        s = sas.score(b).float().clone()
        s[:, ~scope] = -float("inf")
        return s

    ref = ev.evaluate(masked)
    got = ev.evaluate_model(sas, scope=scope)
    ranked = ev.evaluate_ranked(lambda b, k, ex: sas.rank(b, k, exclude=ex, scope=scope), scope=scope)
    for name in ("HR@5", "HR@10", "NDCG@10", "Recall@10"):
        assert got.metrics[name] == pytest.approx(ref.metrics[name], abs=1e-12)
        assert ranked.metrics[name] == pytest.approx(ref.metrics[name], abs=1e-12)
    assert "scope:" in got.protocol and "scope:" in ranked.protocol
    no_targets = torch.ones(ds.n_items + 1, dtype=torch.bool)
    no_targets[torch.from_numpy(np.asarray(split.test.target_items, dtype=np.int64))] = False
    assert ev.evaluate_model(sas).metrics["HR@10"] > 0
    assert ev.evaluate_model(sas, scope=no_targets).metrics["HR@10"] == 0.0  # targets outside are misses
    with pytest.raises(ValueError, match="scope selects no item"):
        ev.evaluate_model(sas, scope=torch.zeros_like(scope))


def test_evaluate_cli_with_categories_and_control(setup, capsys):
    root, ds, split, gen, _ = setup
    ckpt = str(root / "gen.safetensors")
    cat = ds.category_names[1]
    assert main(["evaluate", "--checkpoint", ckpt, "--categories", cat, "--control", "explore",
                 "--rank-option", "beam=10", "--export-topk", str(root / "top.parquet")]) == 0
    out = capsys.readouterr().out
    assert "scope:" in out and "control explore" in out and "beam 10" in out
    exported = set(pq.read_table(root / "top.parquet").column("item_id").to_pylist())
    allowed = {str(ds.item_ids[i]) for i in np.nonzero(in_scope(ds, [cat]))[0]}
    assert exported and exported <= allowed


def test_retrieve_cli_passes_control_and_scope_to_rank(setup):
    root, ds, split, gen, _ = setup
    out = root / "ret.parquet"
    cat = ds.category_names[0]
    assert main(["retrieve", "--checkpoint", str(root / "gen.safetensors"), "--limit", "8", "-k", "5",
                 "--categories", cat, "--control", "explore", "--out", str(out)]) == 0
    rows = pq.read_table(out).to_pylist()
    es = split.test
    b = history_batch(ds, es.users[:8], es.hist_len[:8], gen.max_len)
    ref = gen.rank(b, 5, scope=torch.from_numpy(in_scope(ds, [cat])), control="explore")
    for j, u in enumerate(es.users[:8]):
        want = [str(ds.item_ids[i]) for i in ref.items[j].tolist() if i > 0]
        mine = sorted((r["rank"], r["item_id"]) for r in rows if r["user_id"] == str(ds.user_ids[u]))
        assert [i for _, i in mine] == want
    plain = gen.rank(b, 5, scope=torch.from_numpy(in_scope(ds, [cat])))
    assert not torch.equal(plain.items, ref.items)  # the control token was applied


def test_rank_options_errors_name_the_problem(setup, capsys):
    root, *_ = setup
    assert main(["retrieve", "--checkpoint", str(root / "sas.safetensors"), "--limit", "2", "--control", "explore",
                 "--out", str(root / "x.parquet")]) != 0
    assert "model 'sasrec' accepts none" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(root / "gen.safetensors"), "--control", "sideways"]) != 0
    assert "expected none, explore, repeat or cat:<category id>" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(root / "gen.safetensors"), "--categories", "nope"]) != 0
    assert "--categories: unknown category 'nope'" in capsys.readouterr().err
