"""`crbr quickstart` runs the whole pipeline end to end (a tiny world, one epoch per stage)."""

from crbr.cli.main import main


def test_quickstart_runs_every_stage_and_prints_beams(tmp_path, capsys):
    args = ["quickstart", "--out", str(tmp_path), "--epochs", "1", "data.synthetic.n_users=150",
            "data.synthetic.n_items=200", "data.synthetic.n_categories=8", "data.synthetic.history_median=20",
            "data.synthetic.max_history=100", "train.threads=1", "train.progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for label in ("popularity", "SASRec", "Q-Former (max-sim)", "Set-Transformer (SAB+PMA)", "CRBR"):
        assert label in out
    assert "Retrieval A" not in out and "Retrieval B" not in out
    assert "== stage two_tower: Set-Transformer (SAB+PMA)" in out and "== stage crbr: CRBR" in out
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("model "))
    table = lines[start : start + 7]  # header, rule, popularity + 4 stages
    assert table[1].startswith("---") and len({len(ln) for ln in table}) == 1  # columns aligned
    assert [ln.split("  ")[0] for ln in table[2:]] == ["popularity", "SASRec", "Q-Former (max-sim)",
                                                       "Set-Transformer (SAB+PMA)", "CRBR"]
    assert "protocol: full ranking over 200 items" in out
    assert "HNSW index over 200 item vectors" in out and out.count("  beam 4 codes") >= 1
    for stage in ("sasrec", "qformer", "two_tower", "crbr"):
        assert (tmp_path / stage / "checkpoints" / "best.safetensors").exists()
    assert (tmp_path / "ground_truth.parquet").exists()


# ----------------------------------------------------------------------------- settings, notes, beams
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from crbr.cli.quickstart import (beam_without_items, has_command, next_steps, quickstart_config, tail_is_informative,
                                 tail_note)

TINY = ["data.synthetic.n_users=150", "data.synthetic.n_items=200", "data.synthetic.n_categories=8",
        "data.synthetic.history_median=20", "data.synthetic.max_history=100", "train.threads=1"]


def test_progress_bars_follow_the_terminal_unless_the_user_sets_them(tmp_path):
    assert quickstart_config(None, [], tmp_path, terminal=False).train.progress is False
    assert quickstart_config(None, [], tmp_path, terminal=True).train.progress is True
    assert quickstart_config(None, ["train.progress=true"], tmp_path, terminal=False).train.progress is True
    cfg_file = tmp_path / "qs.yaml"
    cfg_file.write_text("train: {epochs: 2, progress: false}\n")
    cfg = quickstart_config(str(cfg_file), [], tmp_path, terminal=True)
    assert cfg.train.progress is False and cfg.train.epochs == 2
    # the rest of the defaults are untouched, and the run goes where --out says
    cfg = quickstart_config(None, TINY, tmp_path / "out", terminal=False)
    assert cfg.model_name == "sasrec" and cfg.train.seed == 0 and cfg.run_dir == tmp_path / "out"


class _Res:
    def __init__(self, tail_hr: float):
        self.bucket_hr10 = [0.5, 0.3, 0.2, 0.1, tail_hr]


def test_the_tail_column_is_shown_only_when_some_model_hits_the_tail():
    assert not tail_is_informative([("a", _Res(0.0)), ("b", _Res(0.0))])
    assert tail_is_informative([("a", _Res(0.0)), ("b", _Res(0.01))])


def test_tail_note_explains_the_empty_tail_with_the_worlds_own_probabilities():
    from crbr.data.dataset import leave_one_out, train_item_counts
    from crbr.data.synthetic import SyntheticConfig, generate
    from crbr.eval.metrics import popularity_buckets

    world = generate(SyntheticConfig(seed=0, n_users=150, n_items=200, n_categories=8, history_median=20,
                                     max_history=100))
    split = leave_one_out(world.dataset)
    counts = train_item_counts(world.dataset, split)
    buckets = popularity_buckets(counts, 5)
    note = tail_note(world, split, counts, buckets, 5)
    assert "the 40 least popular items" in note
    m = re.search(r"and (\d+) of the (\d+) test targets", note)
    n_tail = int((buckets[split.test.target_items] == 4).sum())
    assert m and int(m.group(1)) == n_tail and int(m.group(2)) == 150
    if n_tail:
        hits = re.search(r"put only (\d+) of the (\d+) in their top 10", note)
        assert hits and 0 <= int(hits.group(1)) <= int(hits.group(2)) == n_tail


def _paths(vectors: torch.Tensor, items: torch.Tensor, k: int):
    """A PathRetrieval of one user whose beams are `vectors` (T, D), as crbr.retrieval.retrieve builds it."""
    from crbr.index import SearchResult, build_index, merge_results
    from crbr.models.base import QueryVectors
    from crbr.retrieval import PathRetrieval

    index = build_index(items, "exact")
    T = vectors.shape[0]
    flat = index.search(vectors.numpy(), k)
    merged = merge_results([SearchResult(flat.scores[t : t + 1], flat.ids[t : t + 1]) for t in range(T)], k)
    qv = QueryVectors(vectors[None], torch.zeros(1, T))
    return PathRetrieval(merged.ids, merged.scores, merged.sources.astype(np.int64), qv), index


def test_a_beam_without_items_says_which_beams_took_them():
    g = torch.Generator().manual_seed(0)
    items = torch.randn(21, 8, generator=g)
    items[0] = 0  # padding row
    q = torch.randn(8, generator=g)
    # beam 2 ranks the items as beam 1 does at half the score; beam 3's best items score near 0
    r, index = _paths(torch.stack([q, 0.5 * q, -0.01 * q]), items, k=5)
    assert set(r.path[0].tolist()) == {0}  # beam 1 keeps every item
    assert beam_without_items(r, 0, 1, index, 5) == (
        "(all 5 of its items in the merged top 5 were retrieved with a higher score by beam 1)")
    assert beam_without_items(r, 0, 2, index, 5) == "(none of its items made the merged top 5)"


def test_next_steps_name_this_runs_folders(tmp_path):
    text = next_steps(tmp_path)
    assert f"crbr report {tmp_path / 'qformer'}" in text
    assert f"--checkpoint {tmp_path / 'sasrec' / 'checkpoints' / 'best.safetensors'}" in text
    assert "crbr pipeline -c configs/pipelines/crbr_ml1m.yaml" in text
    for cmd in re.findall(r"-c (configs/\S+\.yaml)", text):
        assert (Path(__file__).resolve().parents[2] / cmd).is_file(), cmd
    assert ("crbr serve --help" in text) == has_command("serve")  # suggested only where it exists
    assert has_command("semantic-ids") and not has_command("no-such-command")


def test_a_redirected_quickstart_log_has_no_progress_bars_and_no_third_party_info(tmp_path):
    """Run as a user runs it with `> log 2>&1`: stderr is not a terminal."""
    out = subprocess.run([sys.executable, "-m", "crbr.cli.main", "quickstart", "--out", str(tmp_path), "--epochs", "1",
                          *TINY], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "\r" not in out.stderr and "it/s" not in out.stderr  # no tqdm bars
    logged = re.findall(r"^\d\d:\d\d:\d\d (\S+) (\w+): ", out.stderr, re.M)
    assert logged and all(name.startswith("crbr") or level in ("WARNING", "ERROR", "CRITICAL") for name, level in logged)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == len(logged)  # every stderr line is a log line (4 stages x 1 epoch here)
    assert "(no items kept)" not in out.stdout
    assert "\nnext:\n  crbr report" in out.stdout
