"""Checkpoint rules both trainers share: what must match to resume (the fingerprint), and which checkpoint a
resume takes (the newest that verifies its checksums, or a refusal naming the one that fails).

Framework-neutral: the JAX checkpoints (jax_nano/checkpoint.py, orbax) and the PyTorch ones
(torch_ref/checkpoint.py) store their files differently and decide alike here.
"""

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

from configs.errors import UserError
from configs.model import ModelConfig, shape_changes
from configs.tracks import Track
from configs.variants import off_settings

FALLBACK_FLAG = "--resume-from-good"
ASIDE = "damaged-checkpoints"  # beside checkpoints/: where a fall-back moves the checkpoints that failed


class CheckpointError(UserError):
    """A checkpoint that cannot be used for this run; one line with the fix."""




def fingerprint(track: Track, cfg: ModelConfig) -> dict:
    """What must match between the run that saved and the one that resumes (not the stop rule or logging): the
    settings a checkpoint stores, by the names a user knows (the optimizer's fields as their flags name them, the
    model's as `model.<field>`), and their digest (the only thing checkpoints of older versions kept). A variant
    (configs/variants.py) enters both only when it is on, so a run without one has the fingerprint it had before
    variants existed."""
    off = off_settings()

    def on(key, v):
        return key not in off or v != off[key]

    model = {k: v for k, v in shape_changes(cfg) if on(f"model.{k}", v)}
    optim = {k: v for k, v in dataclasses.asdict(track.optim).items() if on(k, v)}
    run = {"batch_size": track.batch_size, "seq_len": track.seq_len, "seed": track.seed, "data": str(track.data),
           "total_steps": track.total_steps}
    recipe = {"model": model, "optim": optim, **run}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
    named = {**{f"model.{k}": v for k, v in model.items()}, **optim, **run}
    return {"digest": digest, "model": cfg.name, "track": track.name, "precision": track.precision,
            "settings": json.loads(json.dumps(named, default=str))}


def saved_model(saved: dict) -> ModelConfig | None:
    """The model a checkpoint's settings describe (every field but the speed levers), or None for a checkpoint
    that stores no settings."""
    if "settings" not in saved:
        return None
    return ModelConfig(**{k.removeprefix("model."): v for k, v in saved["settings"].items() if k.startswith("model.")})


def _extendable(saved: dict, now: dict) -> bool:
    """A longer (or shorter) budget changes no step already taken: a constant schedule whose warm-up is as long."""
    ratio = now["warmup_ratio"]
    return now["schedule"] == "constant" and all(saved[k] == now[k] for k in ("schedule", "warmup_ratio")) and (
        max(1, int(saved["total_steps"] * ratio)) == max(1, int(now["total_steps"] * ratio)))


def check_fingerprint(saved: dict, fp: dict, where) -> str | None:
    """Refuse a checkpoint saved under other settings, naming every field that differs with both values; a
    changed step budget that leaves the steps taken unchanged is allowed, and the line saying so is returned."""
    if "settings" not in saved:  # written before checkpoints stored their settings: only the digest can be compared
        if saved["digest"] != fp["digest"]:
            raise CheckpointError(
                f"checkpoint {where} is from another run (model {saved['model']}, track {saved['track']}, precision "
                f"{saved['precision']}; it stores no settings to compare); resume with the same settings or choose "
                "another --run-name")
        return None
    old, now = {**off_settings(), **saved["settings"]}, {**off_settings(), **fp["settings"]}
    differ = [k for k in sorted(old.keys() | now.keys()) if k != "total_steps" and old.get(k) != now.get(k)]
    if saved["precision"] != fp["precision"]:
        differ.insert(0, "precision")
        old, now = {**old, "precision": saved["precision"]}, {**now, "precision": fp["precision"]}
    budget = old.get("total_steps") != now.get("total_steps")
    if budget and not _extendable(old, now):
        differ.append("total_steps")
    if differ:
        named = ", ".join(f"{k}: checkpoint {old.get(k, 'unset')}, now {now.get(k, 'unset')}" for k in differ)
        why = (" (a step budget changes this schedule's learning rates, so only a constant schedule with the same "
               "warm-up can be extended)" if differ == ["total_steps"] else "")
        raise CheckpointError(f"checkpoint {where} was saved with other settings: {named}{why}; resume with the "
                              "checkpoint's settings or choose another --run-name")
    if budget:
        return f"extending the run's budget from {old['total_steps']} to {now['total_steps']} steps"
    return None


def newest_verified(found: list, problem_of) -> int | None:
    """The newest step of `found` ([(step, paths)], oldest first) whose checksums verify."""
    return next((step for step, _ in reversed(found) if problem_of(step) is None), None)


def _set_aside(paths: list, aside: Path) -> None:
    aside.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.exists():
            target, n = aside / path.name, 1
            while target.exists():
                n += 1
                target = aside / f"{path.name}.{n}"
            shutil.move(path, target)


def choose(found: list, problem_of, *, fallback: bool, aside: Path, lead: bool = True, sync=None) -> int | None:
    """The step to resume from: the newest checkpoint of `found` ([(step, paths)], oldest first) that verifies.

    When the newest fails, without `fallback` this raises one line naming its step and file, and the step of the
    newest one that verifies; with `fallback` the failing newer checkpoints are moved to `aside` (nothing is
    deleted) and the good one is returned. `sync(name)`: a barrier of every process (multi-host), so that all
    have verified before process 0 moves anything and none reads before it is done.
    """
    failed, good = [], None
    for step, paths in reversed(found):
        wrong = problem_of(step)
        if wrong is None:
            good = step
            break
        failed.append((step, paths, wrong))
    if not failed:
        return good
    head = f"checkpoint of step {failed[0][0]} fails verification: {failed[0][2]}"
    if good is None:
        raise CheckpointError(f"{head}; no older checkpoint verifies: start the run afresh under another --run-name")
    if not fallback:
        raise CheckpointError(f"{head}; the checkpoint of step {good} verifies: pass {FALLBACK_FLAG} to resume from "
                              f"it (the failing ones are then moved to {aside}, not deleted)")
    if sync is not None:
        sync("jax_nano_checkpoints_verified")
    if lead:
        _set_aside([p for _, paths, _ in failed for p in paths], aside)
        print(f"{head}; resuming from step {good}, the newest checkpoint that verifies (moved "
              f"{', '.join(str(s) for s, _, _ in failed)} to {aside})", file=sys.stderr)
    if sync is not None:
        sync("jax_nano_checkpoints_set_aside")
    return good
