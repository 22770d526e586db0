"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    """CPU model, core count, Python and kernel version of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def machine_line() -> str:
    m = machine()
    return f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, Linux {m['kernel']}"


def write_section(path: Path, name: str, section: str, title: str | None = None) -> None:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` in a results file
    (or append the block, under `title`, at the end), atomically; the file is re-read first so
    sections written by other scripts are kept."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + (f"## {title}\n\n" if title else "") + block + "\n"
    tmp = path.with_name(f"{path.name}.{name.replace(':', '_')}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
