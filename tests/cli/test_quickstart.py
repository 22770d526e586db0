"""`crbr quickstart` runs the whole pipeline end to end (a tiny world, one epoch per stage)."""

from crbr.cli.main import main


def test_quickstart_runs_every_stage_and_prints_beams(tmp_path, capsys):
    args = ["quickstart", "--out", str(tmp_path), "--epochs", "1", "data.synthetic.n_users=150",
            "data.synthetic.n_items=200", "data.synthetic.n_categories=8", "data.synthetic.history_median=20",
            "data.synthetic.max_history=100", "train.threads=1", "train.progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for label in ("popularity", "SASRec", "Q-Former (max-sim)", "Retrieval A (SAB+PMA)", "Retrieval B (CRBR)"):
        assert label in out
    assert "protocol: full ranking over 200 items" in out
    assert "HNSW index over 200 item vectors" in out and out.count("  beam 4 codes") >= 1
    for stage in ("sasrec", "qformer", "two_tower", "crbr"):
        assert (tmp_path / stage / "checkpoints" / "best.safetensors").exists()
    assert (tmp_path / "ground_truth.parquet").exists()
