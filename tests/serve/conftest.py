"""Shared fixtures of the service tests: a tiny synthetic world, small trained models saved as
checkpoints (with the experiment config that names the world, as `crbr train` writes them), their
indexes built by `crbr index build --checkpoint`, and a real uvicorn server on a free loopback
port in a background thread."""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from crbr.checkpoint import save_weights
from crbr.config import ExperimentConfig
from crbr.data.batching import history_batch, train_batch, trim_padding
from crbr.data.prepare import prepare_with_split
from crbr.models import build_model, load_model
from crbr.settings import from_dict

WORLD = dict(n_users=200, n_items=300, n_categories=10, dim=16, history_median=30.0, max_history=300, seed=0)


def experiment(model: dict) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {"name": "serve_test", "data": {"name": "synthetic", "synthetic": WORLD},
                                        "model": model})


def fit(model, ds, split, steps: int, max_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        users = rng.choice(ds.n_users, 64, replace=False)
        out = model.loss(train_batch(ds, users, split.train_len[users], max_len))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def run_cli(argv: list[str]) -> int:
    """`crbr ARGV` through crbr.cli.main's parser with crbr.cli.serve's commands added."""
    from crbr.cli import main as cli_main
    from crbr.cli.serve import add_commands

    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    add_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@dataclass
class World:
    root: Path
    ds: object
    split: object
    sasrec: Path  # checkpoint
    sasrec_v2: Path  # the same model trained further (reload tests)
    set_transformer: Path
    set_transformer_index: Path  # flat index + catalogue (crbr index build --checkpoint)
    sasrec_catalogue: Path  # crbr index catalogue

    def events(self, u: int, split: str = "test") -> list[dict]:
        """User row u's visible history as request events (original ids, action names, timestamps)."""
        es = getattr(self.split, split)
        user, n = int(es.users[u]), int(es.hist_len[u])
        s = int(self.ds.offsets[user])
        return [{"item": str(self.ds.item_ids[self.ds.items[s + i]]),
                 "action": self.ds.action_names[self.ds.actions[s + i]],
                 "timestamp": int(self.ds.timestamps[s + i])} for i in range(n)]

    def batch(self, u: int, max_len: int, split: str = "test") -> dict:
        es = getattr(self.split, split)
        return trim_padding(history_batch(self.ds, es.users[u:u + 1], es.hist_len[u:u + 1], max_len))

    def original(self, ids) -> list[str]:
        return [str(self.ds.item_ids[i]) for i in ids]


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    sas = {"name": "sasrec", "hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 32, "dropout": 0.0}
    cfg = experiment(sas)
    ds, split = prepare_with_split(cfg)
    torch.manual_seed(0)
    m = fit(build_model("sasrec", cfg.model_params, ds, split), ds, split, 15, 32)
    save_weights(root / "sasrec.safetensors", m, "sasrec", cfg.to_dict())
    m = fit(m, ds, split, 10, 32, seed=1)
    save_weights(root / "sasrec_v2.safetensors", m, "sasrec", cfg.to_dict())
    st = {"name": "set_transformer", "hidden": 16, "out_dim": 16, "n_heads": 1, "set_blocks": 1, "n_negatives": 64,
          "tower": {"hidden": 16, "n_queries": 2, "n_layers": 1, "n_heads": 1, "max_len": 32}}
    cfg_st = experiment(st)
    torch.manual_seed(0)
    m = fit(build_model("set_transformer", cfg_st.model_params, ds, split), ds, split, 15, 32)
    save_weights(root / "set_transformer.safetensors", m, "set_transformer", cfg_st.to_dict())
    assert run_cli(["index", "build", "--checkpoint", str(root / "set_transformer.safetensors"), "--kind", "flat",
                    "--out", str(root / "st_index")]) == 0
    assert run_cli(["index", "catalogue", "--checkpoint", str(root / "sasrec.safetensors"),
                    "--out", str(root / "sasrec_catalogue")]) == 0
    return World(root, ds, split, root / "sasrec.safetensors", root / "sasrec_v2.safetensors",
                 root / "set_transformer.safetensors", root / "st_index", root / "sasrec_catalogue")


@pytest.fixture(scope="session")
def models(world):
    """The checkpoints loaded in this process (the in-process reference)."""
    return {name: load_model(getattr(world, name))[0] for name in ("sasrec", "sasrec_v2", "set_transformer")}


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 at a port the OS picks, in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", ws="none",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       daemon=True, name="uvicorn-test")

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    @property
    def host(self):
        return self.app.state.host

    @property
    def metrics(self):
        return self.app.state.metrics


@pytest.fixture
def serve():
    """serve(settings, **overrides) -> a started LiveServer (stopped at the end of the test)."""
    from crbr.serve import ServeSettings, create_app

    started = []

    def start(checkpoint, **kw) -> LiveServer:
        kw = {k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}
        s = LiveServer(create_app(ServeSettings(checkpoint=str(checkpoint), **kw)))
        started.append(s.__enter__())
        return s

    yield start
    for s in started:
        s.__exit__(None, None, None)


@pytest.fixture(scope="session")
def live_server():
    """The LiveServer class, for fixtures that start their own server."""
    return LiveServer


@pytest.fixture(scope="session")
def cli():
    """cli(argv) -> exit code of `crbr ARGV` (with crbr.cli.serve's commands)."""
    return run_cli


@pytest.fixture(scope="session")
def make_experiment():
    """make_experiment(model settings) -> the ExperimentConfig of a model on the test world."""
    return experiment


@pytest.fixture(scope="session")
def world_settings() -> dict:
    """The SyntheticConfig settings of the test world."""
    return dict(WORLD)
