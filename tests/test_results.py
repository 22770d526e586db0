"""crbr.results: records round-trip, bad records are named, RESULTS.md renders deterministically."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crbr.results import (
    Machine,
    Protocol,
    RecordError,
    ResultRecord,
    headline_records,
    load_records,
    main,
    record_filename,
    record_from_results_json,
    render_results_md,
    write_record,
)

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "results"
LINE = ("full ranking over 3706 items, leave_one_out, targets: 6040 (1 per user), history masked: no, "
        "ties: lower item id first, model input: last 200 events, users: 6040")


def record(**kw) -> ResultRecord:
    base = dict(
        suite="sasrec", dataset="ml-1m", model="sasrec", protocol=Protocol.from_line(LINE),
        command="crbr train -c configs/sasrec_ml1m.yaml train.seed={seed}",
        machine=Machine(cpu="AMD EPYC", cores=2, threads=2, software="Python 3.11.7"),
        seeds=[42], metrics={"HR@10": 0.3033, "NDCG@10": 0.1716, "HR@50": 0.5632}, date="2026-11-23")
    return ResultRecord(**{**base, **kw})


def test_protocol_line_is_parsed_into_fields():
    p = Protocol.from_line(LINE)
    assert (p.split, p.full_ranking, p.history_masked, p.n_users) == ("leave_one_out", True, False, 6040)
    p = Protocol.from_line("full ranking over 4000 items, leave_10_out, targets: 24592 (7.07 per user), "
                           "history masked: yes, ties: lower item id first, model input: last 100 events, users: 3478")
    assert (p.split, p.history_masked, p.n_users) == ("leave_10_out", True, 3478)


def test_write_then_load_round_trips(tmp_path):
    a = record(config={"model": {"hidden": 128}}, timings={"train_seconds": 3210.0}, notes="one seed",
               headline=True)
    b = record(dataset="Beauty", variant="masked", seeds=[42, 43, 44],
               metrics={"HR@10": 0.3, "NDCG@10": 0.17}, metrics_std={"HR@10": 0.003},
               metrics_per_seed={"HR@10": [0.30, 0.31, 0.29]}, backfilled=True, source="SASRec on Beauty")
    pa, pb = write_record(a, tmp_path), write_record(b, tmp_path)
    assert pa.name == "sasrec__ml-1m__sasrec.json" and pb.name == "sasrec__beauty__sasrec__masked.json"
    assert [r.to_dict() for r in load_records(tmp_path)] == [b.to_dict(), a.to_dict()]
    assert sorted(p.name for p in tmp_path.iterdir()) == [pb.name, pa.name]  # no temporary files left


def test_a_rerun_replaces_its_own_record(tmp_path):
    write_record(record(metrics={"HR@10": 0.1}), tmp_path)
    write_record(record(metrics={"HR@10": 0.2}), tmp_path)
    (only,) = load_records(tmp_path)
    assert only.metrics == {"HR@10": 0.2}


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["metrics"].update({"HR@10": "high"}), "metrics.HR@10"),
    (lambda d: d.pop("command"), "command"),
    (lambda d: d["protocol"].update({"n_users": "many"}), "protocol.n_users"),
    (lambda d: d.update({"seeds": [42, 43]}), "metrics_per_seed.HR@10"),
    (lambda d: d.update({"date": "yesterday"}), "date"),
    (lambda d: d.update({"metric": {}}), "metric"),
    (lambda d: d.update({"backfilled": True, "source": ""}), "source"),
    (lambda d: d["machine"].update({"threads": True}), "machine.threads"),
])
def test_a_malformed_record_names_the_file_and_the_field(tmp_path, edit, field):
    path = write_record(record(metrics_per_seed={"HR@10": [0.3]}), tmp_path)
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(RecordError) as e:
        load_records(tmp_path)
    assert str(path) in str(e.value) and f"field '{field}'" in str(e.value)


def test_invalid_json_and_a_misnamed_file_are_named(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{")
    with pytest.raises(RecordError, match=re.escape(str(bad))):
        load_records(tmp_path)
    bad.unlink()
    path = write_record(record(), tmp_path)
    path.rename(tmp_path / "renamed.json")
    with pytest.raises(RecordError, match="renamed.json.*expected sasrec__ml-1m__sasrec.json"):
        load_records(tmp_path)


def test_render_is_deterministic_with_one_headline_row_per_dataset_and_model():
    records = [
        record(),
        record(variant="masked", metrics={"HR@10": 0.305, "NDCG@10": 0.173}, date="2026-11-24"),
        record(model="qformer", metrics={"HR@10": 0.24}, headline=True),
        record(model="qformer", variant="old", metrics={"HR@10": 0.20}, date="2026-12-24"),
        record(dataset="Beauty", metrics_per_seed={"NDCG@10": [0.04]}, metrics={}),
        record(suite="ann", dataset="mixture", model="hnsw", metrics={"recall@100": 0.97}),
    ]
    text = render_results_md(records)
    assert text == render_results_md(list(reversed(records)))
    headline = text.split("## Headline", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in headline.splitlines() if line.startswith("| ") and not line.startswith("| dataset")]
    pairs = [tuple(c.strip() for c in row.split("|")[1:3]) for row in rows]
    assert pairs == [("Beauty", "sasrec"), ("ml-1m", "qformer"), ("ml-1m", "sasrec (masked)")]
    assert "0.2400" in rows[1]  # the marked record, though another is newer
    assert "0.3050" in rows[2]  # unmarked: the most recent
    assert "| 0.5632 |" in render_results_md(records[:1])  # Recall@50 column shows HR@50 under leave-one-out
    for r in records:  # every record has its section entry with protocol and command
        assert f'<a id="{record_filename(r).removesuffix(".json")}"></a>' in text
    assert text.count(f"- command: `{records[0].command}`") == len(records)
    assert "## ANN indexes" in text and text.index("## SASRec") < text.index("## ANN indexes")


def test_two_headline_marks_for_one_pair_are_an_error():
    with pytest.raises(RecordError, match="headline"):
        headline_records([record(headline=True), record(variant="x", headline=True)])


def test_check_detects_a_stale_file(tmp_path, capsys):
    recs, out = tmp_path / "results", tmp_path / "RESULTS.md"
    write_record(record(), recs)
    assert main(["render", "--records", str(recs), "--check", str(out)]) == 1  # missing
    assert main(["render", "--records", str(recs), "--out", str(out)]) == 0
    assert "[sasrec__ml-1m__sasrec.json](results/sasrec__ml-1m__sasrec.json)" in out.read_text()
    assert main(["render", "--records", str(recs), "--check", str(out)]) == 0
    write_record(record(metrics={"HR@10": 0.31}), recs)
    assert main(["render", "--records", str(recs), "--check", str(out)]) == 1
    assert "stale" in capsys.readouterr().err


def test_the_cli_runs_as_a_module(tmp_path):
    write_record(record(), tmp_path / "r")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "-m", "crbr.results", "render", "--records", str(tmp_path / "r"),
                        "--out", str(tmp_path / "R.md")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "R.md").read_text().startswith("# Benchmark results")


def test_record_from_a_results_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({
        "name": "sasrec_ml1m", "model": "sasrec", "dataset": "ml-1m",
        "split": "split=leave_one_out train_events=988,129 valid_users=6,040 test_users=6,040",
        "protocol": LINE.replace("history masked: no", "history masked: yes"),
        "test": {"HR@10": 0.3078, "NDCG@10": 0.1733, "Recall@50": 0.576, "MRR": 0.1477},
        "test_bucket_hr10": [0.373, 0.241, 0.193, 0.128, 0.025],
        "valid": {"HR@10": 0.31, "NDCG@10": 0.1741},
        "best_epoch": 36, "epochs_run": 56, "seconds_per_epoch": 2.8, "train_seconds": 160.0,
        "peak_rss_mb": 1500.0, "n_params": 699520, "world_size": 2, "seed": 43, "code_version": "e3eab8e",
        "config": {"name": "sasrec_ml1m", "out_dir": str(run), "train": {"threads": 1, "monitor": "NDCG@10"},
                   "model": {"tower_checkpoint": "/elsewhere/runs/qf/best.safetensors"}},
    }))
    r = record_from_results_json(run / "results.json", "sasrec", f"crbr train -c configs/sasrec_ml1m.yaml out_dir={run}",
                                 variant="masked", root=tmp_path)
    assert (r.suite, r.dataset, r.model, r.variant, r.seeds, r.code_version) == ("sasrec", "ml-1m", "sasrec", "masked", [43], "e3eab8e")
    assert r.protocol.history_masked is True and r.protocol.n_users == 6040 and r.protocol.split == "leave_one_out"
    assert r.metrics["HR@10"] == 0.3078 and r.metrics["tail_HR@10"] == 0.025 and r.metrics["valid/NDCG@10"] == 0.1741
    assert r.timings == {"seconds_per_epoch": 2.8, "train_seconds": 160.0, "peak_rss_mb": 1500.0, "epochs_run": 56, "best_epoch": 36}
    assert r.machine.threads == 2 and r.machine.cores == os.cpu_count()
    assert r.command == "crbr train -c configs/sasrec_ml1m.yaml out_dir=run" and r.config["out_dir"] == "run"
    assert r.config["model"]["tower_checkpoint"] == "…/qf/best.safetensors"
    assert load_records(write_record(r, tmp_path / "records").parent)[0].to_dict() == r.to_dict()


def test_the_benchmark_records_load_and_hold_no_machine_paths():
    records = load_records(RECORDS)
    assert records, "benchmarks/results/ holds no records"
    headline_records(records)  # at most one headline mark per (dataset, model)
    for path in sorted(RECORDS.glob("*.json")):
        text = path.read_text()
        assert not re.search(r"(?<![\w.])/(work|home|tmp)(/|\b)", text), f"{path.name} holds an absolute machine path"
