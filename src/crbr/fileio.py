"""Atomic writes of files and directories: build the content in a temporary sibling, then rename
it over the target, so a reader never sees a half-written file and a crash loses nothing.

Every file or directory crbr writes goes through `atomic_file` (or `atomic_write_text`,
`atomic_write_bytes`, `write_table`) or `atomic_dir`:

- Permissions: the result gets the mode a plain `open()` / `mkdir()` would give under the
  current umask (files 0666 & ~umask, directories 0777 & ~umask, default ACLs applied by the
  kernel as usual), not the 0600 / 0700 of `tempfile.mkstemp` / `mkdtemp`, so a team sharing a
  run directory can read what crbr writes.
- Durability: a file is fsync'ed before the rename (a directory: every file in it), and the
  parent directory after it (best effort).
- Temporaries are named `.<target name>.<tag>-<pid>.<random>.tmp` (hidden, beside the target),
  where <tag> identifies this machine, boot and pid namespace (`process_tag()`) and <pid> is the
  writer's process id. A writer killed mid-write leaves its temporary behind; the next write of
  the same target removes it when it is stale (`is_stale_temp`):
    * written under this tag: when process <pid> no longer exists (a live pid, whoever holds
      it, protects the file, so a temporary of a live writer is never removed);
    * written under another tag (another machine, container or boot, where the pid cannot be
      checked): when it has not been modified for STALE_TEMP_AGE_S (24 hours).
  Temporaries of older crbr versions (`<name>.tmp-XXXXXXXX`, `<name>.XXXXXXXX.tmp`), which
  record no pid, are removed under the same 24-hour rule. Nothing else is ever removed. The
  check lists the target's folder once per write.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

__all__ = [
    "STALE_TEMP_AGE_S",
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_stale_temp",
    "process_tag",
    "remove_stale_temps",
    "write_table",
]

STALE_TEMP_AGE_S = 24 * 3600  # a temporary from another machine / boot / container is stale after this
_NAME_BYTES = 200  # at most this much of the target name goes into a temporary's name (255-byte limit)
_TEMP_RE = re.compile(r"(?P<tag>[0-9a-f]{8})-(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp")
_LEGACY_RE = re.compile(r"\.tmp-[a-z0-9_]{8}|\.[a-z0-9_]{8}\.tmp")


# ----------------------------------------------------------------------------- public helpers
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_file(p) as tmp:` write the file `tmp` (an empty file beside `p`, created with
    mode 0666 & ~umask; write into it by path or reopen it, in place); on success it is fsync'ed
    and renamed over `p`; on error it is removed and `p` is left unchanged. Parent folders are
    created; stale temporaries of `p` left by dead writers are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        mode = os.fstat(fd).st_mode & 0o7777  # what the umask (and default ACLs) allow
    finally:
        os.close(fd)
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o7777 != mode:  # a writer that recreated the file
            os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_file`); returns `path` as a Path."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_file`); returns `path` as a Path."""
    return atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_dir(p) as tmp:` write files into the empty folder `tmp` (mode 0777 & ~umask);
    on success its files are fsync'ed and `tmp` replaces `p` (an existing `p` is moved aside
    first and removed after); on error `tmp` is removed and `p` is left unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_path(path)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def write_table(table, path: str | os.PathLike) -> Path:
    """Write a pyarrow Table atomically: Parquet if `path` ends with .parquet, else CSV."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    with atomic_file(path) as tmp:
        if path.suffix == ".parquet":
            pq.write_table(table, str(tmp))
        else:
            pacsv.write_csv(table, str(tmp), write_options=pacsv.WriteOptions(quoting_style="needed"))
    return path


# ----------------------------------------------------------------------------- temporaries
@functools.lru_cache(maxsize=1)
def process_tag() -> str:
    """8 hex digits naming where a recorded pid can be checked: this host name, the kernel's boot
    id and this process's pid namespace (so two containers or two boots never share a tag)."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):  # fmt: skip
        try:
            parts.append(read())
        except OSError:
            parts.append("?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of target `path` that no live writer can be using (rules in the
    module docstring); returns what was removed. Never raises: cleanup is best effort."""
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        tmp = Path(entry.path)
        try:
            if is_stale_temp(tmp, path):
                _remove(tmp)
                removed.append(tmp)
        except OSError:
            continue
    return removed


def is_stale_temp(tmp: str | os.PathLike, target: str | os.PathLike, now: float | None = None) -> bool:
    """Whether `tmp` is a temporary of `target` (this version's naming or an older crbr's) that no
    live writer can be using: written under this `process_tag()` by a pid that no longer exists,
    or else unmodified for STALE_TEMP_AGE_S. Files not named like a crbr temporary of `target`
    are never stale."""
    tmp, name = Path(tmp), Path(target).name
    prefix = _temp_prefix(name)
    m = _TEMP_RE.fullmatch(tmp.name[len(prefix):]) if tmp.name.startswith(prefix) else None
    if m is None and not (tmp.name.startswith(name) and _LEGACY_RE.fullmatch(tmp.name[len(name):])):
        return False
    if m is not None and m["tag"] == process_tag():
        alive = _pid_alive(int(m["pid"]))
        if alive is not None:
            return not alive
    age = (time.time() if now is None else now) - os.lstat(tmp).st_mtime
    return age > STALE_TEMP_AGE_S


def _temp_prefix(name: str) -> str:
    """`.<name>.`, the name cut to _NAME_BYTES bytes so that temporaries of long names still fit."""
    return f".{os.fsdecode(os.fsencode(name)[:_NAME_BYTES])}."


def _temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path`: `.<name>.<tag>-<pid>.<random>.tmp`."""
    return path.with_name(f"{_temp_prefix(path.name)}{process_tag()}-{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool | None:
    """Whether process `pid` exists (a zombie does not count); None where this cannot be checked."""
    if pid == os.getpid():
        return True
    if os.name != "posix" or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :][:1] != "Z"


# ----------------------------------------------------------------------------- renames, fsync
def _swap_in(tmp: Path, path: Path) -> None:
    """Rename `tmp` over `path`; an existing `path` is moved aside first (put back if the rename
    fails) and removed after."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    old = _temp_path(path)  # a writer killed here leaves it; it is cleaned like any temporary
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(old, path)
        raise
    finally:
        _remove(old)


def _remove(p: Path) -> None:
    """Remove a file or a folder tree if it exists."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush the file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames in it) to disk; best effort (not possible everywhere)."""
    with contextlib.suppress(OSError):
        _fsync(path)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk."""
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d, f)
            if not p.is_symlink():
                _fsync(p)
        _fsync_dir(Path(d))
