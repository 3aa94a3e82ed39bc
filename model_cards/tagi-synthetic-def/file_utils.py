"""Small shared helpers: atomic directory writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling directory that replaces `path` only if the block finishes without error.

    A crash or exception never leaves a half-written `path`: either the old content stays, or the new one is
    complete. The temporary directory is removed on failure.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        tmp.chmod(_default_mode(0o777))  # mkdtemp makes it 0700: give it the permissions a plain mkdir would
        yield tmp
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves the directory `source` to `target` by renames; an existing `target` is kept under a hidden name until
    `source` is in place, then deleted. `source` must be on the same file system (a sibling, as staging folders are).
    """
    source, target = Path(source), Path(target)
    if not target.exists():
        os.replace(source, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


def _default_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, _default_mode(0o666))  # mkstemp makes it 0600: give it what a plain open() would
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
