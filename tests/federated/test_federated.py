import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Context, RecordDict  # noqa: E402

from crbr.config import ExperimentConfig, from_dict  # noqa: E402
from crbr.data.dataset import leave_one_out  # noqa: E402
from crbr.data.synthetic import SyntheticConfig, generate  # noqa: E402
from crbr.federated import FederatedConfig, group_keys, load_federated_config, partition_users, run_federated  # noqa: E402
from crbr.federated.client import LOCAL_STATE_KEY  # noqa: E402
from crbr.models import build_model  # noqa: E402
from crbr.train.checkpoint import load_weights  # noqa: E402


@pytest.fixture(scope="module")
def world():
    ds = generate(SyntheticConfig.tiny(seed=3)).dataset
    return ds, leave_one_out(ds)


def experiment(tmp_path, **model):
    d = {"name": "fed", "data": {"name": "synthetic", "synthetic": {"seed": 3}},
         "model": {"name": "residual_mixture", "max_len": 12, "hidden": 16, "n_layers": 1, "n_heads": 1,
                   "dropout": 0.1, "vis_features": "categories", "sem_features": "random:8", **model},
         "train": {"batch_size": 32, "lr": 3e-3, "seed": 1, "progress": False, "threads": 1},
         "eval": {"batch_size": 128, "ks": [10]}, "out_dir": str(tmp_path)}
    return from_dict(ExperimentConfig, d)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_partitions_are_disjoint_and_cover_trainable_users():
    train_len = np.array([5, 1, 3, 0, 8, 2, 9, 4, 7, 6])
    for how in ("random", "contiguous", "activity"):
        parts = partition_users(train_len, 3, how, seed=0)
        allu = np.concatenate(parts)
        assert sorted(allu.tolist()) == [0, 2, 4, 5, 6, 7, 8, 9]  # users with >= 2 training events
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    act = partition_users(train_len, 2, "activity")
    assert train_len[act[0]].max() <= train_len[act[1]].min()  # light users vs heavy users
    with pytest.raises(ValueError):
        partition_users(train_len, 20)


def fresh_model(world, tmp_path):
    """The federated experiment's config, a freshly seeded model and a copy of its parameters."""
    ds, split = world
    cfg = experiment(tmp_path)
    torch.manual_seed(1)
    model = build_model(cfg.model_name, cfg.model_params, ds, split)
    return ds, split, cfg, model, params(model)


def test_two_clients_two_rounds_change_the_global_weights(world, tmp_path):
    ds, split, cfg, model, before = fresh_model(world, tmp_path)
    fed = FederatedConfig(num_clients=2, num_rounds=2)
    res = run_federated(cfg, fed, ds, split, model)
    assert res.rounds_run == 2 and res.best_round in (1, 2)
    assert [r["round"] for r in res.history] == [0, 1, 2]
    assert all("diag_gate" in r and "valid_NDCG@10" in r for r in res.history)
    assert all("client_gate" in r and "train_loss" in r for r in res.history[1:])
    load_weights(tmp_path / "checkpoints" / "last.safetensors", model)  # the global model after round 2
    after = params(model)
    for n in before:  # every parameter group was aggregated (no warm-up)
        assert not torch.equal(before[n], after[n]), n
    assert (tmp_path / "results.json").exists() and res.test.metrics["NDCG@10"] > 0
    # the checkpoint is an ordinary crbr checkpoint: it rebuilds the model and its experiment config
    from crbr.config import ExperimentConfig
    from crbr.train.checkpoint import load_model_from_checkpoint

    m2, meta = load_model_from_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    assert from_dict(ExperimentConfig, meta["experiment"]).model_name == "residual_mixture"
    assert meta["federated"]["num_clients"] == 2 and meta["round"] == res.best_round


