"""benchmarks._common: a suite's records replace their own files, keep the headline mark, and
regenerate RESULTS.md; several seeds' records combine into one."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest

from crbr.results import Machine, Protocol, ResultRecord, load_records, main as results_main, write_record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # as `python -m benchmarks` from the repository root
    return importlib.import_module("benchmarks._common")


def record(**kw) -> ResultRecord:
    base = dict(suite="ann", dataset="mixture-1M-x64", model="hnsw", variant="M16-efC100-efS100",
                protocol=Protocol(line="queries"), command="python -m benchmarks ann",
                machine=Machine(cpu="cpu", cores=2), seeds=[0], metrics={"recall@100": 0.97}, date="2026-12-01")
    return ResultRecord(**{**base, **kw})


def test_publish_replaces_keeps_the_headline_mark_and_renders(tmp_path, common, capsys):
    recs, md = tmp_path / "results", tmp_path / "RESULTS.md"
    write_record(record(headline=True, backfilled=True, source="log"), recs)
    write_record(record(model="ivf_flat", variant="nlist2048-nprobe8"), recs)
    write_record(record(dataset="sphere-1M-x64", model="ivf_flat", variant="nlist2048-nprobe8"), recs)
    args = argparse.Namespace(records=str(recs), results_md=str(md))
    new = [record(metrics={"recall@100": 0.98}), record(model="ivf_flat", variant="nlist2048-nprobe16")]
    common.publish(new, args, replaces=lambda r: r.suite == "ann" and r.dataset == "mixture-1M-x64")
    got = {(r.dataset, r.model, r.variant): r for r in load_records(recs)}
    assert set(got) == {("mixture-1M-x64", "hnsw", "M16-efC100-efS100"), ("mixture-1M-x64", "ivf_flat", "nlist2048-nprobe16"),
                        ("sphere-1M-x64", "ivf_flat", "nlist2048-nprobe8")}  # the other setting of ivf_flat is gone
    hnsw = got[("mixture-1M-x64", "hnsw", "M16-efC100-efS100")]
    assert hnsw.metrics == {"recall@100": 0.98} and hnsw.headline and not hnsw.backfilled
    assert results_main(["render", "--records", str(recs), "--check", str(md)]) == 0
    common.publish(new, argparse.Namespace(records="", results_md=str(md)))  # '' = write nothing
    assert "removed record" in capsys.readouterr().out


def test_combine_seeds_means_spread_and_per_seed_values(common):
    a = record(seeds=[43], metrics={"HR@10": 0.2, "NDCG@10": 0.10, "only_here": 1.0}, timings={"wall_s": 10.0},
               command="crbr train train.seed=43", date="2026-12-02")
    b = record(seeds=[42], metrics={"HR@10": 0.4, "NDCG@10": 0.12}, timings={"wall_s": 30.0},
               command="crbr train train.seed=42")
    c = common.combine_seeds([a, b], notes="two seeds")
    assert c.seeds == [42, 43] and c.command == "crbr train train.seed={seed}" and c.date == "2026-12-02"
    assert c.metrics == pytest.approx({"HR@10": 0.3, "NDCG@10": 0.11})
    assert c.metrics_per_seed == {"HR@10": [0.4, 0.2], "NDCG@10": [0.12, 0.10]}
    assert c.metrics_std["HR@10"] == pytest.approx(0.2 / 2 ** 0.5)  # sample sd of 0.4 and 0.2
    assert c.timings == {"wall_s": 20.0} and c.notes.endswith("two seeds")
    assert json.loads(json.dumps(c.to_dict()))["seeds"] == [42, 43]
    one = common.combine_seeds([a])
    assert one.seeds == [43] and one.metrics == a.metrics


def test_helpers_name_things_portably(common):
    assert common.human(1_000_000) == "1M" and common.human(100_000) == "100k" and common.human(1234) == "1234"
    assert common.with_tag("", "") == "" and common.with_tag("quota", "") == "quota"
    assert common.with_tag("", "cpu") == "cpu" and common.with_tag("quota", "k10") == "quota_k10"
    line = common.command_line("ann", ["--out", str(ROOT / "runs" / "x"), "--items", "10"])
    assert line == "python -m benchmarks ann --out runs/x --items 10"
