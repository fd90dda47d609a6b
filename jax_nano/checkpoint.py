"""Orbax checkpoints of a run: the train state plus the Progress a resume needs (data position, clock, losses).

Saves are asynchronous (the device keeps training while the host writes) and only the last N are kept. A
checkpoint records the fingerprint of the run that wrote it, so a resume with another model or recipe is
refused instead of silently mixing the two.

Every checkpoint carries `checksums.json` (jax_nano/core/checksums.py): the size and sha256 of every file of the
step directory, computed from the files on disk by process 0 once every process has written its shards and
before orbax renames the finished directory into place, so a step directory never exists without them. A
resume verifies them before it reads anything (`choose`, jax_nano/core/checkpoints.py). Orbax writes two small
files of the step directory while it renames it, after the checksums: `_CHECKPOINT_METADATA` (timestamps) and
`commit_success.txt`; they hold no state and are not covered.
"""

import dataclasses
import logging
import sys
from pathlib import Path

import orbax.checkpoint as ocp

from jax_nano.core import checksums
from jax_nano.core.checkpoints import ASIDE, CheckpointError, choose, newest_verified
from jax_nano.core.loop import Progress
from jax_nano.core.storage import cause_of, storage_error, writing

SUMS = "checksums.json"
_AFTER_SUMS = ("_CHECKPOINT_METADATA", "commit_success.txt")
_PENDING = ocp.path.atomicity_types.TMP_DIR_SUFFIX


class _ReportedOnce(logging.Filter):
    """Orbax logs a failed background save with its traceback, from the save thread and again from each wait on it,
    and asyncio logs each of its write tasks that failed when they are collected; a storage fault is reported by the
    run itself as one line (`Checkpoints.check`), so those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return cause_of(RuntimeError(record.getMessage())) is None and (exc is None or cause_of(exc) is None)


def _aftermath(value) -> bool:
    return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


def _quiet_hooks() -> None:
    """When a save fails, the writer's other pending file operations still complete one by one and report to the
    save's event loop, closed by then: each prints a traceback as an unraisable exception. The failure itself is
    reported as one line; these are its noise."""
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda u: None if _aftermath(u.exc_value) else unraisable(u)


_quiet_hooks()
for _logger in ("absl", "asyncio"):
    logging.getLogger(_logger).addFilter(_ReportedOnce())


class Checkpoints:
    """`runs/<run>/checkpoints/<step>/`: orbax step directories, each with its `checksums.json`."""

    def __init__(self, run_dir, keep: int):
        self.folder = Path(run_dir).absolute() / "checkpoints"
        self.keep = keep
        self._mgr = None
        self._saving = None  # the step being written (orbax finishes one save before it starts the next)

    def _manager(self) -> ocp.CheckpointManager:
        if self._mgr is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, enable_async_checkpointing=True, create=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksums))
            self._mgr = ocp.CheckpointManager(self.folder, options=options)
        return self._mgr

    def _write_checksums(self):
        # Orbax calls this on process 0 only, after every process has written, while the step is still in its
        # temporary directory (on file systems without atomic rename orbax writes in place).
        pending = self.folder / f"{self._saving}{_PENDING}"
        root = pending if pending.is_dir() else self.folder / str(self._saving)
        files = {f.relative_to(root).as_posix(): f for f in root.rglob("*") if f.is_file()}
        checksums.write_manifest(root / SUMS, {name: f for name, f in files.items() if name not in _AFTER_SUMS})

    def steps(self) -> list[int]:
        """The finished checkpoints (an interrupted save leaves only a temporary directory, never one of these)."""
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name) for p in self.folder.iterdir() if p.name.isdigit() and p.is_dir())

    def problem(self, step: int) -> str | None:
        root = self.folder / str(step)
        present = [f for f in root.rglob("*") if f.is_file() and f.relative_to(root).as_posix() not in _AFTER_SUMS]
        return checksums.problem(root, root / SUMS, present)

    def found(self) -> list:
        """[(step, [its directory])], oldest first."""
        return [(step, [self.folder / str(step)]) for step in self.steps()]

    def save(self, step: int, state, progress, fp: dict) -> None:
        self.wait()
        self._saving = step
        meta = {"progress": dataclasses.asdict(progress), "fingerprint": fp}
        with writing(self.folder / str(step)):
            self._manager().save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                               meta=ocp.args.JsonSave(meta)))

    def _failed(self, e: Exception) -> Exception:
        error = storage_error(self.folder / str(self._saving), e, " (a background checkpoint save failed)")
        return e if error is None else error

    def check(self) -> None:
        """Raise now if a background save has failed, rather than at the next save. A host check, no device sync:
        once no save is in progress, waiting returns at once, with the failure if there was one."""
        if self._mgr is not None and self._saving is not None and not self._mgr.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Until the save in flight is written; its failure raises here."""
        if self._mgr is not None:
            try:
                self._mgr.wait_until_finished()
            except Exception as e:
                raise self._failed(e) from None

    def choose(self, *, fallback: bool = False) -> int | None:
        """The step a resume takes: the newest checkpoint that verifies (module `choose`); None if there is none."""
        import jax
        from jax.experimental import multihost_utils

        sync = multihost_utils.sync_global_devices if jax.process_count() > 1 else None
        return choose(self.found(), self.problem, fallback=fallback, aside=self.folder.parent / ASIDE,
                      lead=jax.process_index() == 0, sync=sync)

    def saved_fingerprint(self, step: int) -> dict:
        """The settings the checkpoint of `step` was saved with (its small JSON part only)."""
        mgr = self._manager()
        mgr.reload()
        try:
            return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]["fingerprint"]
        except Exception as e:  # orbax raises many types for a directory it cannot read
            raise self._unreadable(step, e) from e

    def _unreadable(self, step: int, e: Exception) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.folder / str(step)} cannot be restored ({type(e).__name__}), "
                               "although its checksums verify; restore it from a copy or start afresh")

    def restore(self, step: int, abstract_state):
        """(state, Progress) of the checkpoint of `step`, one that `choose` verified and whose settings the driver
        has checked (`saved_fingerprint`)."""
        mgr = self._manager()
        mgr.reload()
        try:
            meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:
            raise self._unreadable(step, e) from e
        return state["state"], Progress(**meta["progress"])

    def discard(self, from_step: int) -> int | None:
        """Delete the checkpoints of steps >= from_step; the step of the newest remaining one that verifies."""
        mgr = self._manager()
        self.wait()
        for step in mgr.all_steps():
            if step >= from_step:
                mgr.delete(step)
        return newest_verified(self.found(), self.problem)

    def close(self) -> None:
        if self._mgr is not None:
            self.wait()
            self._mgr.close()
