"""CRBR: beam search against exhaustive enumeration and a loop reference, Gumbel gradients,
path retrieval with merge & sort, and the balance loss keeping codes alive."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crbr.data.batching import history_batch, train_batch
from crbr.data.dataset import leave_one_out
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.models import build_model
from crbr.models.crbr_model import CRBR, CRBRConfig
from crbr.retrieval import retrieve
from crbr.train.checkpoint import load_model_from_checkpoint, save_weights

torch.set_num_threads(1)


def tiny(sizes=(3, 4, 2), d=8, beam=4, start="zero", route_on="pooled") -> CRBR:
    torch.manual_seed(0)
    base = dict(n_items=30, tower=dict(n_items=30, hidden=8, n_queries=2, n_layers=1, n_heads=1), hidden=8, out_dim=d, n_heads=1, set_blocks=1)
    m = CRBR(CRBRConfig(n_items=30, base=base, codebook_sizes=list(sizes), router_hidden=16, beam=beam, start=start,
                        route_on=route_on)).eval()
    for blk in m.blocks:  # spread codes so that path scores differ clearly
        blk.codebook.data.normal_(0, 1)
    return m


def small_world_crbr(n_users: int, n_queries: int = 2, **cfg):
    """A tiny synthetic world and an untrained CRBR over an untrained Retrieval A (hidden 8)."""
    ds = generate(SyntheticConfig.tiny(seed=2, n_users=n_users)).dataset
    split = leave_one_out(ds)
    base = dict(n_items=ds.n_items, tower=dict(n_items=ds.n_items, hidden=8, n_queries=n_queries, n_layers=1, n_heads=1,
                                               max_len=16), hidden=8, out_dim=8, n_heads=1, set_blocks=1)
    torch.manual_seed(0)
    return ds, split, CRBR(CRBRConfig(n_items=ds.n_items, n_actions=ds.n_actions, base=base, **cfg))


def path_logprob(m: CRBR, ctx: torch.Tensor, path, memory: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """One user's path, one path at a time: ctx (D,), memory (T, Dm) or None."""
    v = ctx.clone() if m.config.start == "context" else torch.zeros_like(ctx)
    s = 0.0
    for blk, j in zip(m.blocks, path):
        z = blk.logits(ctx[None], v[None], None if memory is None else memory[None])[0]
        s += float(F.log_softmax(z, -1)[j].detach())
        v = v + blk.codebook[j]
    return s, F.normalize(v, dim=-1)


@pytest.mark.parametrize("start, route_on", [("zero", "pooled"), ("context", "pooled"), ("zero", "tokens"), ("context", "tokens")])
def test_beam_search_with_full_width_equals_exhaustive_enumeration(start, route_on):
    """The batched beam (all users and paths at once; with route_on="tokens" every path reads the
    token set with its own query) equals scoring each path alone."""
    m = tiny(start=start, route_on=route_on)
    ctx = torch.randn(3, 8)
    mem = torch.randn(3, 5, 8) if route_on == "tokens" else None
    n_paths = 3 * 4 * 2
    out = m.beam_search(ctx, beam=n_paths, memory=mem)
    for u in range(3):
        mu = None if mem is None else mem[u]
        ref = sorted(((path_logprob(m, ctx[u], p, mu)[0], p) for p in itertools.product(range(3), range(4), range(2))), reverse=True)
        got = [(float(s), tuple(c)) for s, c in zip(out.scores[u], out.codes[u].tolist())]
        assert [p for _, p in ref] == [p for _, p in got]
        np.testing.assert_allclose([s for s, _ in ref], [s for s, _ in got], rtol=1e-5, atol=1e-5)
        for b, p in enumerate(out.codes[u].tolist()):  # the query of each path is its normalized sum of codes
            torch.testing.assert_close(out.queries[u, b], path_logprob(m, ctx[u], p, mu)[1], atol=1e-5, rtol=1e-5)
    if mem is not None:  # the token read matters: another token set, another routing
        assert not torch.allclose(m.beam_search(ctx, beam=n_paths, memory=mem.flip(1) * 2).scores, out.scores)


@pytest.mark.parametrize("beam", [1, 2, 3, 5])
def test_narrow_beam_equals_a_loop_reference(beam):
    m = tiny()
    ctx = torch.randn(4, 8)
    out = m.beam_search(ctx, beam=beam)
    for u in range(4):
        paths = [((), 0.0)]
        for blk_i, blk in enumerate(m.blocks):
            cand = []
            for p, s in paths:
                v = sum((m.blocks[i].codebook[j] for i, j in enumerate(p)), torch.zeros(8))
                lp = F.log_softmax(blk.logits(ctx[u], v), -1)
                cand += [(p + (j,), s + float(lp[j].detach())) for j in range(len(lp))]
            paths = sorted(cand, key=lambda t: -t[1])[:beam]
        assert [p for p, _ in paths] == [tuple(c) for c in out.codes[u].tolist()]


