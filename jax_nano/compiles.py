"""Counts XLA compilations in this process: the timed loop of a run must have none (everything is compiled
before the clock starts), and the summary says how many it had."""

import jax


class CompileCounter:
    """Counts backend compilations from the moment it is made; one per process (a listener cannot be removed)."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


_COUNTER = None


def compile_counter() -> CompileCounter:
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = CompileCounter()
    return _COUNTER
