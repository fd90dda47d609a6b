"""The JAX trainer: one jitted, ahead-of-time compiled `train_step(state, batch) -> (state, metrics)`.

The Flax NNX model is split into a static graph and a parameter state (`nnx.split`) around `jax.jit`.
Compilation and the untimed warm-up happen in `setup()`, before the clock starts (jax_nano/loop.py).

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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano import checkpoint as ckpt
from jax_nano import sharding as shd
from jax_nano.convert import jax_to_torch, load_params, torch_to_jax
from jax_nano.model import GPT, loss_fn, matmul_precision
from jax_nano.optim import make_optimizer


class TrainState(NamedTuple):
    params: nnx.State
    opt_state: optax.OptState
    step: jax.Array


# precision policy -> (compute dtype, parameter dtype)
PRECISION_DTYPES = {"float32": ("float32", "float32"), "bf16": ("bfloat16", "bfloat16"),
                    "bf16-compute": ("bfloat16", "float32")}


def model_config_for(track: Track, cfg: ModelConfig) -> ModelConfig:
    """Apply the track's precision policy and model levers (loss chunking, remat, unrolling, attention kernel)."""
    compute_dtype, param_dtype = PRECISION_DTYPES[track.precision]
    return cfg.replace(compute_dtype=compute_dtype, param_dtype=param_dtype, loss_chunk=track.loss_chunk,
                       remat=track.remat, unroll_layers=track.unroll_layers, attention=track.attention)


