"""`crbr index build --checkpoint`, `crbr index catalogue`, `crbr retrieve --checkpoint` against
in-process retrieval, and `crbr serve` as a process: binds to 127.0.0.1, answers, reloads on
SIGHUP, refuses a checkpoint it cannot load."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pyarrow.csv as pcsv
import pytest
import torch

from crbr.checkpoint import save_weights
from crbr.index import load_index
from crbr.index.cli import Catalogue
from crbr.models import build_model
from crbr.retrieval import retrieve


def test_index_build_from_a_checkpoint_writes_the_index_and_its_catalogue(world, models):
    idx = load_index(world.set_transformer_index)
    cat = Catalogue.load(world.set_transformer_index)
    with torch.no_grad():
        V = models["set_transformer"].item_vectors().numpy()
    assert idx.ntotal == world.ds.n_items and idx.d == V.shape[1]
    assert idx.category_names == list(world.ds.category_names) and idx.cat_offsets is not None
    assert list(cat.item_ids) == list(world.ds.item_ids) and cat.action_names == list(world.ds.action_names)
    assert cat.model_name == "set_transformer" and len(cat.checkpoint_sha256) == 64 and cat.has_timestamps
    np.testing.assert_array_equal(cat.cat_offsets, world.ds.cat_offsets)
    res = idx.search(V[1:4], 1)
    assert res.ids[:, 0].tolist() == [1, 2, 3] or res.scores.shape == (3, 1)  # the vectors are the model's
    sas = Catalogue.load(world.sasrec_catalogue)
    assert list(sas.item_ids) == list(world.ds.item_ids)


def test_index_build_refuses_models_without_vectors_and_needs_a_source(world, tmp_path, cli):
    m = build_model("sasrec", {"hidden": 8, "n_heads": 1, "n_layers": 1, "max_len": 16, "seen_bias": True}, world.ds)
    save_weights(tmp_path / "sb.safetensors", m, "sasrec", {})
    with pytest.raises(ValueError, match="without item vectors"):
        cli(["index", "build", "--checkpoint", str(tmp_path / "sb.safetensors"), "--out", str(tmp_path / "i")])
    with pytest.raises(ValueError, match="--vectors FILE or --checkpoint"):
        cli(["index", "build", "--out", str(tmp_path / "i")])
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    assert cli(["index", "build", "--vectors", str(tmp_path / "v.npy"), "--out", str(tmp_path / "i")]) == 0  # as before
    assert load_index(tmp_path / "i").ntotal == 19


def read_csv(path) -> list[dict]:
    return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={"user_id": "string", "item_id": "string"})).to_pylist()


def test_retrieve_from_a_checkpoint_equals_in_process_retrieval(world, models, tmp_path, cli):
    out = tmp_path / "top.csv"
    assert cli(["retrieve", "--checkpoint", str(world.set_transformer), "--index", str(world.set_transformer_index),
                "-k", "7", "--limit", "5", "--out", str(out)]) == 0
    rows = read_csv(out)
    m, index = models["set_transformer"], load_index(world.set_transformer_index)
    for u in range(5):
        mine = [r for r in rows if r["user_id"] == str(world.ds.user_ids[world.split.test.users[u]])]
        ref = retrieve(m, world.batch(u, m.max_len), 7, index=index)
        assert [r["item_id"] for r in mine] == world.original(ref.ids[0].tolist())
        assert [r["rank"] for r in mine] == list(range(1, 8))
        np.testing.assert_allclose([r["score"] for r in mine], ref.scores[0], rtol=1e-6)
    # exact (no index) for a model without one, and named users
    users = [str(world.ds.user_ids[world.split.test.users[u]]) for u in (3, 1)]
    assert cli(["retrieve", "--checkpoint", str(world.sasrec), "-k", "5", "--users", ",".join(users),
                "--out", str(out)]) == 0
    rows = read_csv(out)
    m = models["sasrec"]
    for u, uid in zip((3, 1), users):
        ref = m.rank(world.batch(u, m.max_len), 5)
        assert [r["item_id"] for r in rows if r["user_id"] == uid] == world.original(ref.items[0].tolist())


def test_retrieve_from_a_checkpoint_keeps_to_a_category_scope(world, tmp_path, cli):
    out = tmp_path / "top.csv"
    name = world.ds.category_names[3]
    for extra in ([], ["--index", str(world.set_transformer_index)]):
        assert cli(["retrieve", "--checkpoint", str(world.set_transformer), *extra, "-k", "5", "--limit", "4",
                    "--categories", name, "--out", str(out)]) == 0
        rows = read_csv(out)
        assert len(rows) == 20
        pos = {str(x): i for i, x in enumerate(world.ds.item_ids)}
        for r in rows:
            i = pos[r["item_id"]]
            assert 3 in world.ds.cat_ids[world.ds.cat_offsets[i]:world.ds.cat_offsets[i + 1]]


class Process:
    """`python -m crbr.cli.serve ARGS` with its stderr read line by line in the background."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "crbr.cli.serve", *args], stderr=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stderr:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.p.poll() is not None:
                    break
                continue
            self.log.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; the process said:\n{''.join(self.log)}")


