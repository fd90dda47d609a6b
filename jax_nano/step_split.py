"""One JAX train step split in two, for the race's report: forward+backward and the optimizer, timed apart.

The train step (jax_nano/train.py) is one jitted program, so XLA gives no boundary inside it; here its two
halves are compiled as programs of their own, from the trainer's own model and optax transform, and timed one
after the other, each waited for. torch_ref/step_split.py is the twin.
"""

import jax
import optax
from flax import nnx

from jax_nano.core.split_timing import split_medians
from jax_nano.model import loss_fn, matmul_precision


def split_times(trainer, batches) -> dict:
    """{"fwd_bwd_s", "optimizer_s", "step_s"}: medians over `batches` (the first two only compile and warm)
    of the gradient, the optimizer update on it, and the trainer's whole step. `trainer` is set up already."""
    graphdef, tx, place = trainer.graphdef, trainer.tx, trainer.place

    def grads_of(params, ids_BT):
        return jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p), ids_BT))(params)

    def update(state, grads):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    with matmul_precision(trainer.cfg.compute_dtype):
        grads_fn, update_fn = jax.jit(grads_of), jax.jit(update)
        return split_medians(
            trainer, batches,
            lambda ids_BT: jax.block_until_ready(grads_fn(trainer.state.params, place.put(ids_BT))),
            lambda grads: jax.block_until_ready(update_fn(trainer.state, grads)))
