import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crbr.data.dataset import leave_one_out
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.models import MODELS, ResidualMixture, ResidualMixtureConfig, build_model
from crbr.models.residual_mixture import balance_loss, fuse_competitive, fuse_residual


def make(mixture="residual", **kw):
    torch.manual_seed(0)
    cfg = ResidualMixtureConfig(n_items=30, n_actions=3, max_len=10, hidden=16, n_layers=1, n_heads=2, dropout=0.0,
                                mixture=mixture, vis_dim=5, sem_dim=7, **kw)
    m = ResidualMixture(cfg)
    g = torch.Generator().manual_seed(1)
    m.set_expert_features(vis_feats=torch.randn(31, 5, generator=g).numpy(), sem_feats=torch.randn(31, 7, generator=g).numpy())
    with torch.no_grad():  # a non-uniform router, so the per-item weights matter
        m.router.net[-1].weight.normal_(0, 1.0, generator=g)
    return m.eval()


def batch(B=3, L=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 31, (B, L), generator=g)
    items[0, :4] = 0  # left padding
    return {"items": items, "actions": (items > 0).long()}


def test_fusion_formula_on_hand_made_tensors():
    seq = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    vis = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    sem = torch.tensor([[2.0, 2.0], [-1.0, 0.0]])
    w = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    g = torch.tensor(0.1)
    out = fuse_residual(seq, vis, sem, w, g)
    expected = torch.tensor([[1.0 + 0.1 * (0.25 * 0 + 0.75 * 2), 0.0 + 0.1 * (0.25 * 1 + 0.75 * 2)],
                             [0.0 + 0.1 * (1.0 * 1 + 0.0 * -1), 2.0 + 0.1 * (1.0 * 1 + 0.0 * 0)]])
    assert torch.allclose(out, expected)
    # g = 0: exactly the backbone
    assert torch.equal(fuse_residual(seq, vis, sem, w, torch.tensor(0.0)), seq)
    w3 = torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    assert torch.allclose(fuse_competitive(seq, vis, sem, w3),
                          torch.tensor([[0.5 + 0.5, 0.25 + 0.5], [-1.0, 0.0]]))


@pytest.mark.parametrize("mixture", ["residual", "competitive"])
def test_score_equals_the_per_pair_formula(mixture):
    """The factorized full-catalogue score (one matmul of augmented vectors) equals the seed's
    formula evaluated explicitly for every (user, item) pair."""
    m = make(mixture, gating_init=0.3)
    b = batch()
    with torch.no_grad():
        s = m.score(b)  # (B, I)
        out = m.encode(b)
        seq, vis, sem = out.seq[:, -1], out.vis[:, -1], out.sem[:, -1]  # (B, D)
        E = m.backbone.item_emb.weight  # (I, D)
        w = m.route()  # (I, K)
        B, I = seq.shape[0], E.shape[0]
        ref = torch.empty(B, I)
        for u in range(B):
            for i in range(I):
                if mixture == "residual":
                    f = fuse_residual(m.seq_ln(seq[u]), m.vis_expert.out_ln(vis[u]), m.sem_expert.out_ln(sem[u]), w[i],
                                      m.gate)
                else:
                    f = fuse_competitive(seq[u], vis[u], sem[u], w[i])
                ref[u, i] = f @ E[i]
    assert torch.allclose(s, ref, atol=1e-4)


@pytest.mark.parametrize("mixture", ["residual", "competitive"])
def test_seen_bias_offsets_the_mixture_scores_and_its_training_logits(mixture):
    """model.seen_bias on the backbone: the mixture's full-catalogue scores get each window event's
    offset, and its CE equals a dense softmax over u'.v' plus the offsets of each position's prefix."""
    m = make(mixture, seen_bias=True)
    with torch.no_grad():
        m.backbone.seen_bias.copy_(torch.tensor([0.0, -2.0, 0.5]) / m.config.seen_bias_scale)
    b = batch()
    b["actions"] = (b["items"] > 0).long() * (1 + (b["items"] % 2))  # actions 1 and 2
    b["targets"] = torch.roll(b["items"], -1, 1) * (b["items"] > 0)
    items, actions, targets = b["items"], b["actions"], b["targets"]
    off = m.backbone.seen_offsets()
    with torch.no_grad():
        user, V = m.encode(b).user, m.item_vectors()  # (B, L, 3D), (I, 3D)
        plain = user[:, -1] @ V.T
        want = plain.clone()
        logits = user @ V.T  # (B, L, I)
        for u in range(items.shape[0]):
            for t in range(items.shape[1]):
                if items[u, t] > 0:
                    want[u, items[u, t]] += off[actions[u, t]]
                    logits[u, t:, items[u, t]] += off[actions[u, t]]
        assert torch.allclose(m.score(b), want, atol=1e-5)
        logits[..., 0] = float("-inf")
        sel = targets > 0
        out = m.loss(b)
        assert torch.allclose(out.logs["ce"], F.cross_entropy(logits[sel], targets[sel]), atol=1e-5)
        assert float(out.logs["seen_offset_1"]) == pytest.approx(-2.0)


