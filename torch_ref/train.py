"""The PyTorch trainer: upstream's recipe, so that it is a fair baseline for the JAX one.

Mirrors jax_nano/train.py: `torch.compile` of the model and of Muon's orthogonalization wherever it works (the
track's `torch_compile`, torch_ref/compiles.py), compiled during the untimed warm-up steps, after which the
initial weights are restored and fresh optimizers built; bf16 autocast (or a model cast wholly to bf16), fused
AdamW on CUDA. PERFORMANCE.md compares it with upstream's trainer lever by lever.

A loss track reads each step's loss before the next step is dispatched (`lag = 0`): it stops at the first
step under the target, and a PyTorch step cannot be taken back without keeping a copy of the whole state. A
token track reads it one step late (`lag = 1`), as the JAX trainer does, so the host does not wait for the GPU
between steps. The class follows the trainer interface of jax_nano/core/trainer.py.
"""

import contextlib
import copy
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano.core.checkpoints import fingerprint
from jax_nano.core.loop import Progress
from jax_nano.core.trainer import TrainerError
from torch_ref import checkpoint as torch_ckpt
from torch_ref import compiles, optim
from torch_ref.model import MinimalLLM, count_params, loss_fn
from torch_ref.tensors import default_device, to_numpy, torch_state_dict


class TorchTrainer:
    framework = "torch"

    def __init__(self, track: Track, cfg: ModelConfig, *, run_dir=None, init_weights: dict | None = None,
                 seed: int | None = None, mesh=None):
        if mesh is not None:
            raise TrainerError("a device mesh applies to the jax framework only; drop --mesh for --framework torch")
        self.track, self.cfg = track, cfg
        self.lag = 0 if track.is_loss_track else 1
        self.seed = track.seed if seed is None else seed
        self.run_dir, self.init_weights = run_dir, init_weights
        self.device = default_device()
        self.dtype = torch.bfloat16 if track.precision == "bf16" else torch.float32
        self.compiling = compiles.decide(track.torch_compile, self.device)

    @staticmethod
    def mesh_for(track: Track, spec: str | None):
        if spec is not None:
            raise TrainerError(f"--mesh {spec!r} applies to the jax framework only; drop it for --framework torch")
        return None

    @staticmethod
    def processes() -> tuple[int, int]:
        return 0, 1

    # -- state ---------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.track.precision == "bf16-compute":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _reset(self):
        """Initial weights and fresh optimizers (after the warm-up, as upstream does)."""
        self.model.load_state_dict(self.initial_weights)
        self.optimizers, self.schedulers = optim.make_optimizer(self.track.optim, self.model, self.track.total_steps,
                                                                  compile=self.compiling.compile, seed=self.seed)

    # -- compile, warm up, reset ---------------------------------------------------------------------------

    def setup(self, warmup_batches: list, val_NBT: np.ndarray | None) -> float:
        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        self.model = MinimalLLM(self.cfg)
        if self.init_weights is not None:
            self.model.load_state_dict(torch_state_dict(self.init_weights), strict=True)
        self.model.to(self.device, self.dtype)
        self.initial_weights = copy.deepcopy(self.model.state_dict())
        self.forward = torch.compile(self.model) if self.compiling.compile else self.model
        self._reset()
        for ids_BT in warmup_batches:
            self.step(ids_BT)
        if val_NBT is not None:
            self.evaluate(val_NBT[:1])
        self._reset()
        self.sync()
        return time.perf_counter() - t0

    def _put(self, ids_BT):
        return torch.from_numpy(np.asarray(ids_BT, np.int64)).to(self.device, non_blocking=True)

    # -- the loop's interface ------------------------------------------------------------------------------

    def step(self, ids_BT):
        ids_BT = self._put(ids_BT)
        with self._autocast():
            loss = loss_fn(self.forward, ids_BT)
        loss.backward()
        optim.step(self.model, self.optimizers, self.schedulers, self.track.optim.grad_clip)
        # The loss and, for the divergence guard (jax_nano/core/guard.py), the parameters' global norm: one read.
        param_norm = torch.nn.utils.get_total_norm([p.detach() for p in self.model.parameters()])
        return torch.stack([loss.detach().float(), param_norm.float()])

    def read(self, handle) -> tuple[float, float]:
        loss, param_norm = handle.tolist()
        return loss, param_norm

    def rewind(self):
        """Never needed: a loss track reads every loss before the next step (`lag = 0`), so no step runs past
        the target (module docstring)."""
        raise TrainerError("no step to rewind: the PyTorch trainer reads a loss track's loss before the next step")

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def evaluate(self, val_NBT) -> dict:
        total_nll, total_correct = 0.0, 0
        for ids_BT in val_NBT:
            ids_BT = self._put(ids_BT)
            with self._autocast():
                logits_BTV = self.forward(ids_BT)[:, :-1].float()
            labels_BT = ids_BT[:, 1:]
            total_nll += F.cross_entropy(logits_BTV.reshape(-1, logits_BTV.shape[-1]), labels_BT.reshape(-1),
                                         reduction="sum").item()
            total_correct += (logits_BTV.argmax(-1) == labels_BT).sum().item()
        n = val_NBT.shape[0] * val_NBT.shape[1] * (val_NBT.shape[2] - 1)
        val_loss = total_nll / n
        return {"val_loss": val_loss, "val_accuracy": total_correct / n, "val_perplexity": float(np.exp(val_loss))}

    # -- checkpoints (torch_ref/checkpoint.py) -------------------------------------------------------------

    def _folder(self) -> Path:
        return Path(self.run_dir) / "checkpoints"

    def save(self, progress: Progress):
        payload = {"model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
                   "schedulers": [s.state_dict() for s in self.schedulers],
                   "progress": dataclasses.asdict(progress), "fingerprint": fingerprint(self.track, self.cfg)}
        torch_ckpt.save(self._folder(), progress.next_step, payload, self.track.keep_checkpoints)

    def resume_step(self, fallback: bool = False) -> int | None:
        return torch_ckpt.choose_step(self._folder(), fallback=fallback)

    def saved_fingerprint(self, step: int) -> dict:
        return torch_ckpt.saved_fingerprint(self._folder(), step)

    def restore(self, step: int) -> Progress:
        payload = torch_ckpt.load(self._folder(), step, device=self.device)
        self.model.load_state_dict(payload["model"])
        for obj, state in zip(self.optimizers + self.schedulers, payload["optimizers"] + payload["schedulers"]):
            obj.load_state_dict(state)
        return Progress(**payload["progress"])

    def discard_checkpoints(self, from_step: int) -> int | None:
        return torch_ckpt.discard(self._folder(), from_step)

    def close(self):
        pass

    # -- what leaves the trainer ---------------------------------------------------------------------------

    def export(self) -> dict:
        """The weights as numpy arrays in upstream's layout (the model's own names)."""
        return {k: to_numpy(v) for k, v in self.model.state_dict().items()}

    def compiles(self) -> int:
        """Graphs torch.compile has compiled in this process (none when it runs eagerly)."""
        return compiles.counters()["graphs"]

    def facts(self) -> dict:
        on_gpu = self.device.type == "cuda"
        return {"device": torch.cuda.get_device_name(self.device) if on_gpu else platform.processor() or "CPU",
                "peak_memory_bytes": torch.cuda.max_memory_allocated(self.device) if on_gpu else None,
                "versions": {"torch": torch.__version__}, "params": count_params(self.cfg),
                "n_devices": 1, "n_processes": 1, "mesh": "single-device", "compile": self.compiling.note,
                "graph_breaks": compiles.counters()["graph_breaks"]}
