"""The JAX train state and where it lives: built fresh or from given weights, as abstract shapes with shardings
(for ahead-of-time compilation and for restoring a checkpoint onto any mesh), and the batches put on the devices.

Without a mesh everything is on one device. With one (jax_nano/sharding.py) the state is replicated or split
along "fsdp" and every batch is split across all devices.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano import sharding as shd
from jax_nano.layout import from_upstream, load_params
from jax_nano.model import GPT


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


class StatePlacement:
    """One run's train state and batches: how they are built and on which devices they live."""

    def __init__(self, track: Track, cfg: ModelConfig, tx: optax.GradientTransformation, *, seed: int,
                 mesh=None, init_weights: dict | None = None):
        self.track, self.cfg, self.tx, self.seed, self.mesh = track, cfg, tx, seed, mesh
        self.init_weights = init_weights
        self.batch_sharding = self.state_sharding = self.replicated = None
        if mesh is not None:
            shd.check_batch(track.batch_size, mesh)
            shd.check_unroll(cfg, mesh)
            self.batch_sharding = shd.batch_sharding(mesh)
            self.state_sharding = shd.state_sharding(mesh, jax.eval_shape(self.fresh))
            self.replicated = shd.replicated(mesh)
        # The init is jitted with the state's shardings as outputs: each device computes only its shards, so a
        # large model never materializes whole on one device.
        self._init = jax.jit(self.fresh, **({} if mesh is None else {"out_shardings": self.state_sharding}))

    def _state_of(self, params) -> TrainState:
        return TrainState(params, self.tx.init(params), jnp.zeros([], jnp.int32))

    def fresh(self) -> TrainState:
        return self._state_of(nnx.state(GPT(self.cfg, rngs=nnx.Rngs(self.seed)), nnx.Param))

    def initial(self) -> TrainState:
        """The state a run starts from: fresh of its seed, or the given weights with a fresh optimizer."""
        if self.init_weights is None:
            return self._init()
        model = GPT(self.cfg, rngs=nnx.Rngs(self.seed))
        load_params(model, from_upstream(self.init_weights, self.cfg))
        state = self._state_of(nnx.state(model, nnx.Param))
        return jax.device_put(state, self.state_sharding) if self.state_sharding is not None else state

    def abstract(self):
        """ShapeDtypeStructs of the state, carrying its shardings (a restore target: a checkpoint saved on another
        device count is resharded onto this mesh as it is read)."""
        abstract = jax.eval_shape(self.fresh)
        shardings = self.state_sharding
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            shardings = jax.tree.map(lambda _: device, abstract)
        return shd.with_sharding(abstract, shardings)

    def jit_shardings(self, *args_shardings, out) -> dict:
        """`jax.jit` keyword arguments placing the inputs and outputs on the mesh (none without one)."""
        if self.mesh is None:
            return {}
        return {"in_shardings": args_shardings, "out_shardings": out}

    def batch_spec(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.track.batch_size, self.track.seq_len), jnp.int32,
                                    sharding=self.batch_sharding)

    def put(self, ids_BT):
        """This process's rows of a global batch (its TrainLoader share) -> the global, sharded batch."""
        ids_BT = np.asarray(ids_BT, np.int32)
        if self.batch_sharding is None:
            return jnp.asarray(ids_BT)
        global_shape = (self.track.batch_size, *ids_BT.shape[1:])
        return jax.make_array_from_process_local_data(self.batch_sharding, ids_BT, global_shape)

    def put_global(self, ids_BT):
        """A batch every process holds in full (the validation batches) -> the global, sharded batch."""
        ids_BT = np.asarray(ids_BT, np.int32)
        if self.batch_sharding is None:
            return jnp.asarray(ids_BT)
        return shd.global_array(self.batch_sharding, ids_BT)

    def gathered(self, params):
        """`params` whole on every device (a collective under a mesh: every process must call it)."""
        if self.mesh is None:
            return params
        return jax.jit(lambda p: p, out_shardings=self.replicated)(params)