@pytest.mark.parametrize("beam", [2, 3])
def test_first_layer_branching_equals_a_loop_reference(beam):
    """branching="first": B distinct layer-1 codes, each path then refined greedily, best first."""
    m = tiny()
    m.config.branching = "first"
    ctx = torch.randn(4, 8)
    out = m.beam_search(ctx, beam=beam)
    for u in range(4):
        lp1 = F.log_softmax(m.blocks[0].logits(ctx[u], torch.zeros(8)), -1)
        paths = []
        for j in lp1.topk(beam).indices.tolist():
            p, s = (j,), float(lp1[j].detach())
            for blk in m.blocks[1:]:
                v = sum((m.blocks[i].codebook[c] for i, c in enumerate(p)), torch.zeros(8))
                lp = F.log_softmax(blk.logits(ctx[u], v), -1)
                p, s = p + (int(lp.argmax()),), s + float(lp.max().detach())
            paths.append((s, p))
        paths.sort(key=lambda t: -t[0])
        assert [p for _, p in paths] == [tuple(c) for c in out.codes[u].tolist()]
        np.testing.assert_allclose([s for s, _ in paths], out.scores[u].numpy(), rtol=1e-5, atol=1e-5)
        assert len(set(out.codes[u, :, 0].tolist())) == beam


def test_gumbel_training_reaches_codebooks_and_routers():
    m = tiny().train()
    ctx = torch.randn(16, 8)
    q, states, pis = m.soft_path(ctx, tau=0.5)
    target = F.normalize(torch.randn(16, 8), dim=-1)
    loss = -(q * target).sum(-1).mean() + ((states[0] - target) ** 2).sum(-1).mean()
    loss.backward()
    for blk in m.blocks:
        assert blk.codebook.grad is not None and blk.codebook.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blk.mlp.parameters())
    assert all(torch.allclose(p.sum(-1), torch.ones(16)) for p in pis)
    assert not any(p.requires_grad for p in m.base.parameters())


def test_context_start_with_zero_codes_is_retrieval_a():
    """start="context": v(0) = Q, so with every code at zero each path's query is Retrieval A's user
    vector, path retrieval returns Retrieval A's exact top-k, and a soft training path is Q too;
    with codes the queries move off Q (they are not confined to sums of codes)."""
    ds, split, m = small_world_crbr(40, codebook_sizes=[4, 3], beam=3, start="context")
    m.eval()
    users = np.arange(ds.n_users)
    b = history_batch(ds, users, split.test.hist_len, 16)
    with torch.no_grad():
        q_a = m.base.user_vectors(b)  # (U, D) Retrieval A's query
        moved = m.beams(b).queries
        for blk in m.blocks:
            blk.codebook.zero_()
        out = m.beams(b)
        torch.testing.assert_close(out.queries, q_a[:, None, :].expand_as(out.queries))
        assert not torch.allclose(moved, out.queries)
        q_soft, _, _ = m.soft_path(m.context(b), tau=0.5)
        torch.testing.assert_close(q_soft, q_a)
        got = retrieve(m, b, k=10)
        ref = (q_a @ m.item_vectors()[1:].T).topk(10, dim=1)
    np.testing.assert_array_equal(got.ids, ref.indices.numpy() + 1)
    np.testing.assert_allclose(got.scores, ref.values.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="start"):
        CRBRConfig(start="item")


def test_token_routing_trains_its_reads_and_retrieves():
    """route_on="tokens": the loss reaches every block's token read, the routing inputs are
    Retrieval A's pooled Q (unchanged) and the token set it pools from, and scoring runs."""
    ds, split, m = small_world_crbr(60, n_queries=3, codebook_sizes=[4, 4], n_negatives=8, route_on="tokens", start="context")
    m.train()
    users = np.arange(20)
    m.loss(train_batch(ds, users, split.train_len[users], 16)).loss.backward()
    for blk in m.blocks:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blk.read.parameters())
    m.eval()
    b = history_batch(ds, users, split.test.hist_len[users], 16)
    with torch.no_grad():
        ctx, mem = m.routing_inputs(b)
        torch.testing.assert_close(ctx, m.base.user_vectors(b))
        assert mem.shape == (20, 3, 8)
        s = m.score(b)
    assert s.shape == (20, ds.n_items + 1) and torch.isneginf(s[:, 0]).all()
    with pytest.raises(ValueError, match="route_on"):
        CRBRConfig(route_on="items")


