"""crbr.analysis (python -m benchmarks compare_runs): the validation metric at equal wall-clock, and the table."""

import json

import pytest

from crbr.analysis import best_within, compare_runs_main, valid_curve


def fake_run(path, elapsed_s, valid, test_hr10=0.2):
    path.mkdir()
    rows = ["epoch,train_loss,valid_NDCG@10,elapsed_s"]
    rows += [f"{i + 1},1.0,{'' if v is None else v},{t}" for i, (t, v) in enumerate(zip(elapsed_s, valid))]
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    (path / "results.json").write_text(json.dumps({
        "test": {"HR@10": test_hr10, "NDCG@10": 0.1, "HR@50": 0.4}, "test_bucket_hr10": [0.3, 0.0],
        "epochs_run": len(valid), "best_epoch": 2, "train_seconds": elapsed_s[-1], "seconds_per_epoch": 60.0,
        "protocol": "full ranking over 9 items", "seed": 1, "code_version": "abc"}))
    return path


def test_best_validation_within_each_budget(tmp_path):
    # epochs end at 5, 10, 20 and 31 minutes; the third epoch was not evaluated
    run = fake_run(tmp_path / "a", [300, 600, 1200, 1860], [0.05, 0.08, None, 0.07])
    curve = valid_curve(run, "NDCG@10")
    assert curve == [(5.0, 0.05), (10.0, 0.08), (31.0, 0.07)]
    assert best_within(curve, 4.9) is None
    assert best_within(curve, 10.0) == 0.08
    assert best_within(curve, 30.0) == 0.08  # the best so far, not the last
    assert best_within(curve, 31.0) == 0.08


def test_table_lists_each_run(tmp_path):
    a = fake_run(tmp_path / "a", [300, 600], [0.05, 0.08], test_hr10=0.25)
    b = fake_run(tmp_path / "b", [900], [0.06])
    text = compare_runs_main([f"first={a}", f"second={b}", "--at-minutes", "5", "10"])
    rows = [line for line in text.splitlines() if line.startswith("| first") or line.startswith("| second")]
    assert rows[0].split(" | ")[4:7] == ["0.0500", "0.0800", "0.2500"]
    assert rows[1].split(" | ")[4:6] == ["-", "-"]  # its only evaluation came at 15 minutes
    with pytest.raises(SystemExit, match="LABEL=RUN_DIR"):
        compare_runs_main([str(a)])
