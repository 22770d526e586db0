"""Checkpoint integrity: every file crbr writes records a sha256 of its contents and is checked
against it when read; unreadable, foreign, corrupted or ill-fitting files are one CheckpointError
naming the file (never a library traceback, never advice to load with weights_only=False); files
of older crbr versions (no hash) still load, with one notice."""

import json
import logging
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import crbr.checkpoint as ck
from crbr.checkpoint import (CheckpointError, embedded_config, load_state, load_weights, read_metadata, save_state,
                             save_weights, state_digest, verify_weights, weights_digest)
from crbr.data.synthetic import SyntheticConfig, generate
from crbr.models import build_model, load_model

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
PARAMS = dict(hidden=8, n_heads=1, n_layers=1, max_len=8)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ds():
    return generate(SyntheticConfig.tiny(seed=0, n_users=30)).dataset


@pytest.fixture
def model(ds):
    torch.manual_seed(0)
    return build_model("sasrec", PARAMS, ds).eval()


@pytest.fixture
def ckpt(model, tmp_path):
    return save_weights(tmp_path / "best.safetensors", model, "sasrec", {"name": "t"}, {"epoch": 3})


def batch():
    return {"items": torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]]), "actions": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])}


def header(path):
    """(header length, header dict) of a safetensors file."""
    b = Path(path).read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    return n, json.loads(b[8:8 + n])


def overwrite(path, offset, data):
    b = bytearray(Path(path).read_bytes())
    b[offset:offset + len(data)] = data
    Path(path).write_bytes(bytes(b))


def rewrite(path, out, metadata, tensors=None):
    """A copy of a safetensors file with other metadata (no hash unless given)."""
    with safe_open(str(path), "pt") as f:
        tensors = tensors or {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(out), metadata=metadata)
    return out


def old_metadata(path):
    with safe_open(str(path), "pt") as f:
        return {k: v for k, v in f.metadata().items() if k not in (ck.FORMAT_KEY, ck.HASH_KEY)}


# ----------------------------------------------------------------------------- writing and verifying
def test_saved_weights_record_format_and_hash_and_load_verified(model, ckpt):
    meta = read_metadata(ckpt)
    assert meta[ck.FORMAT_KEY] == "2" and isinstance(meta[ck.HASH_KEY], str)  # kept as written, not JSON-decoded
    with safe_open(str(ckpt), "pt") as f:
        raw, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert raw[ck.FORMAT_KEY] == "2" and len(raw[ck.HASH_KEY]) == 64
    assert weights_digest(tensors, raw) == raw[ck.HASH_KEY]  # the documented definition, from the file alone
    assert verify_weights(ckpt) is True
    m2, meta2 = load_model(ckpt)
    assert meta2["model_name"] == "sasrec" and meta2["epoch"] == 3 and meta2["experiment"] == {"name": "t"}
    with torch.no_grad():
        torch.testing.assert_close(m2.score(batch()), model.score(batch()), rtol=0, atol=0)


def test_weights_digest_covers_names_dtypes_shapes_bytes_and_metadata():
    t = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}
    meta = {"model_name": "x"}
    d = weights_digest(t, meta)
    assert d == weights_digest(dict(reversed(list(t.items()))), meta)  # canonical order
    assert d == weights_digest(t, {**meta, ck.HASH_KEY: "whatever"})  # the hash itself is left out
    for other in ({"a": t["a"].reshape(3, 2), "b": t["b"]}, {"a": t["a"].double(), "b": t["b"]},
                  {"c": t["a"], "b": t["b"]}, {"a": torch.where(t["a"] == 5, torch.nextafter(t["a"], t["a"] + 1), t["a"]), "b": t["b"]}):
        assert weights_digest(other, meta) != d
    assert weights_digest(t, {"model_name": "y"}) != d


# ----------------------------------------------------------------------------- corrupted weights
def test_weights_overwritten_with_ordinary_numbers_are_detected(model, ckpt):
    """The bug report's case: part of a tensor overwritten with plausible values, header intact."""
    n, head = header(ckpt)
    name = "item_emb.weight" if "item_emb.weight" in head else next(k for k in head if k != "__metadata__")
    start, end = head[name]["data_offsets"]
    overwrite(ckpt, 8 + n + start + 16, struct.pack("<4f", 0.5, -0.25, 1.0, 0.0))
    fresh = build_model("sasrec", PARAMS, generate(SyntheticConfig.tiny(seed=0, n_users=30)).dataset)
    for load in (lambda: load_model(ckpt), lambda: load_weights(ckpt, fresh), lambda: verify_weights(ckpt)):
        with pytest.raises(CheckpointError, match="do not match their recorded hash") as e:
            load()
        assert str(ckpt) in str(e.value) and "corrupted or was modified" in str(e.value)


