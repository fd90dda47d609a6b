"""Whether PyTorch compiles, and what torch.compile has done in this process (the twin of jax_nano/compiles.py).

`torch.compile` runs on every device where its backend works: on CUDA Inductor writes Triton kernels, on the CPU
it writes C++ and needs a C++ compiler. `decide` turns the track's `torch_compile` setting into a decision:
"auto" compiles wherever it works and falls back to eager, with a one-line note the run's summary keeps, on a
CPU without a compiler; "on" refuses to run without one; "off" stays eager.

The counters are TorchDynamo's (`torch._dynamo.utils.counters`): graphs compiled (a recompile is one more
graph) and graph breaks, read only once a compilation has imported torch._dynamo (importing it costs seconds).
"""

import sys
from typing import NamedTuple

import torch

from jax_nano.core.trainer import TrainerError

MODES = ("auto", "on", "off")


class Decision(NamedTuple):
    compile: bool
    note: str  # what the run's summary says about compilation, one line


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor's CPU backend would use ($CXX, else g++), or None when there is none."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, OSError, RuntimeError):
        return None


def decide(mode: str, device: torch.device, find_compiler=cpp_compiler) -> Decision:
    if mode not in MODES:
        raise TrainerError(f"unknown --torch-compile {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "off":
        return Decision(False, "eager (--torch-compile off)")
    if device.type != "cpu":
        return Decision(True, f"torch.compile (Inductor, {device.type})")
    compiler = find_compiler()
    if compiler is not None:
        return Decision(True, f"torch.compile (Inductor, CPU, C++ compiler {compiler})")
    if mode == "on":
        raise TrainerError("--torch-compile on: Inductor's CPU backend needs a C++ compiler and none was found "
                           "(set CXX or install g++), or pass --torch-compile auto to fall back to eager")
    return Decision(False, "eager: torch.compile fell back (no C++ compiler for Inductor's CPU backend; set CXX or "
                           "install g++)")


def counters() -> dict:
    """{"graphs", "graph_breaks"} so far in this process (zeros before any compilation)."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return {"graphs": 0, "graph_breaks": 0}
    c = utils.counters
    return {"graphs": c["stats"]["unique_graphs"], "graph_breaks": sum(c["graph_break"].values())}