def test_gate_initial_value_and_router_starts_uniform():
    m = make(gating_init=0.37)
    assert isinstance(m.gate, torch.nn.Parameter) and m.gate.requires_grad
    assert float(m.gate.detach()) == pytest.approx(0.37)
    torch.manual_seed(0)
    fresh = ResidualMixture(ResidualMixtureConfig(n_items=30, hidden=16, n_heads=2, vis_dim=5, sem_dim=7))
    assert float(fresh.gate.detach()) == pytest.approx(0.1)  # the seed's default
    assert fresh.mixture_stats() == pytest.approx({"w_vis": 0.5, "w_sem": 0.5, "gate": 0.1})
    fixed = ResidualMixture(ResidualMixtureConfig(n_items=30, hidden=16, n_heads=2, vis_dim=5, sem_dim=7,
                                                  learn_gate=False, gating_init=0.2))
    assert "gate" not in dict(fixed.named_parameters()) and float(fixed.gate_value()) == pytest.approx(0.2)


def test_gate_lr_scale_puts_the_gate_in_its_own_slower_adam_group():
    """gate_lr_scale: the optimizer the trainer and the federated clients build gives the gate
    lr x scale; one Adam step moves the gate by that rate (Adam's first step is lr x sign(grad))
    and every other parameter by at most the full rate."""
    from crbr.train.loop import build_optimizer

    m = make(gate_lr_scale=0.1).train()
    assert m.lr_scales() == {"gate": 0.1}
    opt = build_optimizer(m, lr=1e-2)
    gate_groups = [g for g in opt.param_groups if any(p is m.gate for p in g["params"])]
    assert len(gate_groups) == 1 and gate_groups[0]["params"] == [m.gate]
    assert gate_groups[0]["lr"] == pytest.approx(1e-3) and gate_groups[0]["lr_scale"] == 0.1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    b = batch()
    b["targets"] = torch.roll(b["items"], -1, 1) * (b["items"] > 0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.loss(b).loss.backward()
    opt.step()
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in m.named_parameters()}
    assert moved["gate"] == pytest.approx(1e-3, rel=1e-3)
    assert max(moved.values()) == pytest.approx(1e-2, rel=1e-3)
    assert make().lr_scales() == {} and make("competitive", gate_lr_scale=0.1).lr_scales() == {}
    assert make(learn_gate=False, gate_lr_scale=0.1).lr_scales() == {}  # a fixed gate is not trained
    with pytest.raises(ValueError, match="gate_lr_scale"):
        make(gate_lr_scale=0.0)


def test_balance_loss_is_minimal_at_uniform_usage():
    assert float(balance_loss(torch.tensor([0.5, 0.5]))) == 0.0
    assert float(balance_loss(torch.full((3,), 1 / 3))) == pytest.approx(0.0, abs=1e-12)
    grid = torch.linspace(0, 1, 101)
    vals = torch.stack([balance_loss(torch.stack([p, 1 - p])) for p in grid])
    assert int(vals.argmin()) == 50 and (vals[torch.arange(101) != 50] > 0).all()
    assert float(balance_loss(torch.tensor([1.0, 0.0]))) == pytest.approx(1.0)  # 2 * (0.25 + 0.25)