def test_modified_metadata_is_detected_as_corruption(ckpt):
    """A corrupted config that still parses (or that no longer names a setting) is reported as
    corruption, not as a bad setting."""
    b = Path(ckpt).read_bytes()
    for old, new in ((b'\\"hidden\\": 8', b'\\"hidden\\": 9'), (b'\\"hidden\\"', b'\\"hiddex\\"'),
                     (b'"epoch":"3"', b'"epoch":"4"')):
        assert old in b, old
        Path(ckpt).write_bytes(b.replace(old, new))
        with pytest.raises(CheckpointError, match="recorded hash") as e:
            load_model(ckpt)
        assert str(ckpt) in str(e.value)
    Path(ckpt).write_bytes(b)
    load_model(ckpt)


def test_format_2_without_its_hash_is_an_error(ckpt, tmp_path):
    out = rewrite(ckpt, tmp_path / "nohash.safetensors", {**old_metadata(ckpt), ck.FORMAT_KEY: "2"})
    with pytest.raises(CheckpointError, match=f"{out}.*no {ck.HASH_KEY}"):
        load_model(out)


def test_unknown_format_is_an_error(ckpt, tmp_path):
    with safe_open(str(ckpt), "pt") as f:
        meta = dict(f.metadata())
    out = rewrite(ckpt, tmp_path / "v9.safetensors", {**meta, ck.FORMAT_KEY: "9"})
    with pytest.raises(CheckpointError, match="format '9'"):
        load_model(out)


