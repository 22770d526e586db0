"""The generic loop (any model, any batches), the model hooks it calls, and what --resume may change."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from crbr.checkpoint import load_state, read_metadata, save_state
from crbr.config import ExperimentConfig, from_dict
from crbr.models.base import LossOutput, Recommender
from crbr.train.loop import TrainLoop
from crbr.train.resume import RESUMABLE, ResumeConflict


# ----------------------------------------------------------------------------- a model that ranks nothing
@dataclass
class AEConfig:
    dim: int = 8
    hidden: int = 3
    max_len: int = 1


class AutoEncoder(Recommender):
    """Reconstructs vectors through a narrow layer; ranking is irrelevant to it."""

    model_name = "test_autoencoder"
    config_class = AEConfig

    def __init__(self, config: AEConfig):
        super().__init__()
        self.config = config
        self.enc = torch.nn.Linear(config.dim, config.hidden)
        self.dec = torch.nn.Linear(config.hidden, config.dim)
        self.steps: list[int] = []

    def recon(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.dec(self.enc(x)) - x) ** 2).mean()

    def loss(self, batch):
        return LossOutput(self.recon(batch["x"]))

    def after_backward(self, step):
        self.steps.append(step)
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in self.parameters()))
        return {"norm": norm, "step": step}


class Vectors(Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


def low_rank(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g) @ torch.randn(3, 8, generator=torch.Generator().manual_seed(99))


def ae_config(tmp_path, **train):
    return from_dict(ExperimentConfig, {
        "name": "ae", "model": {"name": "autoencoder_alias"}, "out_dir": str(tmp_path),
        "train": {"epochs": 6, "batch_size": 32, "lr": 1e-2, "seed": 0, "progress": False, "threads": 1,
                  "monitor": "recon", "patience": 50, **train}})


def fit_ae(tmp_path, resume=False, data=None, validate=True, **train):
    c = ae_config(tmp_path, **train)
    torch.manual_seed(0)
    model = AutoEncoder(AEConfig())
    xv = low_rank(64, 1)
    loop = TrainLoop(model, c, data if data is not None else Vectors(low_rank(256, 0)),
                     validate=(lambda m: {"recon": m.recon(xv)}) if validate else None, maximize=False)
    return model, loop.fit(resume=resume)


def test_a_non_sequence_model_trains_through_the_same_loop(tmp_path):
    """A torch Dataset of vectors and a validation function: the loss falls, the best weights
    (lowest validation loss) are checkpointed under the model's own name and kept by the model."""
    model, res = fit_ae(tmp_path)
    losses = [h["train_loss"] for h in res.history]
    assert res.epochs_run == 6 and losses[-1] < 0.5 * losses[0]
    valid = [h["valid_recon"] for h in res.history]
    assert res.best_epoch == 1 + valid.index(min(valid)) and res.best_valid["recon"] == pytest.approx(min(valid))
    ckpt = tmp_path / "checkpoints"
    assert {p.name for p in ckpt.iterdir()} >= {"best.safetensors", "last.safetensors", "last.pt"}
    meta = read_metadata(ckpt / "best.safetensors")
    assert meta["model_name"] == "test_autoencoder"  # the model's name, not the experiment's alias
    assert meta["epoch"] == res.best_epoch and meta["model_config"] == {"dim": 8, "hidden": 3, "max_len": 1}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["valid"]["recon"] == pytest.approx(min(valid)) and saved["epochs_run"] == 6
    assert res.test is None and res.valid is None


def test_after_backward_runs_after_every_backward_pass_and_its_numbers_are_logged(tmp_path):
    """model.after_backward(step): called once per backward pass with the run's step count, its
    numbers logged as epoch means (grad_*); the count continues across a resume."""
    model, res = fit_ae(tmp_path, epochs=3)
    steps_per_epoch = 256 // 32
    assert model.steps == list(range(3 * steps_per_epoch))
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert "grad_norm" in head and "grad_step" in head
    col = head.index("grad_step")
    assert [float(r.split(",")[col]) for r in rows[1:]] == [8 * e + 3.5 for e in range(3)]
    assert all(float(r.split(",")[head.index("grad_norm")]) > 0 for r in rows[1:])
    model, _ = fit_ae(tmp_path, resume=True, epochs=5)
    assert model.steps == list(range(3 * steps_per_epoch, 5 * steps_per_epoch))


def test_the_generic_loop_resumes_exactly(tmp_path):
    straight, _ = fit_ae(tmp_path / "a", epochs=5)
    fit_ae(tmp_path / "b", epochs=2)
    resumed, res = fit_ae(tmp_path / "b", resume=True, epochs=5)
    assert res.epochs_run == 5
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_an_iterable_of_batches_without_validation(tmp_path):
    """Batches given as a list (iterated as they are every epoch), no validation: no best weights,
    no early stopping, the final weights are the result."""
    x = low_rank(96, 0)
    batches = [{"x": x[i:i + 32]} for i in range(0, 96, 32)]
    model, res = fit_ae(tmp_path, data=batches, validate=False, epochs=4)
    assert res.epochs_run == 4 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert not (tmp_path / "checkpoints" / "best.safetensors").exists()
    assert (tmp_path / "checkpoints" / "last.safetensors").exists() and res.best_valid == {}
    assert "valid_recon" not in (tmp_path / "metrics.csv").read_text()


