"""One JAX train step split in two, for the race's report: forward+backward and the optimizer, timed apart.

The train step (jax_nano/train.py) is one jitted program, so XLA gives no boundary inside it; here its two
halves are compiled as programs of their own, from the trainer's own model and optax transform, and timed one
after the other, each waited for. torch_ref/step_split.py is the twin.
"""

import statistics
import time

import jax
import optax
from flax import nnx

from jax_nano.model import loss_fn, matmul_precision


def split_times(trainer, batches) -> dict:
    """{"fwd_bwd_s", "optimizer_s", "step_s"}: medians over `batches` (the first one only compiles and warms)
    of the gradient, the optimizer update on it, and the trainer's whole step. `trainer` is set up already."""
    graphdef, tx, place = trainer.graphdef, trainer.tx, trainer.place

    def grads_of(params, ids_BT):
        return jax.grad(lambda p: loss_fn(nnx.merge(graphdef, p), ids_BT))(params)

    def update(state, grads):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    with matmul_precision(trainer.cfg.compute_dtype):
        grads_fn, update_fn = jax.jit(grads_of), jax.jit(update)
        times = {"fwd_bwd_s": [], "optimizer_s": [], "step_s": []}
        for k, ids_BT in enumerate(batches):
            ids = place.put(ids_BT)
            t0 = time.perf_counter()
            grads = jax.block_until_ready(grads_fn(trainer.state.params, ids))
            t1 = time.perf_counter()
            jax.block_until_ready(update_fn(trainer.state, grads))
            t2 = time.perf_counter()
            trainer.read(trainer.step(ids_BT))
            trainer.sync()
            t3 = time.perf_counter()
            if k:
                times["fwd_bwd_s"].append(t1 - t0)
                times["optimizer_s"].append(t2 - t1)
                times["step_s"].append(t3 - t2)
    return {key: statistics.median(values) for key, values in times.items()}
