"""PyTorch checkpoints of a run, the twin of jax_nano/checkpoint.py: `runs/<run>/checkpoints/<step>.pt`.

Each `<step>.pt` has a sidecar `<step>.checksums.json` (jax_nano/core/checksums.py: size and sha256 of the file).
The payload is written to a temp file, its checksums are written, and only then is it renamed into place, so a
finished checkpoint never lacks them. A resume verifies them before `torch.load` reads a byte, with the same
rules as the JAX checkpoints (jax_nano/core/checkpoints.py `choose`).
"""

from pathlib import Path

import torch

from jax_nano.core import checksums
from jax_nano.core.checkpoints import ASIDE, CheckpointError, choose, newest_verified
from jax_nano.core.storage import writing

SUFFIX = ".checksums.json"


def _sums(pt: Path) -> Path:
    return pt.with_name(pt.stem + SUFFIX)


def found(folder: Path) -> list:
    """[(step, [its .pt, its checksums])], oldest first; temp files of an interrupted save are not checkpoints."""
    pts = [p for p in folder.glob("*.pt") if p.stem.isdigit()] if folder.is_dir() else []
    return [(int(p.stem), [p, _sums(p)]) for p in sorted(pts, key=lambda p: int(p.stem))]


def problem(folder: Path, step: int) -> str | None:
    pt = folder / f"{step}.pt"  # the manifest must cover the checkpoint itself, whatever else it lists
    return checksums.problem(folder, _sums(pt), present=[pt])


def save_torch(obj, path, before_rename=None) -> None:
    """`torch.save` through a temp file and a rename: a crash never leaves a half-written file at `path`.
    `before_rename(tmp)` runs once the temp file is complete (the checksums of a checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    if before_rename is not None:
        before_rename(tmp)
    tmp.replace(path)


def save(folder: Path, step: int, payload: dict, keep: int) -> None:
    path = folder / f"{step}.pt"
    with writing(path):
        save_torch(payload, path, before_rename=lambda tmp: checksums.write_manifest(_sums(path), {path.name: tmp}))
    for _, paths in found(folder)[:-keep]:
        for old in paths:
            old.unlink(missing_ok=True)


def choose_step(folder: Path, *, fallback: bool = False) -> int | None:
    """The step a resume takes: the newest checkpoint that verifies (jax_nano/core/checkpoints.py `choose`); None if the
    run has none."""
    return choose(found(folder), lambda s: problem(folder, s), fallback=fallback, aside=folder.parent / ASIDE)


def _load(path: Path, **kwargs) -> dict:
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as e:  # torch raises many types for a file it cannot read
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(e).__name__}), although its checksums "
                              "verify; restore it from a copy or start afresh") from e


def saved_fingerprint(folder: Path, step: int) -> dict:
    """The settings the checkpoint of `step` was saved with; memory-mapped, so its tensors are not read."""
    return _load(folder / f"{step}.pt", mmap=True, map_location="cpu")["fingerprint"]


def load(folder: Path, step: int, *, device) -> dict:
    """The payload of the checkpoint of `step`, one that `choose_step` verified and whose settings the driver has
    checked (`saved_fingerprint`)."""
    return _load(folder / f"{step}.pt", map_location=device)


def discard(folder: Path, from_step: int) -> int | None:
    """Delete the checkpoints of steps >= from_step; the step of the newest remaining one that verifies."""
    for step, paths in found(folder):
        if step >= from_step:
            for path in paths:
                path.unlink(missing_ok=True)
    return newest_verified(found(folder), lambda s: problem(folder, s))
