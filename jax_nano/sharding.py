"""Device meshes and shardings for data-parallel and FSDP (ZeRO-3 style) training, with `jax.sharding` only.

A mesh has two axes, ("data", "fsdp"). The global batch is split across every device (both axes); the
parameters and the optimizer state are replicated along "data" and split along "fsdp". With fsdp=1 this is
plain data parallelism; with data=1 it is ZeRO-3 over every device; anything in between shards within a
group of fsdp devices and replicates across groups. XLA (GSPMD) inserts every collective: nothing here
communicates by hand.

Mesh specs (`--mesh`): "data=N", "fsdp=M", "data=N,fsdp=M"; an axis left out takes the devices that remain.
The default is every device on "data". In a single process a mesh may use fewer devices than exist (the
first ones); across processes it must use every device, since each process feeds its own devices.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from configs.errors import UserError

AXES = ("data", "fsdp")


class MeshError(UserError):
    """A mesh that cannot be built on these devices or cannot split this batch; one line with the fix."""


def parse_mesh(spec: str | None) -> dict:
    """{"data": N or None, "fsdp": M or None} from "data=N,fsdp=M" (None: takes the devices that remain)."""
    sizes = {"data": None, "fsdp": None}
    if spec is None or not spec.strip():
        return sizes
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        name = name.strip()
        if name not in AXES:
            raise MeshError(f"--mesh {spec!r}: unknown axis {name!r}; use data=N and/or fsdp=M, e.g. data=2,fsdp=4")
        if not eq or not value.strip().isdigit() or int(value) < 1:
            raise MeshError(f"--mesh {spec!r}: {name} needs a positive integer, e.g. {name}=2")
        if sizes[name] is not None:
            raise MeshError(f"--mesh {spec!r}: axis {name!r} is given twice")
        sizes[name] = int(value)
    return sizes


def make_mesh(spec: str | None = None, devices=None) -> Mesh:
    """The ("data", "fsdp") mesh that `spec` asks for, over `devices` (default: every device, all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = parse_mesh(spec)
    data, fsdp = sizes["data"], sizes["fsdp"]
    wanted = (data or 1) * (fsdp or 1)
    if wanted > n:
        raise MeshError(f"--mesh {spec!r} needs {wanted} devices but only {n} exist; ask for at most {n}")
    if data is None and fsdp is None:
        data, fsdp = n, 1
    elif data is None:
        if n % fsdp:
            raise MeshError(f"--mesh {spec!r}: fsdp={fsdp} does not divide the {n} devices; choose a divisor of {n}")
        data = n // fsdp
    elif fsdp is None:
        if n % data:
            raise MeshError(f"--mesh {spec!r}: data={data} does not divide the {n} devices; choose a divisor of {n}")
        fsdp = n // data
    wanted = data * fsdp
    if wanted > n:
        raise MeshError(f"--mesh {spec!r} needs {wanted} devices but only {n} exist; ask for at most {n}")
    if wanted < n and jax.process_count() > 1:
        raise MeshError(f"--mesh {spec!r} uses {wanted} of the {n} devices of {jax.process_count()} processes; "
                        f"a multi-process mesh must use every device (data x fsdp = {n})")
    # jax.devices() lists each process's devices together, so every process holds a contiguous block of the
    # flattened (data, fsdp) order, and with it a contiguous block of rows of the batch (its loader's share).
    return Mesh(np.array(devices[:wanted]).reshape(data, fsdp), AXES)


def describe(mesh: Mesh | None) -> str:
    if mesh is None:
        return "single-device"
    return ",".join(f"{a}={mesh.shape[a]}" for a in AXES)


def check_batch(batch_size: int, mesh: Mesh | None, what: str = "batch_size") -> None:
    """The global batch is split evenly across every device of the mesh."""
    if mesh is None:
        return
    n = mesh.devices.size
    if batch_size % n:
        lower, upper = batch_size // n * n, (batch_size // n + 1) * n
        raise MeshError(f"{what} {batch_size} does not divide evenly over the {n} devices of mesh "
                        f"{describe(mesh)}; use a batch size that is a multiple of {n} (e.g. "
                        f"{upper if lower == 0 else lower} or {upper}) or a mesh with fewer devices")


def check_unroll(cfg, mesh: Mesh | None) -> None:
    """Unrolled layers index the stacked block weights one layer at a time; split along the layer axis (what
    param_spec chooses when fsdp divides the depth), each layer's weights would lie on one device."""
    if mesh is None or not cfg.unroll_layers:
        return
    fsdp = mesh.shape["fsdp"]
    if fsdp > 1 and cfg.n_layers % fsdp == 0:
        raise MeshError(f"--unroll-layers with mesh {describe(mesh)}: the stacked block weights are split along the "
                        f"layer axis ({cfg.n_layers} layers over fsdp={fsdp}), so each layer would lie on one "
                        "device; drop --unroll-layers or use a data-parallel mesh (fsdp=1)")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of the batch split across every device of the mesh."""
    return NamedSharding(mesh, P(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape, fsdp: int) -> P:
    """Where an array of `shape` is split along "fsdp" (ZeRO-3): replicated if fsdp is 1, for scalars and for
    arrays with no dimension divisible by fsdp. A stacked (L, in, out) block weight (ndim 3) is split along its
    layer axis when fsdp divides L, so each device orthogonalizes whole matrices of the layers it holds (see
    `whole_matrices`); otherwise, and for every other array, along its largest dimension divisible by fsdp."""
    if fsdp == 1 or not shape:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % fsdp == 0 and d >= fsdp]
    if not candidates:
        return P()
    if len(shape) == 3 and 0 in candidates:
        axis = 0
    else:
        axis = max(candidates, key=lambda i: (shape[i], -i))
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def state_sharding(mesh: Mesh, abstract_tree):
    """A NamedSharding for every array of `abstract_tree` (e.g. `jax.eval_shape` of the train state)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, param_spec(a.shape, fsdp)), abstract_tree)


def with_sharding(abstract_tree, shardings):
    """ShapeDtypeStructs carrying `shardings`: an orbax restore target or an AOT lowering input."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def whole_matrices(mesh: Mesh):
    """Muon's hook: the update of a (..., in, out) weight, constrained so that no device holds part of a matrix.

    Polar Express needs whole matrices (a Frobenius norm and X X^T products over each matrix). A stacked
    (L, in, out) weight sharded along L (param_spec's first choice) already is: the constraint keeps the L split,
    so each device orthogonalizes the layers it holds, with no communication. A weight split along `in` or
    `out` (L not divisible by fsdp, or a plain 2-D matrix) is gathered inside the jitted step first and
    orthogonalized whole on every device of its fsdp group; the result is split again when it is applied to the
    sharded parameter. The arithmetic is the single-device arithmetic either way.
    """
    fsdp = mesh.shape["fsdp"]

    def constrain(u):
        spec = list(param_spec(u.shape, fsdp)) + [None] * u.ndim
        spec = spec[: u.ndim - 2] + [None, None]
        return jax.lax.with_sharding_constraint(u, NamedSharding(mesh, P(*spec)))

    return constrain


def global_array(sharding: NamedSharding, host_array: np.ndarray) -> jax.Array:
    """A global array from a host array that every process holds in full (e.g. the validation batches)."""
    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])


def n_devices(mesh: Mesh | None) -> int:
    return 1 if mesh is None else math.prod(mesh.devices.shape)
