"""Which device a run trains on, checked before any work: never the CPU by accident.

A JAX or PyTorch build that does not match the NVIDIA driver does not fail: JAX warns and runs on the CPU,
`torch.cuda.is_available()` is False and the trainer picks the CPU. `check_device` turns that into a one-line
error naming the framework, the driver, the installed build and what to install instead.

- "auto" (default): when the machine has an NVIDIA GPU, every framework asked for must be able to use it;
  without one, the CPU is fine.
- "gpu": as "auto", and a machine without an NVIDIA GPU is an error.
- "cpu": the CPU on purpose, GPU or not. It sets `JAX_PLATFORMS=cpu` and hides the GPUs from CUDA
  (`CUDA_VISIBLE_DEVICES=""`, which PyTorch honours: its trainer then picks the CPU) in this process's
  environment, which the worker processes of a comparison or a benchmark inherit.

The probes are small functions so that tests can fake any machine. JAX is asked in a child process: initializing
its GPU backend here would take GPU memory away from the workers a comparison starts, and would come before
`jax.distributed.initialize`, which must run first in a multi-host run.
"""

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from configs.errors import UserError
from configs.tracks import FRAMEWORKS
from jax_nano.core.extras import require_torch

DEVICES = ("auto", "gpu", "cpu")
CUDA13_MIN_DRIVER = 580  # CUDA 13 needs an R580 driver or newer; older drivers take the CUDA 12 builds
# PyTorch publishes each release for several CUDA versions, each on its own wheel index.
TORCH_INDEX = "https://download.pytorch.org/whl"
TORCH_CUDA12 = "cu126"
JAX_CUDA_PLUGINS = ("jax-cuda13-plugin", "jax-cuda12-plugin")


class DeviceError(UserError):
    """The device asked for cannot be used as asked; one line with the fix."""


class Probe(NamedTuple):
    usable: bool  # the framework sees the NVIDIA GPU
    build: str  # what is installed, for the message: "torch 2.13.0+cpu (CPU-only build)"


def driver_version(proc: Path = Path("/proc/driver/nvidia")) -> str | None:
    """The NVIDIA driver's version when the machine has an NVIDIA GPU ("unknown" if unreadable), else None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        versions = out.stdout.split()
        if out.returncode == 0 and versions:
            return versions[0]
    except (OSError, subprocess.SubprocessError):
        pass
    gpus = proc / "gpus"
    if not (gpus.is_dir() and any(gpus.iterdir())):
        return None
    try:
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", (proc / "version").read_text())
    except OSError:
        found = None
    return found.group(1) if found else "unknown"


def jax_build() -> str:
    try:
        jaxlib = f"jaxlib {metadata.version('jaxlib')}"
    except metadata.PackageNotFoundError:
        return "no jaxlib"
    plugins = [f"{name} {metadata.version(name)}" for name in JAX_CUDA_PLUGINS if _installed(name)]
    return f"{jaxlib} with {', '.join(plugins)}" if plugins else f"CPU-only {jaxlib} (no CUDA plugin)"


_JAX_PROBE = """
import json, jax
try:
    n = len(jax.devices("gpu"))
except RuntimeError:
    n = 0
print(json.dumps({"gpus": n}))
"""


def jax_gpu_usable() -> Probe:
    """Whether JAX can use the GPU, asked in a child process (module docstring)."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        out = subprocess.run([sys.executable, "-c", _JAX_PROBE], capture_output=True, text=True, timeout=300,
                             env=env)
        usable = out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1])["gpus"] > 0
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, KeyError):
        usable = False
    build = jax_build()
    if os.environ.get("JAX_PLATFORMS"):
        build += f", JAX_PLATFORMS={os.environ['JAX_PLATFORMS']} set"
    return Probe(usable, build)


def torch_gpu_usable() -> Probe:
    import torch

    cuda = torch.version.cuda
    build = f"torch {torch.__version__} " + (f"(CUDA {cuda} build)" if cuda else "(CPU-only build)")
    return Probe(bool(torch.cuda.is_available()), build)


def driver_major(version: str) -> int | None:
    found = re.match(r"(\d+)", version)
    return int(found.group(1)) if found else None


def jax_fix(driver: str) -> str:
    major = driver_major(driver)
    extra = "cuda13" if major is not None and major >= CUDA13_MIN_DRIVER else "cuda12"
    other = [f"jax-{cuda}-{part}" for cuda in ("cuda12", "cuda13") if cuda != extra for part in ("plugin", "pjrt")]
    installed = [name for name in other if _installed(name)]
    uninstall = f"pip uninstall -y {' '.join(installed)} && " if installed else ""
    return f'install JAX\'s matching CUDA build: {uninstall}pip install -e ".[{extra}]"'


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def torch_fix(driver: str) -> str:
    major = driver_major(driver)
    cuda = "cu130" if major is not None and major >= CUDA13_MIN_DRIVER else TORCH_CUDA12
    version = metadata.version("torch").split("+")[0]
    return (f"install PyTorch's {cuda} build: pip install \"torch=={version}+{cuda}\" "
            f"--index-url {TORCH_INDEX}/{cuda}")


def check_device(device: str, frameworks, cpu_fix: str = "pass --device cpu") -> None:
    """Stop before any work when `device` cannot be used by every framework in `frameworks` (module docstring).
    Call it before JAX initializes a backend: "cpu" only takes effect then. `cpu_fix`: what the calling command
    takes to run on the CPU instead, for the messages."""
    if device not in DEVICES:
        raise DeviceError(f"unknown --device {device!r}; choose one of {', '.join(DEVICES)}")
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise DeviceError(f"unknown framework {unknown[0]!r}; choose from {', '.join(FRAMEWORKS)}")
    if "torch" in frameworks:
        require_torch("--framework torch" if len(frameworks) == 1 else "the JAX vs PyTorch comparison")
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if "jax" in sys.modules:  # imported already: its config read JAX_PLATFORMS then
            sys.modules["jax"].config.update("jax_platforms", "cpu")
        return
    driver = driver_version()
    if driver is None:
        if device == "gpu":
            raise DeviceError("--device gpu: this machine has no NVIDIA GPU (nvidia-smi lists none and "
                              f"/proc/driver/nvidia/gpus is missing); run on a GPU machine or {cpu_fix}")
        return
    probes = {"jax": (jax_gpu_usable, jax_fix, "JAX"), "torch": (torch_gpu_usable, torch_fix, "PyTorch")}
    for framework in FRAMEWORKS:
        if framework not in frameworks:
            continue
        probe, fix, label = probes[framework]
        found = probe()
        if not found.usable:
            raise DeviceError(f"{label} cannot use the NVIDIA GPU (driver {driver}; installed {found.build}): "
                              f"{fix(driver)}, or {cpu_fix} to train on the CPU on purpose")


def backend_of(framework: str) -> str:
    """Where `framework` computes in this process: "gpu" or "cpu" (as the trainers choose their device)."""
    if framework == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import jax

    return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else jax.default_backend()