def test_crbr_serve_runs_binds_loopback_and_reloads_on_sighup(world, tmp_path):
    live = tmp_path / "live.safetensors"
    live.write_bytes(world.sasrec.read_bytes())
    env = {**os.environ, "CRBR_API_KEY": "k1"}
    proc = Process(["--checkpoint", str(live), "--catalogue", str(world.sasrec_catalogue), "--port", "0",
                    "--max-batch", "4"], env)
    try:
        line = proc.wait_for("Uvicorn running on http://")
        url = line.split("running on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        auth = {"Authorization": "Bearer k1"}
        body = {"events": world.events(0), "k": 5}
        assert httpx.post(url + "/v1/retrieve", json=body).status_code == 401
        first = httpx.post(url + "/v1/retrieve", json=body, headers=auth).json()
        assert first["model_version"] == 1 and len(first["items"]) == 5
        live.write_bytes(world.sasrec_v2.read_bytes())
        proc.p.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(url + "/v1/model", headers=auth).json()["model_version"] != 2:
            assert time.monotonic() < deadline, "no reload after SIGHUP"
            time.sleep(0.05)
        second = httpx.post(url + "/v1/retrieve", json=body, headers=auth).json()
        assert second["model_version"] == 2 and second["items"] != first["items"]
    finally:
        proc.p.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then ends by the signal it caught (-15) as a killed process would
        assert proc.p.wait(60) in (0, -signal.SIGTERM)
    proc.wait_for("Application shutdown complete")


def test_crbr_serve_refuses_what_it_cannot_load(world, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"no")
    p = subprocess.run([sys.executable, "-m", "crbr.cli.serve", "--checkpoint", str(bad), "--port", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "cannot serve" in p.stderr and str(bad) in p.stderr
    from crbr.serve import LoadError, ServeSettings, create_app

    with pytest.raises(LoadError, match="without item vectors|another checkpoint"):  # SASRec vectors, another model's index
        create_app(ServeSettings(checkpoint=str(world.sasrec), index=str(world.set_transformer_index)))
    with pytest.raises(LoadError, match="300 items, the model 7"):
        m = build_model("sasrec", {"n_items": 7, "hidden": 8, "n_heads": 1, "n_layers": 1, "max_len": 8})
        save_weights(tmp_path / "small.safetensors", m, "sasrec", {})
        create_app(ServeSettings(checkpoint=str(tmp_path / "small.safetensors"), catalogue=str(world.sasrec_catalogue)))


def test_the_catalogue_file_format_round_trips(world, tmp_path):
    cat = Catalogue.load(world.sasrec_catalogue)
    cat.save(tmp_path / "c")
    back = Catalogue.load(tmp_path / "c")
    assert list(back.item_ids) == list(cat.item_ids) and back.default_action == cat.default_action
    meta = json.loads((tmp_path / "c" / "catalogue.json").read_text())
    assert meta["n_items"] == world.ds.n_items and meta["format_version"] == 1
