"""The `crbr` command: config files + overrides, data prepare, train -> evaluate -> export."""

from pathlib import Path

import polars as pl
import pytest

from crbr.cli.main import main
from crbr.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def write_events(tmp_path: Path) -> Path:
    rows = ["user,item,ts,rating"]
    for u in range(30):
        for t in range(12):
            rows.append(f"u{u},m{(u + t) % 17},{1000 + t},{1 + (u * t) % 5}")
    p = tmp_path / "events.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def write_config(tmp_path: Path, events: Path) -> Path:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"""
name: tiny
data:
  name: tiny
  format: table
  path: {events}
  columns: {{user: user, item: item, timestamp: ts, rating: rating}}
  cache_dir: {tmp_path / 'cache'}
model: {{name: sasrec, max_len: 8, hidden: 16, n_layers: 1, n_heads: 1}}
train: {{epochs: 2, batch_size: 16, progress: false, threads: 1}}
out_dir: {tmp_path / 'run'}
""")
    return cfg


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(ROOT / "configs" / "sasrec_ml1m.yaml", ["train.lr=5e-4", "model.hidden=32", "eval.ks=[10]"])
    assert cfg.train.lr == 5e-4 and cfg.model["hidden"] == 32 and cfg.eval.ks == [10]
    with pytest.raises(KeyError, match="lrr"):
        load_config(ROOT / "configs" / "sasrec_ml1m.yaml", ["train.lrr=1"])
    with pytest.raises(TypeError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])


def test_every_config_in_configs_loads():
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(p)
        from crbr.models import MODELS, model_config

        assert cfg.model_name in MODELS, p
        model_config(cfg.model_name, cfg.model_params)  # every model setting is known and well typed


def test_data_prepare_train_evaluate_export(tmp_path, capsys):
    cfg = write_config(tmp_path, write_events(tmp_path))
    assert main(["data", "prepare", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "30 users" in out and "17 items" in out and "360 events" in out
    assert main(["train", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "full ranking over 17 items" in out and "history masked: no" in out
    ckpt = tmp_path / "run" / "checkpoints" / "best.safetensors"
    export = tmp_path / "top.csv"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--export-topk", str(export), "--mask-history"]) == 0
    out = capsys.readouterr().out
    assert "history masked: yes" in out
    top = pl.read_csv(export, schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8})
    assert set(top["user_id"]) == {f"u{u}" for u in range(30)}
    assert top.group_by("user_id").len()["len"].max() <= 17
    assert top["item_id"].str.starts_with("m").all()


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: nosuchmodel}\n")
    assert main(["data", "prepare", "-c", str(bad), "data.name=nosuchdataset"]) == 2
    assert "nosuchdataset" in capsys.readouterr().err
