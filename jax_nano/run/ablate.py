"""An ablation: a baseline and one or more variants of it (any track flags), each trained with N seeds, the runs
interleaved, in one invocation; the report is jax_nano/run/ablate_report.py.

Runs go through the speedrun driver (jax_nano/run/speedrun.py) one after another, in rounds: round k trains seed k
of every arm, the arms' order rotated by one each round, so a machine that slows down during the ablation slows
every arm alike. Each run's files are results/<name>/<arm>-seed<S>.{json,jsonl,png}; the plan is
results/<name>/plan.json. A run that fails is reported and the others go on; `resume` skips the runs whose
summary is there and retries the rest, so an interrupted ablation continues where it stopped.
"""

import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from configs import variants
from configs.errors import UserError
from configs.tracks import Track
from jax_nano.core import report
from jax_nano.run.speedrun import finished_summary, has_checkpoints, speedrun


class AblationError(UserError):
    """An ablation that cannot run as asked; one line with the fix."""


@dataclass(frozen=True)
class Arm:
    label: str  # "baseline", or the variant as given: "unet-skips", "muon-drop=0.1", "--muon-lr 0.03"
    flags: tuple  # the flags that make it from the baseline
    track: Track

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.=]+", "-", self.label).strip("-") or "arm"


def seeds_of(track: Track, n: int) -> list[int]:
    return [track.seed + i for i in range(n)]


def order(arms: list, seeds: list) -> list[tuple[Arm, int]]:
    """(arm, seed) in the order they run: rounds of one seed each, the arms rotated by one every round."""
    return [(arms[(i + k) % len(arms)], seed) for k, seed in enumerate(seeds) for i in range(len(arms))]


def run_name(arm: Arm, seed: int) -> str:
    return f"{arm.slug}-seed{seed}"


def plan_of(name: str, arms: list, seeds: list, reach: float | None) -> dict:
    return {"name": name, "seeds": seeds, "reach": reach,
            "arms": [{"label": a.label, "slug": a.slug, "flags": list(a.flags), "variants": variants.values(a.track),
                      "track_config": json.loads(json.dumps(dataclasses.asdict(a.track), default=str))}
                     for a in arms]}


def _check_plan(folder: Path, plan: dict, resume: bool) -> None:
    saved_path = folder / "plan.json"
    if not resume:
        if saved_path.exists():
            raise AblationError(f"ablation {plan['name']!r} already exists in {folder}; pass --resume to continue it "
                                "or --name NAME to start another")
        return
    if not saved_path.exists():
        raise AblationError(f"--resume: no ablation {plan['name']!r} in {folder}; start it without --resume")
    saved = json.loads(saved_path.read_text())
    if saved != plan:
        raise AblationError(f"--resume: ablation {plan['name']!r} was planned with other arms, seeds or settings "
                            f"({saved_path}); repeat its command line with --resume, or choose another --name")


def run(name: str, arms: list, seeds: list, *, reach: float | None = None, results_dir="results", runs_dir="runs",
        resume: bool = False, show_bar: bool = True) -> dict:
    """Train every (arm, seed) not yet done; {"plan", "runs": {run name: summary}, "failed": {run name: message},
    "interrupted": the signal that stopped it or None}."""
    folder, work = Path(results_dir) / name, Path(runs_dir) / name
    plan = plan_of(name, arms, seeds, reach)
    _check_plan(folder, plan, resume)
    report.write_json_atomic(folder / "plan.json", plan)
    done, failed, interrupted = {}, {}, None
    todo = order(arms, seeds)
    bar = tqdm(total=len(todo), disable=not show_bar, unit="run", desc=f"ablation {name}", dynamic_ncols=True)
    try:
        for arm, seed in todo:
            key = run_name(arm, seed)
            bar.set_postfix_str(f"{arm.label}, seed {seed}", refresh=True)
            summary = finished_summary(folder, key)
            if summary is None:
                try:
                    summary = speedrun(arm.track.replace(seed=seed), run_name=key, results_dir=folder, runs_dir=work,
                                       resume=has_checkpoints(work / key), show_bar=show_bar, save_final=False)
                except Exception as e:  # reported, and the other runs go on
                    failed[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
                    tqdm.write(f"run {key} failed: {failed[key]}", file=sys.stderr)
                    bar.update(1)
                    continue
                if not summary["finished"]:
                    interrupted = summary.get("interrupted") or "stopped"
                    break
            done[key] = summary
            bar.update(1)
    finally:
        bar.close()
    return {"plan": plan, "runs": done, "failed": failed, "interrupted": interrupted}


def curve(folder: Path, key: str) -> list[dict]:
    """Run `key`'s per-step records (step, loss, tokens, active_time_s) from its metrics log in `folder`."""
    log = Path(folder) / f"{key}.jsonl"
    return [r for r in report.read_metrics(log) if "loss" in r] if log.is_file() else []