def test_partial_aggregation_keeps_local_groups_during_warmup(world, tmp_path):
    from crbr.federated.client import ClientRuntime, register_runtime, _RUNTIMES
    from crbr.federated.engine import InProcessGrid, make_apps, SERVER_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity
    import copy

    ds, split, cfg, model, before = fresh_model(world, tmp_path)
    fed = FederatedConfig(num_clients=2, num_rounds=2, warmup_rounds=2)  # both rounds are warm-up
    rt = ClientRuntime.build(cfg, fed, ds, split, copy.deepcopy(model))
    key = register_runtime(rt)
    holder = {"ds": ds, "split": split, "model": model, "run_dir": tmp_path}
    server_app, client_app = make_apps(cfg, fed, holder, key)
    grid = InProcessGrid(client_app, 2)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SERVER_NODE_ID
    try:
        server_app(grid, Context(run_id=1, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config={}))
    finally:
        _RUNTIMES.pop(key, None)
    assert all(r["partial"] == 1 for r in holder["result"].history[1:])
    load_weights(tmp_path / "checkpoints" / "last.safetensors", model)
    after = params(model)
    shared = set(group_keys(model, ["backbone"]))
    local = [n for n in before if n not in shared]
    assert {n.split(".")[0] for n in local} == {"vis_expert", "sem_expert", "router", "gate"}
    for n in local:  # experts, router and gate never left the clients: the global copy is untouched
        assert torch.equal(before[n], after[n]), n
    assert any(not torch.equal(before[n], after[n]) for n in shared)  # the backbone was averaged
    # ... while each client trained and kept its own copy of the local groups
    copies = []
    for ctx in grid.contexts.values():
        st = ctx.state[LOCAL_STATE_KEY].to_torch_state_dict()
        assert set(st) == set(local)
        assert not torch.equal(st["gate"], before["gate"])
        copies.append(st)
    assert not torch.equal(copies[0]["gate"], copies[1]["gate"])  # trained on different users


def test_federated_cli_flags_reach_the_configs(tmp_path):
    yaml_text = """
name: f
data: {name: synthetic, synthetic: {seed: 3}}
model: {name: residual_mixture, max_len: 12, hidden: 16, n_layers: 1, n_heads: 1, vis_features: categories,
        sem_features: "random:8"}
train: {batch_size: 32, seed: 1, progress: false, threads: 1}
eval: {ks: [10], batch_size: 128}
federated: {num_clients: 3, num_rounds: 7}
"""
    p = tmp_path / "f.yaml"
    p.write_text(yaml_text)
    cfg, fed = load_federated_config(p, ["federated.warmup_rounds=2", "model.gating_init=0.3"])
    assert (fed.num_clients, fed.num_rounds, fed.warmup_rounds) == (3, 7, 2)
    assert cfg.model["gating_init"] == 0.3
    from crbr.cli.main import main

    rc = main(["federated", "-c", str(p), "--num-rounds", "1", "--num-clients", "2", "--gating-init", "0.25",
               "--partial-aggregation-warmup-rounds", "1", f"out_dir={tmp_path / 'run'}"])
    assert rc == 0
    import json

    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["federated"]["num_rounds"] == 1 and res["federated"]["warmup_rounds"] == 1
    assert res["config"]["model"]["gating_init"] == 0.25


def test_every_federated_config_loads():
    from pathlib import Path

    from crbr.models import MODELS, model_config

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "federated").glob("*.yaml"))
    assert files
    for p in files:
        cfg, fed = load_federated_config(p)
        assert cfg.model_name in MODELS, p
        model_config(cfg.model_name, cfg.model_params)
        assert fed.num_clients >= 2


def test_a_round_where_every_client_fails_stops_the_run(world, tmp_path):
    ds, split = world
    cfg = experiment(tmp_path)
    model = build_model(cfg.model_name, cfg.model_params, ds, split)
    fed = FederatedConfig(num_clients=2, num_rounds=2, local_lr=-1.0)  # Adam rejects it on every client
    with pytest.raises(RuntimeError, match="all 2 clients failed"):
        run_federated(cfg, fed, ds, split, model)
