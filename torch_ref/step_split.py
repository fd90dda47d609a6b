"""One PyTorch train step split in two, for the race's report: forward+backward and the optimizer, timed apart.

The twin of jax_nano/step_split.py: the trainer's own (compiled or eager) model, loss and optimizers, each half
synchronised before the clock is read.
"""

import statistics
import time

from torch_ref import optim
from torch_ref.model import loss_fn


def split_times(trainer, batches) -> dict:
    """{"fwd_bwd_s", "optimizer_s", "step_s"}: medians over `batches` (the first one only warms) of the forward
    and backward pass, the optimizer step after it, and the trainer's whole step. `trainer` is set up already."""
    times = {"fwd_bwd_s": [], "optimizer_s": [], "step_s": []}
    for k, ids_BT in enumerate(batches):
        ids = trainer._put(ids_BT)
        trainer.sync()
        t0 = time.perf_counter()
        with trainer._autocast():
            loss = loss_fn(trainer.forward, ids)
        loss.backward()
        trainer.sync()
        t1 = time.perf_counter()
        optim.step(trainer.model, trainer.optimizers, trainer.schedulers, trainer.track.optim.grad_clip)
        trainer.sync()
        t2 = time.perf_counter()
        trainer.read(trainer.step(ids_BT))
        trainer.sync()
        t3 = time.perf_counter()
        if k:
            times["fwd_bwd_s"].append(t1 - t0)
            times["optimizer_s"].append(t2 - t1)
            times["step_s"].append(t3 - t2)
    return {key: statistics.median(values) for key, values in times.items()}
