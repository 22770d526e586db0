"""crbr.fileio: atomic writes, the permissions they give, and cleanup of temporaries of dead writers."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crbr import fileio
from crbr.fileio import (
    STALE_TEMP_AGE_S,
    atomic_dir,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    is_stale_temp,
    process_tag,
    remove_stale_temps,
    write_table,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="permission bits and pids are POSIX")


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name)


# ----------------------------------------------------------------------------- permissions
@pytest.mark.parametrize(
    "mask, file_mode, dir_mode",
    [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)],
    ids=["umask022", "umask077", "umask002"],
)
def test_modes_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    t = atomic_write_text(tmp_path / "new" / "a.json", "{}")
    assert t == tmp_path / "new" / "a.json" and t.read_text() == "{}"
    assert mode(t) == file_mode and mode(t.parent) == dir_mode
    assert mode(atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")) == file_mode
    with atomic_file(tmp_path / "c.bin") as tmp, open(tmp, "wb") as f:
        f.write(b"x")
    assert mode(tmp_path / "c.bin") == file_mode
    table = pa.table({"x": [1, 2]})
    assert mode(write_table(table, tmp_path / "t.parquet")) == file_mode
    assert mode(write_table(table, tmp_path / "t.csv")) == file_mode
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert mode(tmp_path / "d") == dir_mode and mode(tmp_path / "d" / "f") == file_mode
    assert temps(tmp_path) == []


def test_mode_is_restored_when_the_writer_recreates_the_file(tmp_path, umask):
    umask(0o022)
    with atomic_file(tmp_path / "x") as tmp:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # like tempfile.mkstemp
        os.write(fd, b"data")
        os.close(fd)
    assert mode(tmp_path / "x") == 0o644 and (tmp_path / "x").read_bytes() == b"data"


def test_crbr_writers_use_the_umask(tmp_path, umask):
    from crbr.data.synthetic import SyntheticConfig, generate
    from crbr.features.files import write_features
    from crbr.features.text import save_npy_atomic

    umask(0o022)
    world = generate(SyntheticConfig.tiny(n_users=20, max_history=40))
    ds = world.dataset
    feats = np.ones((ds.n_items + 1, 3), dtype=np.float32)
    paths = [
        world.save_ground_truth(tmp_path / "gt.parquet"),
        write_features(ds, feats, tmp_path / "f.npy"),
        write_features(ds, feats, tmp_path / "f.parquet"),
        save_npy_atomic(tmp_path / "m.npy", feats),
        ds.save(tmp_path / "ds"),
    ]
    for p in paths:
        assert mode(p) == (0o755 if p.is_dir() else 0o644), p
    assert np.array_equal(np.load(tmp_path / "m.npy"), feats)
    assert temps(tmp_path) == []


# ----------------------------------------------------------------------------- atomicity
def test_temporary_is_a_hidden_sibling_with_tag_and_pid(tmp_path):
    target = tmp_path / "model.safetensors"
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.is_file() and tmp.stat().st_size == 0
        assert re.fullmatch(rf"\.model\.safetensors\.{process_tag()}-{os.getpid()}\.[0-9a-f]{{8}}\.tmp", tmp.name)
        assert not target.exists()
        tmp.write_bytes(b"w")
    assert target.read_bytes() == b"w" and temps(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_write_leaves_no_temporary_and_the_target_unchanged(tmp_path, exc):
    target = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(exc):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise exc("boom")
    assert target.read_text() == "old" and temps(tmp_path) == []
    with pytest.raises(exc):
        with atomic_file(tmp_path / "new.txt") as tmp:
            raise exc("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failed_write_table_and_dir(tmp_path):
    write_table(pa.table({"x": [1]}), tmp_path / "t.parquet")
    with pytest.raises(Exception):
        write_table("not a table", tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet")["x"].to_pylist() == [1]
    with atomic_dir(tmp_path / "d") as d:
        (d / "v1").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "v2").write_text("2")
            raise RuntimeError("boom")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["v1"]
    with atomic_dir(tmp_path / "d") as d:  # replacing an existing directory
        (d / "v3").write_text("3")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["v3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "t.parquet"]


def test_fsync_before_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    atomic_write_text(tmp_path / "a", "x")
    assert calls[:2] == ["fsync", "replace"]
    calls.clear()
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert "fsync" in calls and calls.index("fsync") < calls.index("replace")


def test_long_target_name(tmp_path):
    name = "n" * 240 + ".json"
    assert atomic_write_text(tmp_path / name, "x").read_text() == "x"


# ----------------------------------------------------------------------------- stale temporaries
WRITER = """
import sys, time
from crbr.fileio import atomic_file
with atomic_file(sys.argv[1]) as tmp:
    tmp.write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(600)
"""


def start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process in the middle of an atomic write of `target`, and its temporary."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file(), "the writer did not start"
    return proc, tmp


def test_temporary_of_a_killed_writer_is_removed_on_the_next_write(tmp_path):
    target = tmp_path / "state.pt"
    proc, tmp = start_writer(target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    other = tmp_path / "other.pt"
    atomic_write_text(other, "o")  # a write of another target leaves it alone
    assert tmp.exists()
    atomic_write_text(target, "new")
    assert not tmp.exists() and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt", "state.pt"]


def test_temporary_of_a_live_writer_is_kept(tmp_path):
    target = tmp_path / "state.pt"
    proc, tmp = start_writer(target)
    try:
        atomic_write_text(target, "mine")
        old = time.time() - 2 * STALE_TEMP_AGE_S
        os.utime(tmp, (old, old))  # age does not matter while the writer lives
        atomic_write_text(target, "mine again")
        assert tmp.read_bytes() == b"partial" and target.read_text() == "mine again"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    with atomic_file(target) as mine:  # another thread of this process writing the same target
        atomic_write_text(target, "concurrent")
        assert mine.exists()


def test_stale_rules_for_other_machines_and_older_versions(tmp_path):
    target = tmp_path / "items.parquet"
    foreign_tag = "0" * 8 if process_tag() != "0" * 8 else "1" * 8
    names = {
        f".items.parquet.{foreign_tag}-123.0123abcd.tmp": True,  # other machine: age decides
        "items.parquet.tmp-ab12_z9x": True,  # older crbr (mkstemp prefix)
        "items.parquet.k2j3l4m5.tmp": True,  # older crbr (checkpoint style)
        ".items.parquet.notours.tmp": False,  # resembles, but is not a crbr temporary
        "items.parquet.bak": False,
        ".other.parquet.0123abcd-1.0123abcd.tmp": False,  # another target's
    }
    for n in names:
        (tmp_path / n).write_text("x")
    assert remove_stale_temps(target) == []  # all fresh: nothing removed
    old = time.time() - STALE_TEMP_AGE_S - 60
    for n in names:
        os.utime(tmp_path / n, (old, old))
    assert {p.name for p in remove_stale_temps(target)} == {n for n, stale in names.items() if stale}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)
    # a stale temporary directory of atomic_dir (dead pid under this tag) is removed as a tree
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    d = tmp_path / f".ds.{process_tag()}-{dead.pid}.0123abcd.tmp"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f.npy").write_text("x")
    assert is_stale_temp(d, tmp_path / "ds")
    with atomic_dir(tmp_path / "ds") as new:
        (new / "f").write_text("y")
    assert not d.exists() and (tmp_path / "ds" / "f").read_text() == "y"
