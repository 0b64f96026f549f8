"""Atomic file and directory writes: a crash or Ctrl-C never leaves a half-written checkpoint, config or export
behind. Also the lock files that keep two processes out of one folder, and JSON read with errors that name the
file."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status). Elsewhere only
    setting one returns it, so that is done once, at first use: at import it set 0 for a moment, and a file
    another thread created meanwhile was world-writable."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return _umask_by_setting()


@functools.cache
def _umask_by_setting() -> int:
    mask = os.umask(0o077)  # for the moment it is set, files are made private, never more open
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp (and some writers' own temp files) make 0600 files: give it the usual permissions
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except OSError as error:  # name the file the user asked for, not the hidden temporary one
        if error.filename is None or str(tmp) not in str(error.filename):
            raise
        raise type(error)(error.errno, f"Could not write {target}: {error.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


STAGING, RETIRED, HELD = ".partial", ".old", ".lock"  # beside the target: .NAME.XXXXXXXX.partial/.old/.lock
_STAGED_HERE: set[Path] = set()  # this process's own (POSIX record locks never conflict within a process)


@contextlib.contextmanager
def atomic_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty directory beside `target` that becomes `target` only if the block succeeds.

    An existing `target` is kept unless `overwrite`; then it is replaced only once the new one is whole. The
    staging directory is held by a lock file beside it while it is written, so that what a killed process left
    (`kill -9`, SIGTERM, a crash) is told from a write under way, and removed by the next write to `target`.
    """
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists: choose another output path, or pass --overwrite.")
    if target.exists() and not target.is_dir():
        raise FileExistsError(
            f"{target} is a file, not a folder: --overwrite replaces folders only; choose another path."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    fd, lock_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=HELD, dir=target.parent)
    os.close(fd)
    lock = Path(lock_name)
    stem = lock.with_name(lock.name.removesuffix(HELD))
    staging, retired = _beside(stem, STAGING), _beside(stem, RETIRED)
    _STAGED_HERE.add(stem)
    try:
        with exclusive(lock, wait=False):  # held (and written: no longer empty) before the staging directory exists
            staging.mkdir()
            yield staging
            os.chmod(staging, 0o777 & ~current_umask())
            if target.exists():
                retired.mkdir()
                os.replace(target, retired / target.name)
                os.replace(staging, target)
                shutil.rmtree(retired)
            else:
                os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        lock.unlink(missing_ok=True)
        _STAGED_HERE.discard(stem)


def _beside(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def remove_stale_staging(target: Path) -> None:
    """Remove what writes to `target` left when they were killed: recognised by their names, stale when no
    process holds their lock (an empty lock file is one being taken right now). A retired copy of `target`
    stays while `target` is missing (a kill between the two renames of an overwrite): it is the complete one."""
    ours = re.compile(
        rf"\.{re.escape(target.name)}\.[a-z0-9_]+({re.escape(STAGING)}|{re.escape(RETIRED)}|{re.escape(HELD)})"
    )
    left = set()
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        kind = ours.fullmatch(path.name)
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by its own process
            if kind and (kind[1] != HELD or path.stat().st_size):
                left.add(path.with_name(path.name.removesuffix(kind[1])))
    for stem in left - _STAGED_HERE:
        with contextlib.suppress(BlockingIOError), exclusive(_beside(stem, HELD), wait=False):  # else: under way
            shutil.rmtree(_beside(stem, STAGING), ignore_errors=True)
            if target.exists():
                shutil.rmtree(_beside(stem, RETIRED), ignore_errors=True)
            _beside(stem, HELD).unlink()


@contextlib.contextmanager
def exclusive(lock_file: Path, wait: bool = True) -> Iterator[None]:
    """Holds `lock_file` (created when missing) for the block; the holder's PID is written in it. With `wait`
    the others queue (torchrun's ranks on one cold download); without, a held lock raises BlockingIOError naming
    the holder (two runs into one folder). The file stays, as huggingface_hub's do: removing it would let a
    waiting process and a newcomer hold two different locks."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+b") as handle:
        try:
            _lock(handle, wait)
        except OSError:
            handle.seek(0)
            holder = handle.read().decode(errors="replace").strip() or "another process"
            raise BlockingIOError(
                f"{lock_file.parent} is in use by process {holder}: wait for it to finish, or use another folder."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode())
        handle.flush()
        try:
            yield
        finally:
            _unlock(handle)


def _lock(handle, wait: bool) -> None:
    """A POSIX record lock, not flock: it belongs to this process alone, so processes it forks (loading workers)
    do not hold it too — after kill -9 of a run, its orphaned workers would keep the folder locked until they
    noticed. (A record lock ends when this process closes any handle of the file: only `exclusive` opens it.)"""
    if fcntl is not None:
        fcntl.lockf(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # Windows
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)


def _unlock(handle) -> None:
    if fcntl is not None:
        fcntl.lockf(handle, fcntl.LOCK_UN)
    else:
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


def check_writable(target: Path) -> None:
    """Refuse an output path that cannot be written, before any work is done (without creating anything)."""
    existing = next(parent for parent in (target, *target.parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write into {target}: {existing} is not a writable folder; choose another --out.")


RESAVE_MODEL = "re-save the model or fix the file"


def read_json(path: Path, remedy: str = RESAVE_MODEL) -> Any:
    """A JSON file's content; a missing or damaged file raises an error that names it and says what to do
    (`remedy`): json's own message names a line and column, never the file."""
    try:
        return parse_json(Path(path).read_text(encoding="utf-8"), path, remedy)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist.") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {remedy}.") from None


def parse_json(text: str | bytes, source: Any, remedy: str = RESAVE_MODEL) -> Any:
    """JSON read from `source` (a file or a URL), which a damaged text's error names."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{source} is not valid JSON ({error}): {remedy}.") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON (indented) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
