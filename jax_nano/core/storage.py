"""Writes that fail for lack of space or permission become one line naming the path and the cause.

A run writes checkpoints, a summary, a metrics log, a plot and maybe a leaderboard row; any of them can meet a
full disk, a read-only mount or a folder the user may not write. Those are the user's to fix, so they end the run
with `StorageError` (one line, exit 2) instead of a traceback; any other error still raises as it is. The folders
are also checked before compilation, with room for one checkpoint, so a run does not fail only at its first save.
"""

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from configs.errors import UserError

CAUSES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
# Orbax's writer (tensorstore) reports its failures as text, without an errno.
_TEXTS = (("No space left", "disk full"), ("RESOURCE_EXHAUSTED", "disk full"), ("Disk quota", "disk quota exceeded"),
          ("Read-only file system", "read-only file system"), ("Permission denied", "permission denied"))
_FIX = {"disk full": "free space there or point --results-dir / --runs-dir at a disk with room",
        "disk quota exceeded": "free space under your quota or point --results-dir / --runs-dir elsewhere",
        "read-only file system": "choose a writable folder with --results-dir / --runs-dir",
        "permission denied": "make the folder writable for this user or choose another with --results-dir / --runs-dir"}


class StorageError(UserError):
    """A write refused by the file system; one line with the path, the cause and the fix."""


def cause_of(exc: BaseException) -> str | None:
    """"disk full", "read-only file system", ... for an error (or one it was raised from) that is a storage fault."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in CAUSES:
            return CAUSES[exc.errno]
        text = str(exc)
        for fragment, cause in _TEXTS:
            if fragment in text:
                return cause
        exc = exc.__cause__ or exc.__context__
    return None


def storage_error(path, exc: BaseException, note: str = "") -> StorageError | None:
    """The StorageError for `exc` while writing `path`, or None when `exc` is not a storage fault."""
    cause = cause_of(exc)
    if cause is None:
        return None
    return StorageError(f"cannot write {path}: {cause}{note}; {_FIX[cause]}")


@contextlib.contextmanager
def writing(path, note: str = ""):
    """Turn a storage fault inside the block into a StorageError naming `path`; other errors pass unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        error = storage_error(path, e, note)
        if error is None:
            raise
        raise error from None


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def require_room(folder, need_bytes: int = 0) -> None:
    """`folder` can be made, a file can be created in it, and it has `need_bytes` free. What this made to find out
    is removed again: a run refused later leaves no empty folders behind."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    probe = folder / f".write-check-{os.getpid()}-{secrets.token_hex(4)}"
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    free = shutil.disk_usage(folder).free
    for path in made:  # deepest first
        path.rmdir()
    if free < need_bytes:
        raise StorageError(f"cannot write {folder}: disk full ({_mib(free)} free, a checkpoint of this run needs "
                           f"about {_mib(need_bytes)}); {_FIX['disk full']}")