# ----------------------------------------------------------------------------- resume: the rule
def write_events(tmp_path: Path) -> Path:
    rows = ["user,item,ts"]
    for u in range(30):
        for t in range(12):
            rows.append(f"u{u},m{(u + t) % 17},{1000 + t}")
    p = tmp_path / "events.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.fixture
def experiment(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""
name: tiny
data: {{name: tiny, format: table, path: {write_events(tmp_path)}, columns: {{user: user, item: item, timestamp: ts}},
       cache_dir: {tmp_path / 'cache'}}}
model: {{name: sasrec, max_len: 8, hidden: 16, n_layers: 1, n_heads: 1}}
train: {{epochs: 2, batch_size: 16, lr: 0.002, patience: 50, progress: false, threads: 1}}
out_dir: {tmp_path / 'run'}
""")
    return cfg


def crbr(*args):
    from crbr.cli.main import main

    return main(["train", *map(str, args)])


def column(run: Path, name: str) -> list[float]:
    rows = (run / "metrics.csv").read_text().splitlines()
    i = rows[0].split(",").index(name)
    return [float(r.split(",")[i]) for r in rows[1:]]


def test_resume_applies_a_new_learning_rate_and_records_it(experiment, tmp_path):
    """The bug report's command: --resume train.lr=... trains at the new rate (not the one saved
    with the optimizer), and config.yaml / results.json record it with the resume."""
    run = tmp_path / "run"
    assert crbr("-c", experiment) == 0
    assert crbr("-c", experiment, "--resume", "train.lr=0.01", "train.epochs=4") == 0
    assert column(run, "lr") == pytest.approx([0.002, 0.002, 0.01, 0.01])
    assert "lr: 0.01" in (run / "config.yaml").read_text()
    res = json.loads((run / "results.json").read_text())
    assert res["config"]["train"]["lr"] == 0.01 and res["epochs_run"] == 4
    assert res["resumes"] == [{"epoch": 2, "changed": {"train.epochs": [2, 4], "train.lr": [0.002, 0.01]}}]
    state = load_state(run / "checkpoints" / "last.pt")
    assert json.loads(state["experiment"])["train"]["lr"] == 0.01
    assert all(g["lr"] == 0.01 for g in state["optimizer"]["param_groups"])


def test_resume_refuses_settings_that_cannot_change_naming_each(experiment, tmp_path, capsys):
    run = tmp_path / "run"
    assert crbr("-c", experiment) == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    assert crbr("-c", experiment, "--resume", "model.hidden=32", "train.seed=7", "train.epochs=3") == 2
    err = capsys.readouterr().err
    assert "model.hidden: 16 in the checkpoint, 32 now" in err
    assert "train.seed: 42 in the checkpoint, 7 now" in err
    assert "train.epochs" not in err.split("settings a resumed run may change")[0]  # allowed, not listed as refused
    assert "size mismatch" not in err and "Traceback" not in err
    assert len(err[err.index("crbr: error"):].splitlines()) < 8
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # nothing was touched
    assert "hidden: 16" in (run / "config.yaml").read_text()
    assert {"train.lr", "train.epochs", "train.patience", "train.max_minutes", "train.device"} <= set(RESUMABLE)


def test_a_last_pt_written_before_the_run_record_still_resumes_and_is_checked(tmp_path):
    """last.pt files written by earlier versions (no step, resumes, experiment, model_config):
    they resume exactly, and the settings are checked against last.safetensors."""
    straight, _ = fit_ae(tmp_path / "a", epochs=4)
    fit_ae(tmp_path / "b", epochs=2)
    path = tmp_path / "b" / "checkpoints" / "last.pt"
    old = {k: v for k, v in load_state(path).items() if k not in ("step", "resumes", "experiment", "model_name", "model_config")}
    save_state(path, old)
    with pytest.raises(ResumeConflict, match=r"train.batch_size: 32 in the checkpoint, 16 now"):
        fit_ae(tmp_path / "b", resume=True, epochs=4, batch_size=16)
    resumed, res = fit_ae(tmp_path / "b", resume=True, epochs=4)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_truncated_last_pt_is_an_error_naming_the_file(tmp_path):
    fit_ae(tmp_path, epochs=1)
    path = tmp_path / "checkpoints" / "last.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError) as e:
        fit_ae(tmp_path, resume=True, epochs=2)
    assert str(path) in str(e.value) and "weights_only" not in str(e.value)
