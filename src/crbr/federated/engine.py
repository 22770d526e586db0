"""Running a federated experiment locally: the same Flower ServerApp and ClientApp on

  engine="inprocess"  `InProcessGrid`: a Flower `Grid` whose push_messages hands each message to
                      the ClientApp of its node in this process, one after another, and keeps the
                      reply for pull_messages. Each virtual node has its own Flower `Context`
                      (node_config partition-id / num-partitions, persistent `state`), as on a
                      SuperNode. No Ray, no subprocesses: fast to start, deterministic, right for
                      tests and a 1-2 core machine.
  engine="ray"        Flower's Simulation Engine (`flwr.simulation.run_simulation`, Ray backend;
                      install flwr[simulation]). ClientApps run in Ray actors, in parallel.

and on Flower's Deployment Engine across machines through `crbr.federated.app` (docs/federated.md).
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from .client import ClientRuntime, _RUNTIMES, client_train, register_runtime
from .config import FederatedConfig
from .server import FederatedResult, server_main

log = logging.getLogger("crbr.federated")

SERVER_NODE_ID = SUPERLINK_NODE_ID


class InProcessGrid(Grid):
    """A Grid of `num_nodes` virtual SuperNodes served by one ClientApp in this process."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict | None = None, run_id: int = 1):
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.contexts = {
            1000 + i: Context(run_id=run_id, node_id=1000 + i,
                              node_config={"partition-id": i, "num-partitions": num_nodes},
                              state=RecordDict(), run_config=dict(run_config or {}))
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        self.client_seconds = 0.0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            md = msg.metadata.__dict__
            md["_message_id"] = str(uuid4())  # what the SuperLink sets
            ctx = self.contexts[msg.metadata.dst_node_id]
            t0 = time.perf_counter()
            try:
                reply = self.client_app(msg, ctx)
            except Exception as e:  # a failed client is a failure reply, as in Flower's engines
                log.error("client %d failed: %s", ctx.node_config["partition-id"], traceback.format_exc())
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            self.client_seconds += time.perf_counter() - t0
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def make_apps(cfg, fed: FederatedConfig, holder: dict, runtime_key: int | None = None) -> tuple[ServerApp, ClientApp]:
    """The ServerApp and ClientApp of an experiment. The ServerApp needs `holder` to contain
    ds, split, model, run_dir and writes holder["result"]; ClientApps use the registered runtime
    `runtime_key` in this process, else build (and cache) one from cfg and fed."""
    server_app = ServerApp()

    @server_app.main()
    def _server(grid: Grid, context: Context) -> None:
        holder["result"] = server_main(grid, cfg, fed, holder["ds"], holder["split"], holder["model"],
                                       Path(holder["run_dir"]))

    client_app = ClientApp()
    cache_key = runtime_key if runtime_key is not None else id(holder)

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        rt = _RUNTIMES.get(cache_key)
        if rt is None:  # e.g. a Ray actor: build this process's runtime once
            rt = ClientRuntime.build(cfg, fed)
            _RUNTIMES[cache_key] = rt
        return client_train(rt, msg, context)

    return server_app, client_app


def run_federated(cfg, fed: FederatedConfig, ds=None, split=None, model=None,
                  run_dir: str | Path | None = None) -> FederatedResult:
    """Train `cfg`'s model federated with `fed` (engine inprocess or ray); returns the result of
    the best round on the test split. ds / split / model are built from cfg when omitted."""
    import torch

    from ..models import build_model

    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if ds is None or split is None:
        from ..data.prepare import prepare_with_split

        ds, split = prepare_with_split(cfg)
    if model is None:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model_name, cfg.model_params, ds, split)
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
    holder = {"ds": ds, "split": split, "model": model, "run_dir": run_dir}
    if fed.engine == "inprocess":
        rt = ClientRuntime.build(cfg, fed, ds, split, copy.deepcopy(model))
        key = register_runtime(rt)
        # the identity the ServerApp process gets from the SuperLink (Message() reads it)
        saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SERVER_NODE_ID
        try:
            server_app, client_app = make_apps(cfg, fed, holder, key)
            grid = InProcessGrid(client_app, fed.num_clients, run_id=1)
            server_app(grid, Context(run_id=1, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(),
                                     run_config={}))
        finally:
            _RUNTIMES.pop(key, None)
            TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    else:
        from flwr.simulation import run_simulation

        server_app, client_app = make_apps(cfg, fed, holder)
        cpus = fed.ray_cpus_per_client
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=fed.num_clients,
                       backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}})
        if "result" not in holder:
            raise RuntimeError("the Flower simulation ended without a result (see the log above)")
    return holder["result"]
