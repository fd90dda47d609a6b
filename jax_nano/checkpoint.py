"""Orbax checkpoints of a run: the train state plus the Progress a resume needs (data position, clock, losses).

Saves are asynchronous (the device keeps training while the host writes) and only the last N are kept. A
checkpoint records the fingerprint of the run that wrote it, so a resume with another model or recipe is
refused instead of silently mixing the two.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import orbax.checkpoint as ocp

from configs.errors import UserError
from configs.model import ModelConfig
from configs.tracks import Track


class CheckpointError(UserError):
    """A checkpoint that cannot be used for this run; one line with the fix."""


def fingerprint(track: Track, cfg: ModelConfig) -> dict:
    """What must match between the run that saved and the one that resumes (not the stop rule or logging)."""
    recipe = {"model": dataclasses.asdict(cfg), "optim": dataclasses.asdict(track.optim),
              "batch_size": track.batch_size, "seq_len": track.seq_len, "seed": track.seed, "data": str(track.data),
              "total_steps": track.total_steps}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"digest": digest, "model": cfg.name, "track": track.name, "precision": track.precision}


def check_fingerprint(saved: dict, fp: dict, where) -> None:
    if saved["digest"] != fp["digest"]:
        raise CheckpointError(
            f"checkpoint {where} is from another run (model {saved['model']}, track {saved['track']}, "
            f"precision {saved['precision']}); resume with the same settings or choose another --run-name"
        )


def manager(run_dir, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints", options=options)


def save(mgr: ocp.CheckpointManager, step: int, state, progress, fp: dict) -> None:
    meta = {"progress": dataclasses.asdict(progress), "fingerprint": fp}
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))


def restore_latest(mgr: ocp.CheckpointManager, abstract_state, fp: dict):
    """(state, Progress) of the latest checkpoint, None if the run has none."""
    from jax_nano.loop import Progress

    step = mgr.latest_step()
    if step is None:
        return None
    where = f"{mgr.directory}/{step}"
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types for a damaged directory
        raise CheckpointError(
            f"checkpoint {where} is unreadable ({type(e).__name__}); delete it to use the one before"
        ) from e
    check_fingerprint(meta["fingerprint"], fp, where)
    try:
        state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {where} is corrupted ({type(e).__name__}); delete it to use the one before"
        ) from e
    return state, Progress(**meta["progress"])
