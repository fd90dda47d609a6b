"""Deviceless compilation: the trainer's own train and eval steps, compiled for an accelerator this machine lacks.

XLA's GPU compiler runs without a GPU when it is given the card's description (jax_nano/plan/targets.py): JAX's
CUDA plugin holds the compiler, and `jax.experimental.topologies` makes devices of the described card that a
mesh can hold. A TPU slice is compiled for the same way through libtpu, from its topology name. The steps are
the trainer's (`JaxTrainer.compile_step`, `compile_eval`) under that mesh, with the kernels chosen for the
target's platform (`model.compiling_for`) and a card's cuDNN version declared. What differs from a compile on
the device: GEMM autotuning is skipped (default tiles), and the memory is the compiler's buffer plan.
"""

import contextlib
import dataclasses
import importlib.util
import os
import time

import jax
from jax.experimental import topologies

from configs.errors import UserError
from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano.model import compiling_for
from jax_nano.plan.targets import GpuTarget, TpuTarget
from jax_nano.train import JaxTrainer

PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


class PluginError(UserError):
    """The compiler for the card is missing; one line with the install command."""


@dataclasses.dataclass
class Compiled:
    train: jax.stages.Compiled
    evaluate: jax.stages.Compiled
    train_s: float
    eval_s: float
    cfg: ModelConfig  # the model as the trainer compiled it (precision and levers applied)


def has_cuda_plugin() -> bool:
    try:
        return any(importlib.util.find_spec(name) for name in PLUGINS)
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


def has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def require_cuda_plugin() -> None:
    if not has_cuda_plugin():
        v = jax.__version__
        raise PluginError(f"compiling for an NVIDIA card needs JAX's CUDA compiler (no GPU needed): pip install "
                          f"--no-deps jax-cuda12-plugin=={v} jax-cuda12-pjrt=={v}")


@contextlib.contextmanager
def declared_cudnn(version: int):
    """JAX asks the host's cuDNN library for its version before it emits cuDNN attention; a plan answers with the
    card's (this machine may have no cuDNN at all). The question is private to JAX: a JAX without it is named."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as attention
    except ImportError:
        raise PluginError(f"JAX {jax.__version__} has no jax._src.cudnn.fused_attention_stablehlo; plan with "
                          "--attention xla, or with the JAX version of pyproject.toml") from None
    real = attention.check_cudnn_version
    attention.check_cudnn_version = lambda: version
    try:
        yield
    finally:
        attention.check_cudnn_version = real


def card_mesh(gpu: GpuTarget, n_devices: int = 1) -> jax.sharding.Mesh:
    """`n_devices` of the card on one host, as a ("data", "fsdp") mesh with every device on fsdp."""
    require_cuda_plugin()
    try:
        topology = topologies.get_topology_desc(platform="cuda", topology=f"1x1x{n_devices}",
                                                target_config=gpu.target_config())
    except NotImplementedError:  # the plugin tried to start a GPU backend, found no GPU, and was dropped
        raise PluginError("JAX's CUDA plugin was dropped when it found no GPU; set JAX_PLATFORMS=cpu before JAX "
                          "starts (scripts/plan.py does)") from None
    return topologies.make_mesh(topology, (1, n_devices), ("data", "fsdp"))


def require_libtpu() -> None:
    if not has_libtpu():
        from importlib.metadata import requires

        pin = next((r.split(";")[0].strip() for r in requires("jax") or () if r.startswith("libtpu")), "libtpu")
        raise PluginError(f"compiling for a TPU needs libtpu (no TPU needed): pip install --no-deps \"{pin}\"")


def tpu_mesh(tpu: TpuTarget) -> jax.sharding.Mesh:
    """Every chip of the slice, as a ("data", "fsdp") mesh with every chip on fsdp."""
    require_libtpu()
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu asks the host it would run on
    # libtpu takes a machine-wide lock for the chips it would drive; a compile drives none, so two plans (or a
    # plan beside the tests) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topology = topologies.get_topology_desc(platform="tpu", topology_name=tpu.topology, chip_config_name="default",
                                            chips_per_host_bounds=tpu.chips_per_host, num_slices=1)
    return topologies.make_mesh(topology, (1, tpu.devices), ("data", "fsdp"))


def compile_steps(track: Track, cfg: ModelConfig, target, n_devices: int = 1) -> Compiled:
    """The train and eval steps a run of `track` compiles, compiled for `n_devices` of a GPU `target`, or for
    every chip of a TPU `target`."""
    if target.platform == "tpu":
        mesh, kernels = tpu_mesh(target), compiling_for("tpu")
    else:
        mesh, kernels = card_mesh(target, n_devices), compiling_for("gpu")
    cudnn = declared_cudnn(target.cudnn_version) if target.platform == "gpu" else contextlib.nullcontext()
    with kernels, cudnn:
        trainer = JaxTrainer(track, cfg, mesh=mesh)
        t0 = time.perf_counter()
        train = trainer.compile_step()
        t1 = time.perf_counter()
        evaluate = trainer.compile_eval()
        t2 = time.perf_counter()
    return Compiled(train, evaluate, t1 - t0, t2 - t1, trainer.cfg)
