"""The README's examples run, so they cannot drift from the code.

Fenced blocks whose info string holds `readme-test` are taken from README.md:

  ```python readme-test        executed in-process
  ```bash readme-test          run line by line with bash, `crbr` on the PATH
  ```LANG readme-test PATH     written to PATH (a config, the head of a data file)

They run in a temporary folder that holds a `configs/quickstart.yaml` shrunk to a tiny synthetic
world (the README's code is what a user types; only the world is smaller), and synthetic rows are
appended to the data files the README shows the head of. The last tests check that every
relative link of the README and docs/ points at a file of this repository and an anchor that
exists there, and that those pages speak of the software only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
TINY_WORLD = {"n_users": 150, "n_items": 200, "n_categories": 8, "history_median": 20, "max_history": 100}


def readme_blocks() -> list[tuple[list[str], str]]:
    """(info words, code) of every block marked readme-test, in README order."""
    return [(info.split(), code) for info, code in FENCE.findall(README.read_text())
            if "readme-test" in info.split()]


def block(language: str, path: str | None = None, nth: int = 0) -> str:
    found = [code for words, code in readme_blocks()
             if words[0] == language and (path is None or words[-1] == path)]
    assert len(found) > nth, f"README has no {language} readme-test block{' for ' + path if path else ''} #{nth + 1}"
    return found[nth]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder with a tiny configs/quickstart.yaml, a crbr shim on the PATH and its own cache."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["data"]["synthetic"].update(TINY_WORLD)
    cfg["train"].update({"threads": 1, "progress": False})
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quickstart.yaml").write_text(yaml.safe_dump(cfg))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "crbr"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m crbr.cli.main "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("CRBR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_bash(code: str, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, f"README commands failed:\n{code}\n--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}"
    return out


def test_the_python_example_runs_and_its_comments_hold(workdir):
    code = block("python")
    assert 10 <= len([ln for ln in code.splitlines() if ln.strip() and not ln.startswith(("from ", "import "))]) <= 15
    ns: dict = {"__name__": "readme"}
    exec(compile(code, "README.md (python)", "exec"), ns)
    fit, ev, model, top, split = ns["fit"], ns["ev"], ns["model"], ns["top"], ns["split"]
    assert (workdir / "runs" / "quickstart" / "checkpoints" / "best.safetensors").exists()
    # "the same as fit.test.metrics["NDCG@10"]": the reloaded checkpoint scores exactly as the fit's test
    assert ev.evaluate_model(model).metrics["NDCG@10"] == fit.test.metrics["NDCG@10"]
    assert top.ids.shape == (3, 10) and (top.ids > 0).all()
    assert split.test.users[:3].shape == (3,)


def test_the_command_line_example_runs(workdir):
    out = run_bash(block("bash", nth=0), workdir)
    assert "test:" in out.stdout and "HR" in out.stdout
    assert (workdir / "top100.parquet").exists()
    assert list((workdir / "runs" / "quickstart" / "plots").glob("*.png"))


def _own_data(workdir: Path) -> None:
    """The README's data files (their shown lines first) and config, plus enough synthetic events."""
    events_head = block("text", "data/events.csv")
    items_head = block("text", "data/items.csv")
    rng = np.random.default_rng(0)
    actions = ["view", "view", "view", "cart", "purchase", "dislike"]
    shown = {line.split(",")[0] for line in items_head.splitlines()[1:]}
    rows = []
    for u in range(2, 61):
        t = np.datetime64("2024-03-01T09:00:00") + np.timedelta64(int(rng.integers(0, 30 * 24 * 3600)), "s")
        for _ in range(int(rng.integers(8, 25))):
            t = t + np.timedelta64(int(rng.integers(60, 6 * 3600)), "s")
            stamp = str(t).replace("T", " ")
            rows.append(f"U{u:04d},SKU-{int(rng.integers(0, 80)):03d},{rng.choice(actions)},{stamp}")
    (workdir / "data").mkdir()
    (workdir / "data" / "events.csv").write_text(events_head + "\n".join(rows) + "\n")
    items = [f'SKU-{i:03d},"Item {i}, size {i % 4}",{["shoes", "bags", "hats"][i % 3]}|{["sale", "new"][i % 2]}'
             for i in range(80) if f"SKU-{i:03d}" not in shown]
    (workdir / "data" / "items.csv").write_text(items_head + "\n".join(items) + "\n")
    (workdir / "my_log.yaml").write_text(block("yaml", "my_log.yaml"))


def test_the_own_data_example_prepares_and_trains(workdir):
    _own_data(workdir)
    out = run_bash(block("bash", nth=1), workdir)
    assert "my_log: 60 users, 80 items" in out.stdout
    assert "actions ['view', 'cart', 'purchase', 'dislike']" in out.stdout and "timestamps yes" in out.stdout
    assert (workdir / "runs" / "my_log" / "results.json").exists()


def test_the_shown_data_rows_are_read_as_the_readme_says(workdir):
    """The three shown events of U0001 and the shown item rows, on their own, load as described."""
    from crbr.config import load_config
    from crbr.data.prepare import prepare

    (workdir / "data").mkdir()
    (workdir / "data" / "events.csv").write_text(block("text", "data/events.csv"))
    (workdir / "data" / "items.csv").write_text(block("text", "data/items.csv"))
    (workdir / "my_log.yaml").write_text(block("yaml", "my_log.yaml"))
    cfg = load_config("my_log.yaml", ["data.preprocess.kcore=0", "data.use_cache=false"])
    ds = prepare(cfg.data)
    assert ds.n_users == 1 and sorted(ds.item_ids[1:]) == ["SKU-006", "SKU-021"]
    assert [ds.action_names[a] for a in ds.actions] == ["view", "cart", "purchase"]
    i = list(ds.item_ids).index("SKU-006")
    cats = ds.cat_ids[ds.cat_offsets[i]: ds.cat_offsets[i + 1]]
    assert sorted(ds.category_names[c] for c in cats) == ["sale", "shoes"]
    assert ds.item_text[i].startswith("Trail shoe, blue")


# ----------------------------------------------------------------------------- links and wording
PAGES = [README] + sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "research-log.md")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR_ID = re.compile(r"<a id=\"([^\"]+)\"")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation removed, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    prose = FENCE.sub("", text)
    out: set[str] = set()
    for m in re.finditer(r"^#{1,6} (.+)$", prose, re.M):
        slug, n = github_slug(m.group(1)), 1
        while slug in out:  # repeated headings get -1, -2, ...
            slug = f"{github_slug(m.group(1))}-{n}"
            n += 1
        out.add(slug)
    return out | set(ANCHOR_ID.findall(text))


def test_the_slugs_are_githubs():
    assert github_slug("CRBR against the Set-Transformer retriever and SASRec (`python -m benchmarks crbr`)") == \
        "crbr-against-the-set-transformer-retriever-and-sasrec-python--m-benchmarks-crbr"
    assert github_slug("Q-Former user tower (system design §3.1)") == "q-former-user-tower-system-design-31"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_anchor_of_this_repository(page):
    bad = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT.resolve() not in dest.parents and dest != ROOT.resolve():
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pages_name_no_file_outside_the_repository(page):
    text = page.read_text()
    for pattern in (r"\.\./shared", r"\bDESIGN\.md\b", r"\bseeds?/", r"\bseed 00\d\b"):
        assert not re.search(pattern, text), f"{page.relative_to(ROOT)} mentions {pattern}"
