import json
from pathlib import Path

import pytest

from crbr.stats import load_seed_metrics, paired, paired_seed_table, t975


def write(out: Path, name: str, seed: int, ndcg: float) -> None:
    d = out / f"{name}_s{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"test": {"NDCG@10": ndcg}}))


def test_paired_difference_interval_and_shared_seeds(tmp_path):
    for seed, a, b in ((1, 0.10, 0.11), (2, 0.20, 0.23), (3, 0.30, 0.32)):
        write(tmp_path, "base", seed, a)
        write(tmp_path, "new", seed, b)
    write(tmp_path, "base", 4, 0.5)  # only one run has seed 4: left out of the pairing
    write(tmp_path, "base_extra", 1, 0.0)  # another run whose name starts like "base": not read as "base"
    res = load_seed_metrics(tmp_path, ["base", "new"], "NDCG@10")
    assert set(res["base"]) == {1, 2, 3, 4} and set(res["new"]) == {1, 2, 3}
    table, seeds = paired_seed_table(res, "base", "NDCG@10")
    assert seeds == [1, 2, 3]
    # differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01, se 0.01 / sqrt(3), t(0.975, 2) = 4.303
    p = paired([0.10, 0.20, 0.30], [0.11, 0.23, 0.32])
    se = 0.01 / 3 ** 0.5
    assert p["mean"] == pytest.approx(0.02) and p["se"] == pytest.approx(se)
    assert (p["lo"], p["hi"]) == pytest.approx((0.02 - 4.303 * se, 0.02 + 4.303 * se))
    assert (p["wins"], p["losses"]) == (3, 0)
    assert "| new | 0.2200 ± 0.1054 | +0.0200 ± 0.0058 | [-0.0048, +0.0448] | +10.0% | 3 / 0 |" in table
    assert t975(10) == 2.228 and t975(100) == 1.96


def test_runs_from_other_folders_and_the_validation_split(tmp_path):
    for seed, v in ((1, 0.4), (2, 0.6)):
        d = tmp_path / "sweep" / f"residual_s{seed}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"test": {"NDCG@10": 0.0}, "valid": {"NDCG@10": v}}))
        d = tmp_path / "main" / f"sasrec_s{seed}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"test": {"NDCG@10": 0.0}, "valid": {"NDCG@10": 0.5}}))
    res = load_seed_metrics(tmp_path / "main", ["sasrec", f"g0={tmp_path / 'sweep' / 'residual'}"], "NDCG@10", "valid")
    assert res == {"sasrec": {1: 0.5, 2: 0.5}, "g0": {1: 0.4, 2: 0.6}}
    table, _ = paired_seed_table(res, "sasrec", "NDCG@10", "valid")
    assert "valid NDCG@10" in table and "| g0 | 0.5000 ± 0.1414 | +0.0000 ± 0.1000 |" in table
