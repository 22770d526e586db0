"""`python -m benchmarks` lists and dispatches the suites; every suite, tool and investigation
builds its command line; benchmarks/RESULTS.md is what the records render to."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESEARCH = ["crbr_beams", "crbr_variants", "item_side_ceiling", "synthetic_oracle", "residual_branch", "window_offsets"]


def entries():
    return importlib.import_module("benchmarks").ENTRIES


@pytest.fixture(autouse=True)
def repository_importable(monkeypatch):
    """The benchmarks and research packages import from the repository root, as `python -m` does
    when run there."""
    monkeypatch.syspath_prepend(str(ROOT))


def test_list_names_every_suite_and_tool():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for e in entries():
        assert f"  {e.name} " in out.stdout and e.description in out.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "no_such_suite"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown suite" in bad.stderr


def test_every_entry_and_investigation_builds_its_options(capsys):
    modules = [f"benchmarks.{e.module}" for e in entries()] + [f"research.{name}" for name in RESEARCH]
    for name in modules:
        mod = importlib.import_module(name)
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name


def test_make_bench_runs_the_headline_suites():
    bench = importlib.import_module("benchmarks")
    assert set(bench.HEADLINE) <= {e.name for e in bench.ENTRIES if e.kind == "suite"}
    text = (ROOT / "Makefile").read_text()
    target = text.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    run = [line.split("-m benchmarks ", 1)[1].split()[0] for line in target.splitlines() if "-m benchmarks " in line]
    assert run == bench.HEADLINE


def test_results_md_is_generated_from_the_records():
    out = subprocess.run([sys.executable, "-m", "crbr.results", "render", "--check", "benchmarks/RESULTS.md"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
