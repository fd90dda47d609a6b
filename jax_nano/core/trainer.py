"""The one interface between the framework-free speedrun driver and a framework's trainer.

jax_nano/run/speedrun.py and jax_nano/core/loop.py drive any class that has these members; jax_nano/train.py
(JAX) and torch_ref/train.py (PyTorch) are the two. Weights cross the interface as numpy arrays in upstream's
state_dict layout, so the driver needs neither framework to checksum or hand them on.
"""

from typing import Protocol

import numpy as np

from configs.errors import UserError
from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano.core.loop import Progress


class TrainerError(UserError):
    """A trainer that cannot run as asked; one line with the fix."""


class Trainer(Protocol):
    framework: str  # "jax" or "torch"
    lag: int  # steps dispatched before a loss is read (jax_nano/core/loop.py)
    track: Track
    cfg: ModelConfig

    @staticmethod
    def mesh_for(track: Track, spec: str | None):
        """The device mesh of `spec` ("data=N,fsdp=M") for this framework, None for one device; a framework
        without meshes refuses a spec."""

    @staticmethod
    def processes() -> tuple[int, int]:
        """(this process's index, the number of processes) of a multi-process run; (0, 1) otherwise."""

    def __init__(self, track: Track, cfg: ModelConfig, *, run_dir=None, init_weights: dict | None = None,
                 mesh=None): ...

    def setup(self, warmup_batches: list, val_NBT: np.ndarray | None) -> float:
        """Compile, run the untimed warm-up, reset weights and optimizer; the seconds it took."""

    def step(self, ids_BT: np.ndarray):
        """Dispatch one train step; a handle to its loss and the global norm of the updated parameters."""

    def read(self, handle) -> tuple[float, float]:
        """(loss, parameter norm) of a dispatched step (what `step` returned), waiting for the step."""

    def rewind(self) -> None:
        """Back to the state before the last dispatched step (a loss track read one step late)."""

    def sync(self) -> None:
        """Wait until every dispatched step has finished."""

    def evaluate(self, val_NBT: np.ndarray) -> dict:
        """val_loss, val_accuracy and val_perplexity over the validation batches."""

    def save(self, progress: Progress) -> None:
        """A checkpoint of the state and `progress` in runs/<run>/checkpoints/."""

    def resume_step(self, fallback: bool = False) -> int | None:
        """The newest checkpoint that verifies (jax_nano/core/checkpoints.py `choose`); None if there is none."""

    def saved_fingerprint(self, step: int) -> dict:
        """The settings the checkpoint of `step` was saved with (jax_nano/core/checkpoints.py `fingerprint`), read
        without loading its state."""

    def restore(self, step: int) -> Progress:
        """Load the checkpoint of `step` into this trainer; its Progress."""

    def discard_checkpoints(self, from_step: int) -> int | None:
        """Delete the checkpoints of steps >= from_step; the step of the newest one kept that verifies."""

    def close(self) -> None:
        """Finish pending checkpoint writes."""

    def export(self) -> dict[str, np.ndarray]:
        """The weights as numpy arrays in upstream's state_dict names and layout (with the tied lm_head.weight)."""

    def compiles(self) -> int:
        """Compilations so far in this process (none may happen in the timed loop)."""

    def facts(self) -> dict:
        """What the summary reports of the run's machine and model: device, peak_memory_bytes, versions, params,
        n_devices, n_processes, mesh."""
