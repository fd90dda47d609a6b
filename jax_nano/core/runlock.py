"""One process per run folder: a `flock` on `runs/<run>/.lock`, held for the run's life.

Two processes on one run name would delete each other's checkpoints in progress and interleave their logs. The
kernel drops a flock when its holder exits however it exits, so the lock of a dead process never blocks; the pid
written into the file is only there to name the holder in the refusal.
"""

import fcntl
import os
from pathlib import Path

from configs.errors import UserError
from jax_nano.core.safe_paths import open_nofollow, refuse_symlink
from jax_nano.core.storage import writing


class RunInUse(UserError):
    """Another live process holds the run's lock."""


class Held(Exception):
    """Another live process holds a lock file; `holder` is the pid it wrote there."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def hold(path: Path) -> int:
    """The descriptor of `path` (created if missing, never through a symlink) under an exclusive flock, with this
    process's pid written in it to name the holder; Held at once when another process holds it."""
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Held(holder) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class RunLock:
    """`with RunLock(run_dir, name):` holds the run folder's lock; refuses at once when another process holds it.

    `process` (a multi-process run's index) gives each process of one run its own lock file."""

    def __init__(self, run_dir, name: str, process: int | None = None):
        self.path = Path(run_dir) / (".lock" if not process else f".lock.{process}")
        self.name = name
        self._fd = None

    def __enter__(self) -> "RunLock":
        refuse_symlink(self.path.parent, "run folder")
        self._created = not self.path.parent.exists()
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._fd = hold(self.path)
            except Held as e:
                raise RunInUse(f"run {self.name!r} is in use by process {e.holder} (it holds {self.path}); wait for "
                               "it to end or choose another --run-name") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        if self._created and os.listdir(self.path.parent) == [self.path.name]:
            # A run refused before it wrote anything leaves no folder behind; unlinked while still held, so no
            # second process can hold this file and a new one at once.
            self.path.unlink()
            self.path.parent.rmdir()
        os.close(self._fd)  # releases the lock; otherwise the file stays, so no one races on re-creating it
        self._fd = None
