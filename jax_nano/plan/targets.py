"""The accelerators a plan can compile for, as data: NVIDIA cards (what XLA's GPU compiler needs to know of each:
its target description) and TPU slices (the topology libtpu compiles for), from the vendors' published figures.
A user adds a card with a JSON file of GpuTarget's fields.
"""

import dataclasses
import json
from pathlib import Path

from configs.errors import UserError

GIB = 1 << 30
MIB = 1 << 20


class TargetError(UserError):
    """A card that cannot be planned for as asked; one line with the fix."""


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    name: str  # the device name the card reports
    compute_capability: tuple[int, int]
    sm_count: int
    memory_bytes: int
    l2_bytes: int
    bandwidth_bytes_s: float
    clock_ghz: float
    shared_memory_per_sm: int  # bytes
    shared_memory_per_block_optin: int  # bytes
    threads_per_sm: int
    fp32_units_per_sm: int
    cudnn: tuple[int, int, int] = (9, 10, 0)  # the cuDNN the plan assumes the card runs with
    cuda: str = "12.8"

    platform = "gpu"

    @property
    def devices(self) -> int:
        return 1

    @property
    def cudnn_version(self) -> int:
        """cuDNN's own integer form (9.10.0 -> 91000)."""
        major, minor, patch = self.cudnn
        return major * 10000 + minor * 100 + patch

    def target_config(self) -> str:
        """XLA's GpuTargetConfigProto, as text: what `get_topology_desc(target_config=...)` compiles for."""
        major, minor = self.compute_capability
        cudnn_major, cudnn_minor, cudnn_patch = self.cudnn
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_sm}
  threads_per_core_limit: {self.threads_per_sm}
  core_count: {self.sm_count}
  fpus_per_core: {self.fp32_units_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(self.bandwidth_bytes_s)}
  l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: {cudnn_major} minor: {cudnn_minor} patch: {cudnn_patch} }}
device_description_str: "{self.name}"
"""


# Published figures: SM count, memory, L2, memory bandwidth and boost clock from NVIDIA's data sheets and
# architecture whitepapers; shared memory and threads per SM from the CUDA programming guide's tables for the
# compute capability.
_ADA = dict(shared_memory_per_sm=102400, shared_memory_per_block_optin=101376, threads_per_sm=1536,
            fp32_units_per_sm=128)
_AMPERE_GA10X = dict(shared_memory_per_sm=102400, shared_memory_per_block_optin=101376, threads_per_sm=1536,
                     fp32_units_per_sm=128)
_A100 = dict(shared_memory_per_sm=167936, shared_memory_per_block_optin=166912, threads_per_sm=2048,
             fp32_units_per_sm=64)
_HOPPER = dict(shared_memory_per_sm=233472, shared_memory_per_block_optin=232448, threads_per_sm=2048,
               fp32_units_per_sm=128)

GPUS = {
    "rtx4090": GpuTarget("NVIDIA GeForce RTX 4090", (8, 9), 128, 24 * GIB, 72 * MIB, 1008e9, 2.52, **_ADA),
    "rtx3090": GpuTarget("NVIDIA GeForce RTX 3090", (8, 6), 82, 24 * GIB, 6 * MIB, 936e9, 1.695, **_AMPERE_GA10X),
    "l4": GpuTarget("NVIDIA L4", (8, 9), 58, 24 * GIB, 48 * MIB, 300e9, 2.04, **_ADA),
    "a100-40gb": GpuTarget("NVIDIA A100-SXM4-40GB", (8, 0), 108, 40 * GIB, 40 * MIB, 1555e9, 1.41, **_A100),
    "a100-80gb": GpuTarget("NVIDIA A100-SXM4-80GB", (8, 0), 108, 80 * GIB, 40 * MIB, 2039e9, 1.41, **_A100),
    "h100": GpuTarget("NVIDIA H100 80GB HBM3", (9, 0), 132, 80 * GIB, 50 * MIB, 3.35e12, 1.98, **_HOPPER),
    "h200": GpuTarget("NVIDIA H200", (9, 0), 132, 141 * 10**9, 50 * MIB, 4.8e12, 1.98, **_HOPPER),
}


@dataclasses.dataclass(frozen=True)
class TpuTarget:
    name: str
    topology: str  # libtpu's topology name, e.g. "v5e:1x1"
    chips_per_host: tuple[int, int, int]
    memory_bytes: int  # HBM per chip
    platform = "tpu"

    @property
    def devices(self) -> int:
        return self.chips_per_host[0] * self.chips_per_host[1] * self.chips_per_host[2]


# HBM per chip from Google Cloud's TPU documentation.
TPUS = {
    "v5e-1": TpuTarget("TPU v5e (1 chip)", "v5e:1x1", (1, 1, 1), 16 * GIB),
    "v6e-1": TpuTarget("TPU v6e (1 chip)", "v6e:1x1", (1, 1, 1), 32 * GIB),
    "v5p-8": TpuTarget("TPU v5p-8 (4 chips)", "v5p:2x2x1", (2, 2, 1), 95 * GIB),
}


def get_tpu(name: str) -> TpuTarget:
    if name not in TPUS:
        raise TargetError(f"unknown TPU {name!r}; choose one of {', '.join(TPUS)}")
    return TPUS[name]


def get_gpu(name: str, target_file=None) -> GpuTarget:
    """A listed card, or the one described by `target_file` (JSON with GpuTarget's fields)."""
    if target_file is not None:
        try:
            fields = json.loads(Path(target_file).read_text())
            for key in ("compute_capability", "cudnn"):
                if key in fields:
                    fields[key] = tuple(fields[key])
            return GpuTarget(**fields)
        except (OSError, ValueError, TypeError) as e:
            raise TargetError(f"--target-file {target_file}: not a card description ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); give a JSON object with the fields of "
                              "jax_nano/plan/targets.py GpuTarget") from None
    if name not in GPUS:
        raise TargetError(f"unknown card {name!r}; choose one of {', '.join(GPUS)}, or describe yours with "
                          "--target-file FILE.json")
    return GPUS[name]
