import torch

from crbr.analysis import branch_stats, score_parts
from crbr.models import ResidualMixture, ResidualMixtureConfig


def model(**kw):
    torch.manual_seed(0)
    m = ResidualMixture(ResidualMixtureConfig(n_items=30, n_actions=3, max_len=10, hidden=16, n_layers=1, n_heads=2,
                                              dropout=0.0, vis_dim=5, sem_dim=7, gating_init=0.4, **kw))
    g = torch.Generator().manual_seed(1)
    m.set_expert_features(vis_feats=torch.randn(31, 5, generator=g).numpy(), sem_feats=torch.randn(31, 7, generator=g).numpy())
    with torch.no_grad():
        m.router.net[-1].weight.normal_(0, 1.0, generator=g)
        for e in (m.vis_expert.out_ln, m.sem_expert.out_ln):  # a non-zero LN bias: a constant branch part
            e.bias.normal_(0, 1.0, generator=g)
    return m.eval()


def batches(n=3, B=4, L=10):
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        items = torch.randint(1, 31, (B, L), generator=g)
        items[0, :3] = 0
        out.append({"items": items, "actions": (items > 0).long()})
    return out


def test_parts_sum_to_the_score_and_the_backbone_term_is_ln_seq_dot_e():
    m = model()
    for b in batches():
        s, br, u = score_parts(m, b)
        with torch.no_grad():
            assert torch.allclose(s + br, m.score(b), atol=1e-5)  # seen_bias off: the score is u'.v'
            seq = m.seq_ln(m.encode(b).seq[:, -1])
            assert torch.allclose(s, seq @ m.backbone.item_emb.weight.T, atol=1e-5)
        assert u.shape == (4, 32)


def test_a_branch_that_ignores_the_history_is_all_item_bias():
    """Experts whose output does not depend on their input (zero projection and positions): the
    branch's user side is one vector for every user (share 1), the user-specific rest is 0, and
    the item bias is that vector's score; with real experts the share is below 1."""
    m = model()
    with torch.no_grad():
        for e in (m.vis_expert, m.sem_expert):
            e.proj.weight.zero_(), e.proj.bias.zero_(), e.pos_emb.weight.zero_()
    st = branch_stats(m, batches())
    assert abs(st.mean_share - 1.0) < 1e-4 and st.rest_std < 1e-5 and st.bias_std > 1e-3
    _, br, _ = score_parts(m, batches()[0])
    assert torch.allclose(br[0], st.item_bias, atol=1e-5)
    live = branch_stats(model(), batches())
    assert live.mean_share < 0.95 and live.rest_std > 0.01