def test_train_context_pool_fine_tunes_only_retrieval_as_pooling_head():
    """train_context="pool": CRBR's loss reaches Retrieval A's pooling head; the Q-Former tower
    and the item tower (the indexed vectors) get no gradient."""
    for mode in ("frozen", "pool"):
        ds, split, m = small_world_crbr(60, codebook_sizes=[4, 4], n_negatives=8, train_context=mode)
        m.train()
        users = np.arange(20)
        m.loss(train_batch(ds, users, split.train_len[users], 16)).loss.backward()
        head = {id(p) for p in m.context_head_parameters()}
        assert head and len(head) < sum(1 for _ in m.base.parameters())
        for n, p in m.base.named_parameters():
            got = p.grad is not None and bool(p.grad.abs().sum() > 0)
            assert got == (mode == "pool" and id(p) in head), (mode, n)
    with pytest.raises(ValueError, match="train_context"):
        CRBRConfig(train_context="all")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fit_steps):
    """Q-Former -> Retrieval A -> CRBR with beta > 0 and beta = 0 on the synthetic world."""
    world = generate(SyntheticConfig.tiny(seed=2, n_users=1000))
    ds = world.dataset
    split = leave_one_out(ds)
    d = tmp_path_factory.mktemp("crbr")

    def fit(m, steps):
        return fit_steps(m, ds, split, steps)

    torch.manual_seed(0)
    q = fit(build_model("qformer", dict(hidden=32, n_queries=4, n_layers=1, n_heads=2, dropout=0.0, max_len=64, n_negatives=64), ds, split), 300)
    save_weights(d / "q.safetensors", q, "qformer", {})
    t = fit(build_model("two_tower", dict(tower_checkpoint=str(d / "q.safetensors"), hidden=32, out_dim=32, n_negatives=64), ds, split), 150)
    save_weights(d / "t.safetensors", t, "two_tower", {})
    models = {}
    for beta in (0.1, 0.0):
        torch.manual_seed(0)
        models[beta] = fit(build_model("crbr", dict(base_checkpoint=str(d / "t.safetensors"), codebook_sizes=[16, 16], beta=beta,
                                                    n_negatives=64, tau_decay=1e-3), ds, split), 400)
    return ds, split, models, d


def test_balance_loss_keeps_codes_alive(trained):
    ds, split, models, _ = trained
    users = np.arange(ds.n_users)
    b = history_batch(ds, users, split.test.hist_len, 64)
    spread, free = models[0.1].diagnostics(b), models[0.0].diagnostics(b)
    assert max(spread["dead_share_l1"], spread["dead_share_l2"]) <= 0.1, spread
    # the measured difference: without the balance term the second layer uses far fewer codes
    assert spread["perplexity_l2"] > 1.5 * free["perplexity_l2"], (spread, free)


