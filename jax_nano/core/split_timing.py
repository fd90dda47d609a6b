"""The step split's bookkeeping, shared by both frameworks' jax_nano/step_split.py and torch_ref/step_split.py:
each times its own halves; this keeps the medians and drops the batches that only compile and warm."""

import statistics
import time
from collections.abc import Callable, Iterable

HALVES = ("fwd_bwd_s", "optimizer_s", "step_s")
# Two, not one: the halves first run on the state the trainer was set up with and compile for it; the state its
# first whole step returns can differ in how its arrays are placed, and JAX compiles the halves once more for it
# (measured on the smoke step: 5.4 s and 2.5 s in the second batch against 1.1 s and 0.16 s after it).
WARM_BATCHES = 2


def split_medians(trainer, batches: Iterable, fwd_bwd: Callable, optimizer: Callable) -> dict:
    """{"fwd_bwd_s", "optimizer_s", "step_s"}: medians over `batches`, the first WARM_BATCHES left out, of the three
    things done on each batch in turn: `fwd_bwd(ids_BT)`, which returns what `optimizer` is then called with, and
    the trainer's whole step as the loop runs it (jax_nano/core/trainer.py: step, read, sync). The two calls must
    return only once their work is done."""
    times = {key: [] for key in HALVES}
    for k, ids_BT in enumerate(batches):
        t0 = time.perf_counter()
        grads = fwd_bwd(ids_BT)
        t1 = time.perf_counter()
        optimizer(grads)
        t2 = time.perf_counter()
        trainer.read(trainer.step(ids_BT))
        trainer.sync()
        t3 = time.perf_counter()
        if k >= WARM_BATCHES:
            for key, seconds in zip(HALVES, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}