# ----------------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("damage", ["truncated", "truncated_header", "random", "empty", "text"])
def test_unreadable_weights_name_the_file(ckpt, tmp_path, damage, model):
    b = Path(ckpt).read_bytes()
    n, _ = header(ckpt)
    data = {"truncated": b[:len(b) - 100], "truncated_header": b[:8 + n // 2], "random": os.urandom(5000),
            "empty": b"", "text": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 15592\n"}[damage]
    bad = tmp_path / f"{damage}.safetensors"
    bad.write_bytes(data)
    for load in (lambda: load_model(bad), lambda: load_weights(bad, model), lambda: read_metadata(bad),
                 lambda: embedded_config(bad, "sasrec")):
        with pytest.raises(CheckpointError, match="truncated or not a safetensors file") as e:
            load()
        assert str(bad) in str(e.value)


def test_missing_file_and_directory(tmp_path, model):
    missing = tmp_path / "nope.safetensors"
    for load in (lambda: load_model(missing), lambda: load_weights(missing, model), lambda: load_state(tmp_path / "last.pt")):
        with pytest.raises(FileNotFoundError, match="does not exist") as e:
            load()
        assert str(tmp_path) in str(e.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_model(tmp_path)


def test_safetensors_file_without_crbr_metadata(ckpt, tmp_path, model):
    plain = rewrite(ckpt, tmp_path / "plain.safetensors", None)
    for load in (lambda: load_model(plain), lambda: load_weights(plain, model), lambda: read_metadata(plain),
                 lambda: embedded_config(plain, "sasrec")):
        with pytest.raises(CheckpointError, match="not a crbr checkpoint: no model_name in its metadata") as e:
            load()
        assert str(plain) in str(e.value)
    no_cfg = rewrite(ckpt, tmp_path / "nocfg.safetensors", {"model_name": "sasrec"})
    with pytest.raises(CheckpointError, match=f"{no_cfg}: not a crbr checkpoint: no model_config"):
        load_model(no_cfg)
    bad_json = rewrite(ckpt, tmp_path / "badjson.safetensors", {**old_metadata(ckpt), "model_config": '{"hidden": 8,'})
    with pytest.raises(CheckpointError, match=f"{bad_json}: the model_config in its metadata is not valid JSON"):
        load_model(bad_json)
    not_map = rewrite(ckpt, tmp_path / "list.safetensors", {**old_metadata(ckpt), "model_config": "[1, 2]"})
    with pytest.raises(CheckpointError, match="not a mapping"):
        load_model(not_map)


def test_config_errors_name_the_file(ckpt, tmp_path):
    """Settings of an unhashed (older) file that this version rejects: the file is named."""
    meta = old_metadata(ckpt)
    cfg = json.loads(meta["model_config"])
    for change, what in (({"no_such_setting": 1}, "no_such_setting"), ({"hidden": "wide"}, "hidden"),
                         ({"hidden": 8, "n_heads": 3}, "")):
        out = rewrite(ckpt, tmp_path / "cfg.safetensors", {**meta, "model_config": json.dumps({**cfg, **change})})
        with pytest.raises(CheckpointError, match="model config in its metadata is not valid") as e:
            load_model(out)
        assert str(out) in str(e.value) and what in str(e.value)
    out = rewrite(ckpt, tmp_path / "other.safetensors", {**meta, "model_name": "gpt"})
    with pytest.raises(CheckpointError, match=f"{out}: unknown model 'gpt'"):
        load_model(out)


def test_weights_of_another_shape_give_one_clear_message(ckpt, ds):
    other = build_model("sasrec", dict(PARAMS, hidden=16, n_layers=2), ds)
    with pytest.raises(CheckpointError) as e:
        load_weights(ckpt, other)
    msg = str(e.value)
    assert str(ckpt) in msg and "do not fit this SASRec" in msg
    assert "missing: blocks.1." in msg and "with another shape:" in msg and "(file 8x8, model 16x16)" in msg
    assert "size mismatch" not in msg
    pinner = build_model("pinnerformer", dict(hidden=8, n_heads=1, n_layers=1, max_len=8), ds)
    with pytest.raises(CheckpointError, match=f"{ckpt}: .*PinnerFormer.*missing: "):
        load_weights(ckpt, pinner)
    deeper = save_weights(ckpt.parent / "deeper.safetensors", build_model("sasrec", dict(PARAMS, n_layers=2), ds), "sasrec", {})
    with pytest.raises(CheckpointError, match=f"{deeper}: .*unexpected: blocks.1."):
        load_weights(deeper, build_model("sasrec", PARAMS, ds))


# ----------------------------------------------------------------------------- older files
def test_old_checkpoint_without_hash_loads_with_one_notice(tmp_path, caplog):
    old = tmp_path / "sasrec.safetensors"
    shutil.copy(FIXTURES / "sasrec.safetensors", old)
    with safe_open(str(old), "pt") as f:
        assert ck.HASH_KEY not in f.metadata()
    with caplog.at_level(logging.INFO, logger="crbr.checkpoint"):
        m, meta = load_model(old)
        load_model(old)
        assert verify_weights(old) is False
    notices = [r for r in caplog.records if r.name == "crbr.checkpoint" and str(old) in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.INFO
    assert "without an integrity hash" in notices[0].getMessage()
    assert meta["model_name"] == "sasrec"


def test_new_checkpoint_gives_no_notice(ckpt, caplog):
    with caplog.at_level(logging.INFO, logger="crbr.checkpoint"):
        load_model(ckpt)
    assert not [r for r in caplog.records if r.name == "crbr.checkpoint"]


# ----------------------------------------------------------------------------- training state (last.pt)
def state_of(model):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    model.score(batch()).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2, "best": float("-inf"),
            "best_epoch": 0, "bad": 1, "history": json.dumps([{"epoch": 1}]), "elapsed": 1.5,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": {"name": "MT19937", "keys": torch.arange(4), "pos": 3, "has_gauss": 0, "gauss": 0.0}}


def tensor_record_offset(path):
    """Offset of the bytes of the largest tensor record in a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_state_round_trip_is_verified_and_returned_as_saved(model, tmp_path):
    st = state_of(model)
    save_state(tmp_path / "last.pt", st)
    raw = torch.load(tmp_path / "last.pt", weights_only=True)
    assert raw[ck.FORMAT_KEY] == "2" and len(raw[ck.HASH_KEY]) == 64
    back = load_state(tmp_path / "last.pt")
    assert set(back) == set(st)
    assert back["epoch"] == 2 and back["bad"] == 1 and back["history"] == st["history"]
    for k, v in st["model"].items():
        assert torch.equal(back["model"][k], v)
    assert state_digest(back) == state_digest(st)


def test_state_digest_is_canonical_and_rejects_unknown_types():
    a = {"x": 1, "y": [1.5, (2, "s")], 3: torch.ones(2), "n": None, "b": True}
    b = {"b": True, "n": None, 3: torch.ones(2), "y": [np.float64(1.5), (np.int64(2), "s")], "x": 1}
    assert state_digest(a) == state_digest(b)
    assert state_digest({"x": 1}) != state_digest({"x": 1.0}) != state_digest({"x": True})
    assert state_digest([1, 2]) != state_digest((1, 2))
    assert state_digest({"t": torch.ones(2)}) != state_digest({"t": torch.ones(2, 1)})
    with pytest.raises(TypeError, match="cannot hash a object"):
        state_digest({"x": object()})


def assert_clean(e):
    """The error names no unsafe way out, not even in its chain."""
    exc = e.value
    while exc is not None:
        assert "weights_only=False" not in str(exc) and "weights_only" not in str(exc)
        exc = exc.__cause__


def test_corrupted_state_is_detected(model, tmp_path):
    path = save_state(tmp_path / "last.pt", state_of(model))
    off, size = tensor_record_offset(path)
    overwrite(path, off + size // 2, struct.pack("<2f", 1.0, 0.5))
    torch.load(path, weights_only=True)  # torch itself notices nothing
    with pytest.raises(CheckpointError, match="does not match its recorded hash") as e:
        load_state(path)
    assert str(path) in str(e.value)
    assert_clean(e)


class Foreign:
    pass


@pytest.mark.parametrize("damage", ["truncated", "half", "random", "empty", "pickle_object", "safetensors"])
def test_unreadable_state_names_the_file_and_never_suggests_weights_only_false(model, tmp_path, damage, ckpt):
    path = save_state(tmp_path / "last.pt", state_of(model))
    b = path.read_bytes()
    bad = tmp_path / "bad.pt"
    if damage == "pickle_object":
        torch.save({"model": {}, "x": Foreign()}, bad)
    else:
        bad.write_bytes({"truncated": b[:-50], "half": b[:len(b) // 2], "random": os.urandom(4000), "empty": b"",
                         "safetensors": Path(ckpt).read_bytes()}[damage])
    with pytest.raises(CheckpointError, match="cannot read this training state") as e:
        load_state(bad)
    assert str(bad) in str(e.value)
    assert_clean(e)


def test_old_state_without_hash_loads_with_one_notice(model, tmp_path, caplog):
    st = state_of(model)
    torch.save(st, tmp_path / "last.pt")  # as crbr wrote it before format 2
    with caplog.at_level(logging.INFO, logger="crbr.checkpoint"):
        back = load_state(tmp_path / "last.pt")
        load_state(tmp_path / "last.pt")
    assert set(back) == set(st)
    notices = [r for r in caplog.records if r.name == "crbr.checkpoint"]
    assert len(notices) == 1 and "without an integrity hash" in notices[0].getMessage()
    torch.save({**st, ck.FORMAT_KEY: "2"}, tmp_path / "stripped.pt")
    with pytest.raises(CheckpointError, match=f"no {ck.HASH_KEY}"):
        load_state(tmp_path / "stripped.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a crbr training state"):
        load_state(tmp_path / "list.pt")


# ----------------------------------------------------------------------------- entry points
def test_backbone_checkpoint_corrupted_or_truncated(tmp_path):
    """build_model with a backbone (likewise tower / base) checkpoint: the file is named."""
    from crbr.data.dataset import leave_one_out
    from crbr.models import SASRec, SASRecConfig

    ds = generate(SyntheticConfig.tiny(seed=3)).dataset
    split = leave_one_out(ds)
    arch = {"max_len": 12, "hidden": 16, "n_heads": 2, "n_layers": 1, "seen_bias": True}
    sas = SASRec(SASRecConfig(n_items=ds.n_items, n_actions=ds.n_actions, **arch))
    path = save_weights(tmp_path / "sasrec.safetensors", sas, "sasrec", {})
    params = {**arch, "vis_features": "categories", "sem_features": "random:8:3", "backbone_checkpoint": str(path)}
    build_model("residual_mixture", params, ds, split)
    b = path.read_bytes()
    n, head = header(path)
    start, _ = head["item_emb.weight"]["data_offsets"]
    overwrite(path, 8 + n + start + 64, struct.pack("<f", 0.125))
    with pytest.raises(CheckpointError, match=f"{path}: the weights do not match their recorded hash"):
        build_model("residual_mixture", params, ds, split)
    path.write_bytes(b[:len(b) // 2])
    with pytest.raises(CheckpointError, match=f"{path}: cannot read this checkpoint: truncated"):
        build_model("residual_mixture", params, ds, split)


def test_resume_from_corrupted_last_pt(tmp_path):
    from crbr.config import ExperimentConfig, from_dict
    from crbr.data.dataset import leave_one_out
    from crbr.train.loop import Trainer

    world = generate(SyntheticConfig.tiny(seed=3, n_users=60))
    c = from_dict(ExperimentConfig, {
        "name": "t", "data": {"name": "synthetic", "synthetic": {"seed": 3}},
        "model": {"name": "sasrec", "max_len": 8, "hidden": 8, "n_layers": 1, "n_heads": 1},
        "train": {"epochs": 1, "batch_size": 32, "seed": 1, "progress": False, "threads": 1},
        "eval": {"batch_size": 64}, "out_dir": str(tmp_path)})

    def fit():
        split = leave_one_out(world.dataset)
        model = build_model(c.model_name, c.model_params, world.dataset)
        return Trainer(model, world.dataset, split, c, max_len=8).fit(resume=True)

    fit()
    last = tmp_path / "checkpoints" / "last.pt"
    off, size = tensor_record_offset(last)
    overwrite(last, off + size // 2, struct.pack("<f", 0.0))
    with pytest.raises(CheckpointError, match="does not match its recorded hash") as e:
        fit()
    assert str(last) in str(e.value)
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read this training state") as e:
        fit()
    assert_clean(e)
