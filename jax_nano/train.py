"""The JAX trainer: one jitted, ahead-of-time compiled `train_step(state, batch) -> (state, metrics)`.

The Flax NNX model is split into a static graph and a parameter state (`nnx.split`) around `jax.jit`.
Compilation and the untimed warm-up happen in `setup()`, before the clock starts (jax_nano/core/loop.py).

On a token track the state is donated, so every step updates the weights in place. On a loss track it is not:
the loop reads step s's loss only after step s+1 is dispatched (the host never waits for the device), so when
step s was the first under the target, step s+1 has already run. The trainer keeps the input of the last
dispatched step (the state after step s) alive and `rewind()` returns to it. The step itself is the same
program on both tracks, with no conditional in it: a `lax.cond` on a "target met" flag made XLA's GPU runtime
copy the predicate to the host and wait for it every step, and on CPU it copied the whole state after the
conditional every step. The price is memory: one or two more train states (parameters and optimizer state)
are alive, since a step's outputs cannot reuse its inputs' buffers (PERFORMANCE.md gives the figures).

With a mesh (jax_nano/sharding.py) the same step is compiled with `in_shardings`/`out_shardings`: the batch is
split across every device, the state replicated (data parallel) or split along "fsdp" (ZeRO-3), and XLA adds
the collectives. The global batch and the learning-rate recipe do not change, so N devices run the same
optimization as one.
"""

import platform
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano import sharding as shd
from jax_nano.checkpoint import Checkpoints
from jax_nano.compiles import compile_counter
from jax_nano.core.checkpoints import fingerprint
from jax_nano.core.loop import Progress
from jax_nano.core.trainer import TrainerError
from jax_nano.layout import to_upstream
from jax_nano.model import GPT, count_params, loss_fn, matmul_precision
from jax_nano.optim import make_optimizer
from jax_nano.train_state import StatePlacement, TrainState, model_config_for


def make_train_step(graphdef, tx):
    def loss_of(params, ids_BT):
        return loss_fn(nnx.merge(graphdef, params), ids_BT)

    def train_step(state: TrainState, ids_BT):
        loss, grads = jax.value_and_grad(loss_of)(state.params, ids_BT)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # For the divergence guard (jax_nano/core/guard.py); in float32, as bf16 squares lose the norm.
        param_norm = optax.tree.norm(jax.tree.map(lambda p: p.astype(jnp.float32), params))
        return TrainState(params, opt_state, state.step + 1), {"loss": loss, "param_norm": param_norm}

    return train_step


def make_eval_step(graphdef):
    def eval_step(params, ids_BT):
        logits_BTV = nnx.merge(graphdef, params)(ids_BT)[:, :-1].astype(jnp.float32)
        labels_BT = ids_BT[:, 1:]
        nll_BT = jax.nn.logsumexp(logits_BTV, -1) - jnp.take_along_axis(logits_BTV, labels_BT[..., None], -1)[..., 0]
        correct = jnp.sum(jnp.argmax(logits_BTV, -1) == labels_BT)
        return jnp.sum(nll_BT), correct

    return eval_step


