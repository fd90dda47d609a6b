"""SIGTERM and SIGINT end a run cleanly: the current step finishes, a checkpoint is saved, the run says how to resume.

A cluster scheduler or a spot instance sends SIGTERM and waits a grace period before SIGKILL; Ctrl-C sends SIGINT.
The first signal only sets `received`: the timed loop (jax_nano/core/loop.py) stops at the next step boundary and
the driver saves. A second signal means "now": the process exits at once with 128 + the signal's number, and the
checkpoint being written is left as a temporary file that a resume ignores, so the previous one stays the newest.
"""

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """`with StopSignals() as stop:` ... `stop.received` is the first signal's name (e.g. "SIGTERM") or None.

    Handlers are installed only in the main thread (Python allows no other) and when `enabled`; the previous
    handlers come back on exit."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.received: str | None = None
        self.signum: int | None = None
        self._previous = {}

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum if self.signum is not None else 0

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self.signum = name, signum
            print(f"{name}: finishing this step and saving a checkpoint (send it again to exit at once)",
                  file=sys.stderr, flush=True)
            return
        print(f"second {name}: exiting now without saving; --resume takes the newest finished checkpoint",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def __enter__(self) -> "StopSignals":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