@pytest.mark.parametrize("merge_score", ["similarity", "path"])
def test_path_retrieval_merges_without_duplicates_and_keeps_paths(trained, merge_score):
    ds, split, models, _ = trained
    m = models[0.1]
    users = np.arange(32)
    b = history_batch(ds, users, split.test.hist_len[:32], 64)
    m.config.merge_score = merge_score
    try:
        r = retrieve(m, b, k=40, quota=15)
        full = retrieve(m, b, k=20, per_vector_k=ds.n_items)
        with torch.no_grad():
            ref = m.score(b).topk(20, dim=1)
    finally:
        m.config.merge_score = "similarity"
    V = m.item_vectors()
    S = r.beams.scores.double()
    w = torch.exp(S - torch.logsumexp(S, 1, keepdim=True))  # path weights, by hand
    for u in range(32):
        ids = r.ids[u][r.ids[u] >= 0]
        assert len(ids) == len(set(ids.tolist())) and 0 not in ids
        assert np.bincount(r.path[u][r.ids[u] >= 0], minlength=m.config.beam).max() <= 15
        for i, p, s in zip(r.ids[u], r.path[u], r.scores[u]):  # each item's score: its path's similarity
            if i >= 0:  # (+ tau * log w_path with merge_score="path")
                off = m.config.nce_temperature * float(torch.log(w[u, p])) if merge_score == "path" else 0.0
                assert abs(float(r.beams.queries[u, p] @ V[i]) + off - s) < 1e-4
    # exact per-path search wide enough + merge == the exact max-over-beams ranking of score()
    np.testing.assert_allclose(full.scores, ref.values.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quota", [3, 7])
def test_quota_scoring_equals_quota_merge_of_exact_searches(trained, quota):
    """score() with merge_quota = m ranks first exactly the items retrieve(quota=m) returns when
    every path is searched exhaustively, in the same order."""
    ds, split, models, _ = trained
    m = models[0.1]
    users = np.arange(24)
    b = history_batch(ds, users, split.test.hist_len[:24], 64)
    k = m.config.beam * quota
    ref = retrieve(m, b, k=k, per_vector_k=ds.n_items, quota=quota)
    m.config.merge_quota = quota
    try:
        with torch.no_grad():
            got = m.score(b).topk(k, dim=1)
    finally:
        m.config.merge_quota = 0
    # where paths coincide (a later beam owning fewer than m items) the merge has fewer than k
    # items; the scoring ranks the remaining items after them instead of leaving holes
    found = ref.ids >= 0
    assert found.sum(1).min() >= quota
    np.testing.assert_array_equal(np.where(found, got.indices.numpy(), -1), ref.ids)
    np.testing.assert_allclose(got.values.numpy()[found], ref.scores[found], rtol=1e-5, atol=1e-5)
    assert (got.values.numpy()[~found] < -1e3).all()


def test_multi_path_training_loss_is_the_mixture_bound(trained):
    """train_paths = P: the NCE term is -log sum_p w_p p(i+ | path p) and gradients reach every block,
    for independent Gumbel paths and for a perturbed beam of hard paths, with one positive per cut
    or the next k (train_future)."""
    ds, split, models, _ = trained
    m = models[0.1]
    users = np.arange(16)
    b = train_batch(ds, users, split.train_len[users], 64)
    m.train()
    try:
        for P, sampling, branching, k in ((1, "gumbel", "global", 1), (3, "gumbel", "global", 1), (3, "beam", "global", 1),
                                          (3, "beam", "first", 1), (3, "beam", "global", 4)):
            m.config.train_paths, m.config.path_sampling, m.config.branching, m.config.train_future = P, sampling, branching, k
            torch.manual_seed(1)
            out = m.loss(b)
            assert torch.isfinite(out.loss) and out.logs["nce"] > 0
            out.loss.backward()
            assert all(blk.codebook.grad is not None and blk.codebook.grad.abs().sum() > 0 for blk in m.blocks)
            m.zero_grad()
    finally:
        m.config.train_paths, m.config.path_sampling, m.config.branching, m.config.train_future = 1, "gumbel", "global", 1
        m.eval()


def test_multi_target_mixture_terms_equal_a_pair_by_pair_reference():
    """train_future = k: each (user, positive) pair gives -log sum_p w_p p(j | path p) under the
    logQ-corrected candidate softmax without the user's other positives; Align is weighted by
    each path's responsibility for the pair."""
    m = tiny(sizes=(3, 4))
    m.config.n_negatives, m.config.nce_temperature = 5, 0.5
    m.item_logq.copy_(torch.log_softmax(torch.randn(31), 0))
    U, P, D = 3, 2, 8
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(U * P, D, generator=g), dim=-1)
    states = [torch.randn(U * P, D, generator=g) for _ in range(2)]
    log_w = torch.log_softmax(torch.randn(U, P, generator=g), 1)
    pos = torch.tensor([[4, 9, 0], [7, 0, 0], [9, 2, 11]])  # item 9 is a positive of two users
    torch.manual_seed(7)
    l_nce, l_align = m.mixture_terms(q, states, log_w, pos)
    torch.manual_seed(7)  # the same random negatives
    pairs = [(u, int(j)) for u in range(U) for j in pos[u] if j > 0]
    from crbr.models.losses import batch_candidates

    cand = batch_candidates(torch.tensor([j for _, j in pairs]), 5, 30)
    V = m.item_vectors()
    n_in = len(pairs)
    qprob = (n_in * m.item_logq[cand].double().exp() + (len(cand) - n_in) / 30) / len(cand)
    nll, align = [], []
    for a, (u, j) in enumerate(pairs):
        mine = {int(x) for x in pos[u] if x > 0}
        keepc = [b for b in range(len(cand)) if b == a or int(cand[b]) not in mine]
        joint = []
        for p in range(P):
            z = (q[u * P + p] @ V[cand].T).double() / 0.5 - qprob.log()
            joint.append(float(log_w[u, p]) + float(z[a] - torch.logsumexp(z[keepc], 0)))
        joint = torch.tensor(joint, dtype=torch.float64)
        nll.append(-torch.logsumexp(joint, 0))
        r = torch.softmax(joint, 0)
        align.append(sum(float(r[p]) * float(((v[u * P + p] - V[j]) ** 2).sum()) for v in states for p in range(P)) / 2)
    assert float(l_nce) == pytest.approx(float(torch.stack(nll).mean()), rel=1e-5)
    assert float(l_align) == pytest.approx(sum(align) / len(align), rel=1e-5)
    with pytest.raises(ValueError, match="train_future"):
        CRBRConfig(train_future=0)


def test_checkpoint_is_self_contained(trained, tmp_path):
    ds, split, models, d = trained
    m = models[0.1]
    save_weights(tmp_path / "c.safetensors", m, "crbr", {})
    m2, _ = load_model_from_checkpoint(tmp_path / "c.safetensors")
    b = history_batch(ds, np.arange(8), split.test.hist_len[:8], 64)
    with torch.no_grad():
        torch.testing.assert_close(m.score(b), m2.score(b))
