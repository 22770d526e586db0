"""The generic training loop: learning, determinism, resume, checkpoints, DDP under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from crbr.config import from_dict, ExperimentConfig
from crbr.data.dataset import leave_one_out, train_item_counts
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.eval.evaluator import Evaluator
from crbr.models import build_model
from crbr.train.checkpoint import load_model_from_checkpoint, load_state
from crbr.train.loop import Trainer, build_optimizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world():
    return generate(SyntheticConfig.tiny(seed=3))


def cfg(tmp_path, **train):
    d = {
        "name": "t",
        "data": {"name": "synthetic", "synthetic": {"seed": 3}},
        "model": {"name": "sasrec", "max_len": 20, "hidden": 32, "n_layers": 1, "n_heads": 1, "dropout": 0.1},
        "train": {"epochs": 4, "batch_size": 32, "lr": 3e-3, "patience": 50, "seed": 1, "progress": False, "threads": 1, **train},
        "eval": {"batch_size": 64},
        "out_dir": str(tmp_path),
    }
    return from_dict(ExperimentConfig, d)


def fit(world, c, resume=False):
    ds = world.dataset
    split = leave_one_out(ds)
    torch.manual_seed(c.train.seed)
    model = build_model(c.model_name, c.model_params, ds)
    tr = Trainer(model, ds, split, c, max_len=model.config.max_len)
    return tr, tr.fit(resume=resume)


def test_learns_far_above_popularity(world, tmp_path):
    tr, res = fit(world, cfg(tmp_path, epochs=8))
    assert not tr.model.training  # fit hands the model back ready for inference
    ds, split = tr.ds, tr.split
    counts = train_item_counts(ds, split)
    pop = torch.as_tensor(counts, dtype=torch.float32)
    pop_res = Evaluator(ds, split.test, counts, max_len=20).evaluate(lambda b: pop.expand(len(b["items"]), -1))
    assert res.test.metrics["NDCG@10"] > 1.5 * pop_res.metrics["NDCG@10"]
    # files of a run
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and "valid_NDCG@10" in rows[0] and "elapsed_s" in rows[0]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"]["NDCG@10"] == pytest.approx(res.test.metrics["NDCG@10"])
    assert "full ranking" in saved["protocol"]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_best_checkpoint_rebuilds_the_model_from_its_metadata(world, tmp_path):
    tr, res = fit(world, cfg(tmp_path, epochs=3))
    model, meta = load_model_from_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    assert meta["model_name"] == "sasrec" and meta["model_config"]["hidden"] == 32
    assert meta["experiment"]["train"]["lr"] == pytest.approx(3e-3)
    again = tr.test_eval.evaluate(model.score)
    assert again.metrics == pytest.approx(res.test.metrics)


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_continues_exactly(world, tmp_path, ema_decay):
    """2 epochs + resume to 4 epochs == 4 epochs straight (same weights, same metrics), with and
    without a moving average of the weights."""
    straight_dir, split_dir = tmp_path / "a", tmp_path / "b"
    tr_a, res_a = fit(world, cfg(straight_dir, epochs=4, ema_decay=ema_decay))
    fit(world, cfg(split_dir, epochs=2, ema_decay=ema_decay))
    tr_b, res_b = fit(world, cfg(split_dir, epochs=4, ema_decay=ema_decay), resume=True)
    assert res_b.epochs_run == 4
    for (k, a), (_, b) in zip(tr_a.model.state_dict().items(), tr_b.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert res_b.test.metrics == pytest.approx(res_a.test.metrics)
    hist = (split_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in hist[1:]] == ["1", "2", "3", "4"]


def test_ema_weights_are_the_moving_average_and_are_what_is_validated(world, tmp_path):
    """train.ema_decay: after every optimizer step e <- d e + (1 - d) w (the first step copies w);
    last.safetensors holds e, the validation row of the epoch scores e, and the raw weights in
    last.pt stay the optimizer's own."""
    d, raw = 0.8, []  # raw: the model's weights after each optimizer step
    c = cfg(tmp_path, epochs=2, ema_decay=d)
    ds = world.dataset
    torch.manual_seed(c.train.seed)
    model = build_model(c.model_name, c.model_params, ds)

    def snapshot(opt, args, kwargs):
        raw.append({k: v.detach().clone() for k, v in model.named_parameters()})

    handle = register_optimizer_step_post_hook(snapshot)
    try:
        tr = Trainer(model, ds, leave_one_out(ds), c, max_len=model.config.max_len)
        tr.fit()
    finally:
        handle.remove()
    assert len(raw) > 3
    ema = dict(raw[0])
    for w in raw[1:]:
        ema = {k: d * ema[k] + (1 - d) * w[k] for k in ema}
    kept, _ = load_model_from_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    last_raw = load_state(tmp_path / "checkpoints" / "last.pt")["model"]
    for k, v in kept.named_parameters():
        torch.testing.assert_close(v.detach(), ema[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(last_raw[k], raw[-1][k]), k
    assert any(not torch.allclose(v.detach(), raw[-1][k]) for k, v in kept.named_parameters())
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("valid_NDCG@10")
    kept.eval()
    with torch.no_grad():
        valid = tr.valid_eval.evaluate(kept.score)
    assert float(rows[-1].split(",")[col]) == pytest.approx(valid.metrics["NDCG@10"])
    with pytest.raises(ValueError, match="ema_decay"):
        cfg(tmp_path, ema_decay=1.0)


def test_a_non_finite_loss_stops_training_and_names_the_epoch(world, tmp_path):
    """The loss is read back from the device in batches of steps; a NaN among them still stops the
    run with the epoch named, before any checkpoint of the broken weights is written."""
    c = cfg(tmp_path, epochs=2)
    ds = world.dataset
    model = build_model(c.model_name, c.model_params, ds)
    orig, calls = model.forward, [0]

    def forward(batch):
        loss, logs = orig(batch)
        calls[0] += 1
        return (loss * float("nan") if calls[0] == 3 else loss), logs

    model.forward = forward
    tr = Trainer(model, ds, leave_one_out(ds), c, max_len=model.config.max_len)
    with pytest.raises(FloatingPointError, match="epoch 1: loss is nan"):
        tr.fit()
    assert calls[0] == 3 and not (tmp_path / "checkpoints").exists()


def test_early_stopping_stops_on_patience(world, tmp_path):
    _, res = fit(world, cfg(tmp_path, epochs=30, lr=0.0, patience=2))
    assert res.epochs_run == 3  # epoch 1 sets the best, two more without improvement


def test_learning_rate_decays_on_a_validation_plateau(world, tmp_path):
    """lr_decay: the rate is multiplied after lr_patience validations without improvement, down
    to lr_min; an improvement resets the count. An lr of 1e-9 leaves validation flat."""
    fit(world, cfg(tmp_path, epochs=6, lr=1e-9, lr_decay=0.5, lr_patience=2, lr_min=3e-10))
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("lr")
    lrs = [float(r.split(",")[col]) for r in rows[1:]]
    assert lrs == pytest.approx([1e-9, 1e-9, 5e-10, 5e-10, 3e-10, 3e-10])
    with pytest.raises(ValueError, match="lr_decay"):
        cfg(tmp_path, lr_decay=0.0)


def test_optimizer_groups_follow_the_models_lr_scales():
    """build_optimizer: one group as Adam(model.parameters()) without multipliers; with them, the
    named parameters train at lr x multiplier; a name the model lacks is an error naming it."""
    class Two(torch.nn.Module):
        def __init__(self, scales):
            super().__init__()
            self.a, self.b, self.scales = torch.nn.Linear(2, 2), torch.nn.Parameter(torch.zeros(())), scales

        def lr_scales(self):
            return self.scales

    plain = build_optimizer(Two({}), 1e-3)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["lr"] == 1e-3
    m = Two({"b": 0.25, "a.bias": 0.25})
    opt = build_optimizer(m, 1e-3, weight_decay=0.1)
    by_lr = {g["lr"]: [id(p) for p in g["params"]] for g in opt.param_groups}
    assert by_lr == {1e-3: [id(m.a.weight)], 2.5e-4: [id(m.b), id(m.a.bias)]}  # named_parameters order
    assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)
    with pytest.raises(KeyError, match="'c'"):
        build_optimizer(Two({"c": 0.5}), 1e-3)


@pytest.mark.slow
def test_ddp_two_processes_train_and_evaluate(tmp_path):
    """`torchrun --nproc_per_node 2 crbr train` trains with DDP (gloo) and evaluates over both shards."""
    env = {**os.environ, "CRBR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    base = ["-c", str(ROOT / "configs" / "quickstart.yaml"), f"out_dir={out}", "data.synthetic.n_users=200",
            "data.synthetic.n_items=300", "data.synthetic.n_categories=10", "data.synthetic.history_median=30",
            "data.synthetic.max_history=300", "model.max_len=20", "model.hidden=32", "train.epochs=2",
            "train.progress=false", "train.threads=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "crbr.cli.main", "train", *base]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2
    assert res["epochs_run"] == 2 and res["test"]["NDCG@10"] > 0
    # all 200 users evaluated once in total, although each rank scored only half of them
    assert "users: 200" in res["protocol"]
    # single-process evaluation of the saved best weights gives the same test metrics
    p2 = subprocess.run([sys.executable, "-m", "crbr.cli.main", "evaluate", "--checkpoint",
                         str(out / "checkpoints" / "best.safetensors")], env=env, capture_output=True, text=True,
                        timeout=300, cwd=ROOT)
    assert p2.returncode == 0, p2.stderr[-3000:]
    line = next(l for l in p2.stdout.splitlines() if l.strip().startswith("10 "))
    hr10 = float(line.split()[1])
    assert hr10 == pytest.approx(res["test"]["HR@10"], abs=1e-4)


@pytest.mark.slow
def test_ddp_trains_a_model_whose_batches_leave_parameters_unused(tmp_path):
    """The Q-Former with Task A off (the B-only ablation) never uses its ITC heads: DDP must be
    built with find_unused_parameters, or the second step fails ("Expected to have finished
    reduction in the prior iteration")."""
    env = {**os.environ, "CRBR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "crbr.cli.main", "train", "-c", str(ROOT / "configs" / "quickstart.yaml"), f"out_dir={out}",
           "data.synthetic.n_users=200", "data.synthetic.n_items=300", "data.synthetic.n_categories=10",
           "data.synthetic.history_median=30", "data.synthetic.max_history=300",
           "model={name: qformer, max_len: 32, hidden: 32, n_queries: 4, n_layers: 1, n_heads: 2, n_negatives: 32, itc_weight: 0.0}",
           "train.epochs=2", "train.batch_size=16", "train.progress=false", "train.threads=1"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and res["epochs_run"] == 2


def test_bf16_autocast_trains_and_evaluates_in_fp32(world, tmp_path):
    tr, res = fit(world, cfg(tmp_path, epochs=3, bf16=True))
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.test.metrics["NDCG@10"] > 0


def test_shutdown_distributed_leaves_the_group(tmp_path):
    """`shutdown_distributed` is a no-op without a process group and destroys one that exists."""
    import torch.distributed as dist

    from crbr.train.distributed import shutdown_distributed

    shutdown_distributed()  # nothing to leave
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown_distributed()
    assert not dist.is_initialized()


def test_results_record_the_code_version_the_run_started_with(world, tmp_path, monkeypatch):
    """A commit made while a run trains is not recorded as its code: results.json keeps the version
    read when the Trainer was built."""
    import crbr.train.loop as loop

    c = cfg(tmp_path, epochs=1)
    ds = world.dataset
    model = build_model(c.model_name, c.model_params, ds)
    loop.code_version.cache_clear()
    monkeypatch.setattr(loop.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout="aaa111\n"))
    tr = Trainer(model, ds, leave_one_out(ds), c, max_len=model.config.max_len)
    loop.code_version.cache_clear()
    monkeypatch.setattr(loop.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout="bbb222\n"))
    tr.fit()
    loop.code_version.cache_clear()
    assert json.loads((tmp_path / "results.json").read_text())["code_version"] == "aaa111"