def make_train_step(graphdef, tx):
    def loss_of(params, ids_BT):
        return loss_fn(nnx.merge(graphdef, params), ids_BT)

    def train_step(state: TrainState, ids_BT):
        loss, grads = jax.value_and_grad(loss_of)(state.params, ids_BT)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), {"loss": loss}

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

    def __init__(self, track: Track, cfg: ModelConfig, *, run_dir=None, init_state_dict=None, seed: int | None = None,
                 mesh: jax.sharding.Mesh | None = None):
        self.track, self.cfg = track, model_config_for(track, cfg)
        self.seed = track.seed if seed is None else seed
        self.run_dir, self.init_state_dict = run_dir, init_state_dict
        self.mesh = mesh
        # Muon under sharding: see sharding.whole_matrices (stacked weights split along the layer axis are
        # orthogonalized where they lie; any other split matrix is gathered inside the step first).
        self.tx = make_optimizer(track.optim, track.total_steps,
                                 whole_matrices=shd.whole_matrices(mesh) if mesh is not None else None)
        self.graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT(self.cfg, rngs=nnx.Rngs(0))))
        self.batch_sharding = None
        self.state_sharding = None
        self._replicated = None
        if mesh is not None:
            shd.check_batch(track.batch_size, mesh)
            shd.check_unroll(self.cfg, mesh)
            self.batch_sharding = shd.batch_sharding(mesh)
            self.state_sharding = shd.state_sharding(mesh, jax.eval_shape(self._fresh_state))
            self._replicated = shd.replicated(mesh)
        # The init is jitted with the state's shardings as outputs: each device computes only its shards, so a
        # large model never materializes whole on one device.
        self._init = jax.jit(self._fresh_state, **self._out(self.state_sharding))
        self._manager = None

    @staticmethod
    def _out(sharding) -> dict:
        return {} if sharding is None else {"out_shardings": sharding}

    # -- state ---------------------------------------------------------------------------------------------

    def _state_of(self, params) -> TrainState:
        return TrainState(params, self.tx.init(params), jnp.zeros([], jnp.int32))

    def _fresh_state(self) -> TrainState:
        return self._state_of(nnx.state(GPT(self.cfg, rngs=nnx.Rngs(self.seed)), nnx.Param))

    def initial_state(self) -> TrainState:
        if self.init_state_dict is None:
            return self._init()
        model = GPT(self.cfg, rngs=nnx.Rngs(self.seed))
        load_params(model, torch_to_jax(self.init_state_dict, self.cfg))
        state = self._state_of(nnx.state(model, nnx.Param))
        return jax.device_put(state, self.state_sharding) if self.state_sharding is not None else state

    def abstract_state(self):
        """ShapeDtypeStructs of the state, carrying this trainer's shardings (a restore target: a checkpoint
        saved on another device count is resharded onto this mesh as it is read)."""
        abstract = jax.eval_shape(self._fresh_state)
        shardings = self.state_sharding
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree.map(lambda _: device, abstract)
        return shd.with_sharding(abstract, shardings)

    # -- compile, warm up, reset ---------------------------------------------------------------------------

    def setup(self, warmup_batches: list, val_NBT: np.ndarray | None) -> float:
        """Compile the train and eval steps ahead of time, run the untimed warm-up steps, then reset weights
        and optimizer. Returns the seconds spent (Setup & Compilation Time)."""
        t0 = time.perf_counter()
        self._step = self.compile_step()
        sharded = {}
        if self.mesh is not None:
            sharded = {"in_shardings": (self.state_sharding.params, self.batch_sharding),
                       "out_shardings": self._replicated}
        with matmul_precision(self.cfg.compute_dtype):
            self._eval = jax.jit(make_eval_step(self.graphdef), **sharded).lower(
                self.abstract_state().params, self._batch_spec()).compile()
        self.state = self.initial_state()
        for ids_BT in warmup_batches:
            self.state, _ = self._step(self.state, self._put(ids_BT))
        if val_NBT is not None:
            jax.block_until_ready(self._eval(self.state.params, self._put_global(val_NBT[0])))
        jax.block_until_ready(self.state)
        self.state, self._before_last = self.initial_state(), None
        jax.block_until_ready(self.state)
        return time.perf_counter() - t0

    def compile_step(self):
        """The train step, compiled ahead of time; its state is donated on token tracks only (module docstring)."""
        sharded = {}
        if self.mesh is not None:
            sharded = {"in_shardings": (self.state_sharding, self.batch_sharding),
                       "out_shardings": (self.state_sharding, self._replicated)}
        donate = () if self.track.is_loss_track else 0
        with matmul_precision(self.cfg.compute_dtype):  # the optimizer's matmuls too
            return jax.jit(make_train_step(self.graphdef, self.tx), donate_argnums=donate, **sharded).lower(
                self.abstract_state(), self._batch_spec()).compile()

    def _batch_spec(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.track.batch_size, self.track.seq_len), jnp.int32,
                                    sharding=self.batch_sharding)

    def _put(self, ids_BT):
        """This process's rows of a global batch (its TrainLoader share) -> the global, sharded batch."""
        ids_BT = np.asarray(ids_BT, np.int32)
        if self.batch_sharding is None:
            return jnp.asarray(ids_BT)
        global_shape = (self.track.batch_size, *ids_BT.shape[1:])
        return jax.make_array_from_process_local_data(self.batch_sharding, ids_BT, global_shape)

    def _put_global(self, ids_BT):
        """A batch every process holds in full (the validation batches) -> the global, sharded batch."""
        ids_BT = np.asarray(ids_BT, np.int32)
        if self.batch_sharding is None:
            return jnp.asarray(ids_BT)
        return shd.global_array(self.batch_sharding, ids_BT)

    # -- the loop's interface ------------------------------------------------------------------------------

    def step(self, ids_BT):
        # A donated state is gone once the step is dispatched; only a loss track keeps it (for rewind).
        self._before_last = self.state if self.track.is_loss_track else None
        self.state, metrics = self._step(self.state, self._put(ids_BT))
        return metrics["loss"]

    def rewind(self):
        """Back to the state before the last dispatched step: the loop found the target met one step earlier."""
        self.state, self._before_last = self._before_last, None

    def read(self, loss) -> float:
        return float(loss)

    def sync(self):
        jax.block_until_ready(self.state)

    def evaluate(self, val_NBT) -> dict:
        total_nll, total_correct = 0.0, 0
        for ids_BT in val_NBT:
            nll, correct = self._eval(self.state.params, self._put_global(ids_BT))
            total_nll, total_correct = total_nll + float(nll), total_correct + int(correct)
        n = val_NBT.shape[0] * val_NBT.shape[1] * (val_NBT.shape[2] - 1)
        val_loss = total_nll / n
        return {"val_loss": val_loss, "val_accuracy": total_correct / n, "val_perplexity": float(np.exp(val_loss))}

    # -- checkpoints and export ----------------------------------------------------------------------------

    def manager(self) -> ckpt.Checkpoints:
        if self._manager is None:
            self._manager = ckpt.Checkpoints(self.run_dir, self.track.keep_checkpoints)
        return self._manager

    def save(self, progress, fingerprint: dict | None = None):
        self.manager().save(int(progress.next_step), self.state, progress, fingerprint or self.fingerprint())

    def resume_step(self, fallback: bool = False) -> int | None:
        """The newest checkpoint that verifies, None if there is none; a newer one that fails is refused, or with
        `fallback` set aside (jax_nano/checkpoint.py). Reads checksums only: it can run before `setup`."""
        return self.manager().choose(fallback=fallback)

    def restore(self, step: int):
        """The Progress of the checkpoint of `step` (from `resume_step`), its state restored into this trainer."""
        self.state, progress = self.manager().restore(step, self.abstract_state(), self.fingerprint())
        return progress

    def discard_checkpoints(self, from_step: int) -> int | None:
        """Delete the checkpoints of steps >= from_step; the step of the newest one kept that verifies."""
        return self.manager().discard(from_step)

    def close(self):
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def fingerprint(self) -> dict:
        return ckpt.fingerprint(self.track, self.cfg)

    def export_state_dict(self) -> dict:
        """The weights in upstream's PyTorch layout. Collective under a mesh: every process must call it."""
        params = self.state.params
        if self.mesh is not None:
            params = jax.jit(lambda p: p, out_shardings=self._replicated)(params)
        return jax_to_torch(params, self.cfg)

    # -- what the summary reports --------------------------------------------------------------------------

    @staticmethod
    def device_name() -> str:
        d = jax.local_devices()[0]
        return platform.processor() or "CPU" if d.platform == "cpu" else d.device_kind

    @staticmethod
    def peak_memory_bytes() -> int | None:
        """Of this process's first device (under a mesh, every device holds about the same)."""
        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    def parallelism(self) -> dict:
        return {"n_devices": shd.n_devices(self.mesh), "n_processes": jax.process_count(),
                "mesh": shd.describe(self.mesh)}

    @staticmethod
    def versions() -> dict:
        import flax

        return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
