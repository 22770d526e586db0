"""benchmarks/ and research/ run against the installed crbr package from any checkout: no
script edits sys.path, and no file there (nor the research log) names a folder of one
particular machine."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("benchmarks", "research")
ALSO = ("docs/research-log.md",)
TEXT = {".py", ".md", ".json", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".sh"}
SYS_PATH_EDIT = re.compile(r"sys\.path\s*(\.\s*(insert|append|extend|remove|pop|clear)\b|\[[^\]]*\]\s*=|\s*\+?=)")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(work|home|tmp|root|Users)(/|\b)")


def files() -> list[Path]:
    out = [p for d in FOLDERS for p in sorted((ROOT / d).rglob("*"))
           if p.is_file() and p.suffix in TEXT and "__pycache__" not in p.parts]
    out += [ROOT / f for f in ALSO if (ROOT / f).exists()]
    assert any(p.suffix == ".py" for p in out), "no scripts found"
    return out


def offending(pattern: re.Pattern) -> list[str]:
    hits = []
    for path in files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    return hits


def test_no_script_edits_sys_path():
    hits = offending(SYS_PATH_EDIT)
    assert not hits, "import crbr as the installed package instead of editing sys.path:\n" + "\n".join(hits)


def test_no_absolute_machine_paths():
    hits = offending(MACHINE_PATH)
    assert not hits, ("absolute machine paths (make them options with defaults relative to the repository, "
                      "or placeholders):\n" + "\n".join(hits))


def test_the_patterns_catch_what_they_should():
    for bad in ('sys.path.insert(0, "src")', "sys.path.append(x)", "sys.path += [x]", "sys.path[:0] = [x]",
                "sys.path = []"):
        assert SYS_PATH_EDIT.search(bad), bad
    for ok in ("print(sys.path)", "paths = list(sys.path)"):
        assert not SYS_PATH_EDIT.search(ok), ok
    for bad in ("/work/bench/x", "--out /tmp/x.json", '"/home/me/data"', "(/root/.cache)", "/Users/me"):
        assert MACHINE_PATH.search(bad), bad
    for ok in ("runs/tmp/x", "../shared/data", "/proc/self/status", "…/bench/x", "src/crbr/work/x"):
        assert not MACHINE_PATH.search(ok), ok