@pytest.mark.parametrize("mixture", ["residual", "competitive"])
def test_loss_trains_every_group_and_logs(mixture):
    m = make(mixture).train()
    b = batch()
    b["targets"] = torch.roll(b["items"], -1, 1) * (b["items"] > 0)
    out = m.loss(b)
    assert torch.isfinite(out.loss) and {"ce", "balance"} <= set(out.logs)
    out.loss.backward()
    groups = m.parameter_groups()
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())  # disjoint cover
    grads = dict(m.named_parameters())
    for gname, params in groups.items():
        if params:
            assert any(grads[n].grad is not None and grads[n].grad.abs().sum() > 0 for n in params), gname
    assert groups["gate"] == (["gate"] if mixture == "residual" else [])


def test_build_model_loads_both_feature_specs_and_round_trips():
    ds = generate(SyntheticConfig.tiny(seed=3)).dataset
    split = leave_one_out(ds)
    m = build_model("residual_mixture", {"max_len": 12, "hidden": 16, "n_heads": 2, "n_layers": 1,
                                         "vis_features": "categories", "sem_features": "random:8:3"}, ds, split)
    assert m.config.vis_dim == ds.n_categories and m.config.sem_dim == 8
    assert m.vis_feats.shape == (ds.n_items + 1, ds.n_categories) and float(m.sem_feats[0].abs().sum()) == 0.0
    assert torch.allclose(m.sem_feats[1:].norm(dim=1), torch.ones(ds.n_items))
    # a model rebuilt from its config alone + state dict (what a checkpoint holds) scores the same
    cls, cfg_cls = MODELS["residual_mixture"]
    import dataclasses

    m2 = cls(cfg_cls(**dataclasses.asdict(m.config)))
    m2.load_state_dict(m.state_dict())
    b = {"items": torch.tensor([[0, 0, 3, 4, 5]]), "actions": torch.tensor([[0, 0, 1, 1, 1]])}
    m.eval(), m2.eval()
    with torch.no_grad():
        assert torch.equal(m.score(b), m2.score(b))
    with pytest.raises(ValueError, match="mixture"):
        ResidualMixtureConfig(mixture="soft")


def test_diagnostics_report_gate_and_usage():
    m = make()
    b = batch()
    d = m.diagnostics(b, item_bucket=np.zeros(31, dtype=int), targets=torch.tensor([3, 4, 0]))
    assert d["gate"] == pytest.approx(0.1)
    assert d["w_vis"] + d["w_sem"] == pytest.approx(1.0)
    assert d["target_w_vis"] + d["target_w_sem"] == pytest.approx(1.0)
    assert d["aux_ratio"] > 0 and list(d["bucket_w"]) == [0]


def test_noise_inputs_carry_no_item_information():
    m = make(expert_inputs="noise")
    b = batch()
    items = b["items"]
    torch.manual_seed(5)
    x1 = m.expert_inputs("vis", items)
    x2 = m.expert_inputs("vis", items)
    assert x1.shape == (*items.shape, 5)
    real = items > 0
    # unit rows at real positions, zeros at padding, fresh on every call
    assert torch.allclose(x1[real].norm(dim=-1), torch.ones(int(real.sum())))
    assert float(x1[~real].abs().sum()) == 0.0
    assert not torch.allclose(x1, x2)
    # the same item at two positions gets unrelated vectors (features would repeat its row)
    rep = torch.tensor([[7, 7, 7]])
    x = m.expert_inputs("sem", rep)[0]  # (3, 7)
    assert (x @ x.T - torch.eye(3)).abs().max() < 0.999
    torch.manual_seed(5)  # seeded: reproducible
    assert torch.equal(m.expert_inputs("vis", items), x1)
    assert torch.equal(make().expert_inputs("sem", items), make().sem_feats[items])
    with pytest.raises(ValueError, match="expert_inputs"):
        ResidualMixtureConfig(expert_inputs="random")


