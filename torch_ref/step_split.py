"""One PyTorch train step split in two, for the race's report: forward+backward and the optimizer, timed apart.

The twin of jax_nano/step_split.py: the trainer's own (compiled or eager) model, loss and optimizers, each half
synchronised before the clock is read.
"""

from jax_nano.core.split_timing import split_medians
from torch_ref import optim
from torch_ref.model import loss_fn


def split_times(trainer, batches) -> dict:
    """{"fwd_bwd_s", "optimizer_s", "step_s"}: medians over `batches` (the first two only warm) of the forward
    and backward pass, the optimizer step after it, and the trainer's whole step. `trainer` is set up already."""

    def fwd_bwd(ids_BT):
        ids = trainer._put(ids_BT)
        with trainer._autocast():
            loss = loss_fn(trainer.forward, ids)
        loss.backward()
        trainer.sync()

    def optimizer(_):
        optim.step(trainer.model, trainer.optimizers, trainer.schedulers, trainer.track.optim.grad_clip)
        trainer.sync()

    return split_medians(trainer, batches, fwd_bwd, optimizer)