class JaxTrainer:
    framework = "jax"
    lag = 1

    def __init__(self, track: Track, cfg: ModelConfig, *, run_dir=None, init_weights: dict | None = None,
                 seed: int | None = None, mesh: jax.sharding.Mesh | None = None):
        self.track, self.cfg = track, model_config_for(track, cfg)
        self.run_dir, self.mesh = run_dir, mesh
        # Muon under sharding: see sharding.whole_matrices (stacked weights split along the layer axis are
        # orthogonalized where they lie; any other split matrix is gathered inside the step first).
        seed = track.seed if seed is None else seed
        self.tx = make_optimizer(track.optim, track.total_steps,
                                 whole_matrices=shd.whole_matrices(mesh) if mesh is not None else None, seed=seed)
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT(self.cfg, rngs=nnx.Rngs(0))))
        self.place = StatePlacement(track, self.cfg, self.tx, seed=seed, mesh=mesh,
                                    init_weights=init_weights)
        self._checkpoints = None
        compile_counter()  # counting starts before the first compilation

    @staticmethod
    def mesh_for(track: Track, spec: str | None):
        """The mesh `spec` asks for, or every device on the data axis when there is more than one device (None,
        the plain single-device path, otherwise)."""
        if spec is None and jax.device_count() == 1:
            return None
        built = shd.make_mesh(spec)
        shd.check_batch(track.batch_size, built)
        return built

    @staticmethod
    def processes() -> tuple[int, int]:
        return jax.process_index(), jax.process_count()

    # -- compile, warm up, reset ---------------------------------------------------------------------------

    def setup(self, warmup_batches: list, val_NBT: np.ndarray | None) -> float:
        """Compile the train and eval steps ahead of time, run the untimed warm-up steps, then reset weights
        and optimizer. Returns the seconds spent (Setup & Compilation Time)."""
        t0 = time.perf_counter()
        self._step, self._eval = self.compile_step(), self.compile_eval()
        place = self.place
        self.state = place.initial()
        for ids_BT in warmup_batches:
            self.state, _ = self._step(self.state, place.put(ids_BT))
        if val_NBT is not None:
            jax.block_until_ready(self._eval(self.state.params, place.put_global(val_NBT[0])))
        jax.block_until_ready(self.state)
        self.state, self._before_last = place.initial(), None
        jax.block_until_ready(self.state)
        return time.perf_counter() - t0

    def compile_step(self):
        """The train step, compiled ahead of time; its state is donated on token tracks only (module docstring)."""
        place = self.place
        sharded = place.jit_shardings(place.state_sharding, place.batch_sharding,
                                      out=(place.state_sharding, place.replicated))
        donate = () if self.track.is_loss_track else 0
        with matmul_precision(self.cfg.compute_dtype):  # the optimizer's matmuls too
            return jax.jit(make_train_step(self.graphdef, self.tx), donate_argnums=donate, **sharded).lower(
                place.abstract(), place.batch_spec()).compile()

    def compile_eval(self):
        """The eval step (summed NLL and correct argmax over a batch), compiled ahead of time."""
        place = self.place
        params_sharding = place.state_sharding.params if place.mesh is not None else None
        sharded = place.jit_shardings(params_sharding, place.batch_sharding, out=place.replicated)
        with matmul_precision(self.cfg.compute_dtype):
            return jax.jit(make_eval_step(self.graphdef), **sharded).lower(
                place.abstract().params, place.batch_spec()).compile()

    # -- the loop's interface ------------------------------------------------------------------------------

    def step(self, ids_BT):
        # A donated state is gone once the step is dispatched; only a loss track keeps it (for rewind).
        self._before_last = self.state if self.track.is_loss_track else None
        if self._checkpoints is not None:
            self._checkpoints.check()
        self.state, metrics = self._step(self.state, self.place.put(ids_BT))
        return metrics

    def rewind(self):
        """Back to the state before the last dispatched step: the loop found the target met one step earlier."""
        if self._before_last is None:
            raise TrainerError("no step to rewind: only a loss track keeps the state before its last step")
        self.state, self._before_last = self._before_last, None

    def read(self, handle) -> tuple[float, float]:
        got = jax.device_get(handle)
        return float(got["loss"]), float(got["param_norm"])

    def sync(self):
        jax.block_until_ready(self.state)

    def evaluate(self, val_NBT) -> dict:
        total_nll, total_correct = 0.0, 0
        for ids_BT in val_NBT:
            nll, correct = self._eval(self.state.params, self.place.put_global(ids_BT))
            total_nll, total_correct = total_nll + float(nll), total_correct + int(correct)
        n = val_NBT.shape[0] * val_NBT.shape[1] * (val_NBT.shape[2] - 1)
        val_loss = total_nll / n
        return {"val_loss": val_loss, "val_accuracy": total_correct / n, "val_perplexity": float(np.exp(val_loss))}

    # -- checkpoints (jax_nano/checkpoint.py) --------------------------------------------------------------

    def checkpoints(self) -> Checkpoints:
        if self._checkpoints is None:
            self._checkpoints = Checkpoints(self.run_dir, self.track.keep_checkpoints)
        return self._checkpoints

    def save(self, progress: Progress):
        self.checkpoints().save(int(progress.next_step), self.state, progress, fingerprint(self.track, self.cfg))

    def resume_step(self, fallback: bool = False) -> int | None:
        return self.checkpoints().choose(fallback=fallback)

    def saved_fingerprint(self, step: int) -> dict:
        return self.checkpoints().saved_fingerprint(step)

    def restore(self, step: int) -> Progress:
        self.state, progress = self.checkpoints().restore(step, self.place.abstract())
        return progress

    def discard_checkpoints(self, from_step: int) -> int | None:
        return self.checkpoints().discard(from_step)

    def close(self):
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None

    # -- what leaves the trainer ---------------------------------------------------------------------------

    def export(self) -> dict:
        """The weights in upstream's layout, as numpy arrays. Collective under a mesh: every process calls it."""
        return to_upstream(self.place.gathered(self.state.params), self.cfg)

    def compiles(self) -> int:
        return compile_counter().count

    def facts(self) -> dict:
        device = jax.local_devices()[0]
        stats = device.memory_stats() or {}  # of this process's first device; under a mesh each holds about as much
        return {"device": platform.processor() or "CPU" if device.platform == "cpu" else device.device_kind,
                "peak_memory_bytes": stats.get("peak_bytes_in_use"),
                "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__},
                "params": count_params(self.cfg), "n_devices": shd.n_devices(self.mesh),
                "n_processes": jax.process_count(), "mesh": shd.describe(self.mesh)}
