"""The machine's load around a race: what else was running while the frameworks were timed.

On a shared machine the load decides the result (PyTorch's OpenMP threads degrade far more than XLA's when
the cores are shared), so a race records the 1-minute load average (`os.getloadavg`) before its first run and
every few seconds during the runs, and its report warns when other work shared the cores. The race itself keeps
up to one thread per core busy, so the load during it counts as others' only above the core count: the warning
takes a mean during the runs above 1.25 x the cores, or a load before them above half the cores (then nothing
of the race was running yet). A quiet 2-core race runs at a load of about 1.7-2.1.
"""

from __future__ import annotations

import os
import threading


class LoadMonitor:
    """`with LoadMonitor() as load: ...`, then `load.summary()`; samples from a daemon thread."""

    def __init__(self, every_s: float = 5.0, getloadavg=os.getloadavg, cores: int | None = None):
        self.every_s, self._getloadavg = every_s, getloadavg
        self.cores = cores or os.cpu_count() or 1
        self.before = None
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self) -> LoadMonitor:
        self.before = self._getloadavg()[0]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(self._getloadavg()[0])

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(self._getloadavg()[0])

    def summary(self) -> dict:
        during = self.samples or [self.before]
        mean = sum(during) / len(during)
        busy = self.before > 0.5 * self.cores or mean > 1.25 * self.cores
        return {"cores": self.cores, "before": self.before, "during_mean": mean,
                "during_max": max(during), "samples": len(self.samples), "above_cores": busy}


def describe(load: dict | None) -> list[str]:
    """The report's lines about the load (a warning first when other work shared the cores)."""
    if not load:
        return []
    text = (f"machine load (1-minute average, {load['cores']} cores): {load['before']:.2f} before the runs, "
            f"{load['during_mean']:.2f} on average and {load['during_max']:.2f} at most during them "
            f"({load['samples']} samples)")
    if load["above_cores"]:
        return [f"WARNING: other work shared the {load['cores']} cores (a load above half of them before the runs, "
                "or above 1.25 x them during the runs, which alone keep them busy), so these figures are not a "
                "quiet machine's; rerun on a quiet one", text]
    return [text]
