"""Pipelines: stages chained through their best checkpoints, trained as `crbr train` trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crbr.cli.main import main
from crbr.pipeline import Pipeline, Stage

ROOT = Path(__file__).resolve().parents[1]


def tiny_stage(name: str, model: dict, reads: dict | None = None) -> dict:
    exp = {"name": f"pipe_{name}", "data": {"name": "synthetic", "synthetic": {"seed": 1, "n_users": 60, "n_items": 80,
                                                                              "n_categories": 8}},
           "model": model, "train": {"epochs": 1, "batch_size": 32, "progress": False, "threads": 1},
           "eval": {"batch_size": 64}}
    return {"name": name, "experiment": exp, "reads": reads or {}}


def write_pipeline(path: Path) -> Path:
    stages = [
        tiny_stage("qformer", {"name": "qformer", "max_len": 16, "hidden": 8, "n_queries": 2, "n_layers": 1,
                               "n_heads": 1, "n_negatives": 16}),
        tiny_stage("retriever", {"name": "set_transformer", "hidden": 8, "out_dim": 8, "n_heads": 1, "set_blocks": 1,
                                 "n_negatives": 16}, {"tower_checkpoint": "qformer"}),
        tiny_stage("crbr", {"name": "crbr", "codebook_sizes": [4, 3], "router_hidden": 8, "n_negatives": 16},
                   {"base_checkpoint": "retriever"}),
    ]
    path.write_text(yaml.safe_dump({"name": "tiny_chain", "stages": stages}))
    return path


def test_a_chain_trains_each_stage_on_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRBR_CACHE", str(tmp_path / "cache"))
    cfg = write_pipeline(tmp_path / "chain.yaml")
    out = tmp_path / "runs"
    assert main(["pipeline", "-c", str(cfg), "--out", str(out), "crbr.model.beam=2"]) == 0
    for stage in ("qformer", "retriever", "crbr"):
        assert (out / stage / "checkpoints" / "best.safetensors").exists()
        assert (out / stage / "results.json").exists()
    crbr_cfg = yaml.safe_load((out / "crbr" / "config.yaml").read_text())
    assert crbr_cfg["model"]["base_checkpoint"] == str(out / "retriever" / "checkpoints" / "best.safetensors")
    assert crbr_cfg["model"]["beam"] == 2  # the stage override reached the stage
    printed = capsys.readouterr().out
    assert "3 stages" in printed and "protocol: " in printed
    # a rerun with --reuse trains nothing and reports the same numbers
    before = (out / "crbr" / "results.json").read_text()
    assert main(["pipeline", "-c", str(cfg), "--out", str(out), "--reuse"]) == 0
    assert "(reused)" in capsys.readouterr().out
    assert (out / "crbr" / "results.json").read_text() == before


def test_a_stage_can_only_read_an_earlier_stage():
    with pytest.raises(ValueError, match="not an earlier stage"):
        Pipeline("p", [Stage("a", {}, {"base_checkpoint": "b"}), Stage("b", {})])
    with pytest.raises(ValueError, match="used twice"):
        Pipeline("p", [Stage("a", {}), Stage("a", {})])


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_load_and_their_stages_are_valid(path, monkeypatch):
    from crbr.models import model_config
    from crbr.pipeline import stage_config

    monkeypatch.chdir(ROOT)
    pipe = Pipeline.from_yaml(path)
    for st in pipe.stages:
        cfg = stage_config(st, Path("runs") / pipe.name)
        model_config(cfg.model_name, cfg.model_params)  # every setting known and well typed
