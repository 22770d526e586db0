"""`crbr semantic-ids build` and `report` end to end on a small synthetic world."""

import json

from crbr.cli.main import main


def test_build_then_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CRBR_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: sid\ndata:\n  name: synthetic\n  synthetic: {seed: 1, n_users: 120, n_items: 150, n_categories: 6}\n")
    out = tmp_path / "ids.parquet"
    assert main(["semantic-ids", "build", "-c", str(cfg), "--features", "random:12:2", "--out", str(out),
                 "--levels", "2", "--codebook-size", "8", "4", "--reassign"]) == 0
    assert "after: 0.0000" in capsys.readouterr().out
    assert main(["semantic-ids", "report", str(out), "-c", str(cfg), "--out", str(tmp_path / "h")]) == 0
    rep = json.loads((tmp_path / "h" / "report.json").read_text())
    assert rep["sizes"] == [8, 4] and rep["ids"]["collision_rate_after_disambiguation"] == 0.0
    assert "inertia" in rep["codebook"][1] and (tmp_path / "h" / "usage.png").stat().st_size > 0
    assert "lift" in capsys.readouterr().out
    # a malformed file is a clear error, not a traceback
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    assert main(["semantic-ids", "report", str(bad), "-c", str(cfg)]) == 2
    assert "not a crbr semantic-ID file" in capsys.readouterr().err