def test_backbone_warm_start_loads_a_matching_sasrec_and_rejects_another(tmp_path):
    """backbone_checkpoint: the backbone starts as the trained SASRec (same weights, so the
    backbone's own scores are the SASRec's), the rest starts fresh; a SASRec of another
    architecture is refused with the differing setting named."""
    from crbr.models import SASRec, SASRecConfig
    from crbr.train.checkpoint import save_weights

    ds = generate(SyntheticConfig.tiny(seed=3)).dataset
    split = leave_one_out(ds)
    arch = {"max_len": 12, "hidden": 16, "n_heads": 2, "n_layers": 1, "seen_bias": True}
    torch.manual_seed(5)
    sas = SASRec(SASRecConfig(n_items=ds.n_items, n_actions=ds.n_actions, dropout=0.3, **arch))
    path = save_weights(tmp_path / "sasrec.safetensors", sas, "sasrec", {})
    params = {**arch, "vis_features": "categories", "sem_features": "random:8:3", "dropout": 0.5}
    m = build_model("residual_mixture", {**params, "backbone_checkpoint": str(path)}, ds, split)
    fresh = build_model("residual_mixture", params, ds, split)
    for (n, p), q in zip(m.backbone.state_dict().items(), sas.state_dict().values()):
        assert torch.equal(p, q), n
    assert not torch.equal(fresh.backbone.item_emb.weight, sas.item_emb.weight)
    b = {"items": torch.tensor([[0, 0, 3, 4, 5]]), "actions": torch.tensor([[0, 0, 1, 2, 1]])}
    m.eval(), sas.eval()
    with torch.no_grad():
        assert torch.equal(m.backbone.score(b), sas.score(b))
    with pytest.raises(ValueError, match="hidden: checkpoint 16, model 32"):
        build_model("residual_mixture", {**params, "hidden": 32, "backbone_checkpoint": str(path)}, ds, split)
    with pytest.raises(FileNotFoundError, match="backbone_checkpoint"):
        build_model("residual_mixture", {**params, "backbone_checkpoint": str(tmp_path / "nope.safetensors")}, ds, split)


def test_branch_stop_grad_keeps_scores_and_sends_the_item_table_only_the_backbone_gradient():
    """branch_stop_grad: same scores as the seed's model; the item table's gradient is exactly the
    gradient of the backbone's own term LN(seq).e_i, the expert terms add nothing to it."""
    plain, sg = make(gating_init=0.3), make(gating_init=0.3, branch_stop_grad=True)
    b = batch()
    assert torch.equal(plain.score(b), sg.score(b))
    D = sg.config.hidden
    u = sg.user_embedding(b).detach()  # (B, 3D)
    (u @ sg.item_vectors().T).pow(2).sum().backward()
    got = sg.backbone.item_emb.weight.grad.clone()
    E = sg.backbone.item_emb.weight
    E.grad = None
    (u[:, :D] @ E.T + (u[:, D:] @ sg.item_vectors()[:, D:].detach().T)).pow(2).sum().backward()
    assert torch.allclose(got, E.grad, atol=1e-5)
    E.grad = None
    (u @ plain.item_vectors().T).pow(2).sum().backward()
    assert not torch.allclose(got, plain.backbone.item_emb.weight.grad, atol=1e-3)  # the seed's model differs


def test_freeze_backbone_trains_everything_but_the_warm_started_sasrec(tmp_path):
    """freeze_backbone: after a training step the backbone still equals the SASRec it started from
    (and runs without dropout), while the experts, router and gate moved; without a checkpoint it is refused."""
    from crbr.models import SASRec, SASRecConfig
    from crbr.train.checkpoint import save_weights

    ds = generate(SyntheticConfig.tiny(seed=3)).dataset
    split = leave_one_out(ds)
    arch = {"max_len": 12, "hidden": 16, "n_heads": 2, "n_layers": 1}
    torch.manual_seed(5)
    sas = SASRec(SASRecConfig(n_items=ds.n_items, n_actions=ds.n_actions, **arch))
    path = save_weights(tmp_path / "sasrec.safetensors", sas, "sasrec", {})
    params = {**arch, "vis_features": "categories", "sem_features": "random:8:3", "dropout": 0.5,
              "backbone_checkpoint": str(path), "freeze_backbone": True}
    m = build_model("residual_mixture", params, ds, split).train()
    assert not m.backbone.training and m.vis_expert.training
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    items = torch.tensor([[0, 3, 4, 5, 6], [7, 8, 9, 10, 11]])
    b = {"items": items, "actions": (items > 0).long(), "targets": torch.tensor([[0, 4, 5, 6, 7], [8, 9, 10, 11, 12]])}
    m.loss(b).loss.backward()
    opt.step()
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("backbone.") for n in moved)
    assert {"gate", "router.net.3.weight", "vis_expert.proj.weight", "sem_expert.proj.weight", "seq_ln.weight"} <= moved
    with pytest.raises(ValueError, match="freeze_backbone needs backbone_checkpoint"):
        ResidualMixtureConfig(freeze_backbone=True)
