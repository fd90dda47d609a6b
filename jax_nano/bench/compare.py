"""JAX vs PyTorch head to head (SPEC section 5: one run, one machine, interleaved, several times).

`compare(track, repeats=N)` trains the same track in both frameworks, alternating JAX, PyTorch, PyTorch eager,
JAX, ... from the same initial weights (the JAX initialisation, exported once as a PyTorch state_dict and given
to every run as `init_from`), and writes one report: Markdown, JSON and a PNG of the loss-vs-time curves.

Every run is its own process with the comparison's own fresh compilation caches (jax_nano/bench/worker.py), so peak
device memory is per run and each framework's first run is cold, its later runs warm.

PyTorch runs as its trainer runs by default: compiled wherever torch.compile works (the track's `torch_compile`);
eager PyTorch is a labelled extra row (`eager=False` drops it). The machine's load is sampled before and during
the runs (jax_nano/bench/load.py), and after the timed runs one more process per form times a step in two halves,
forward+backward and optimizer (`split_steps`; 0 skips it).

The report is jax_nano/bench/compare_report.py; its statistics (median, spread, Welch's t-test) are in
jax_nano/bench/stats.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

from configs.tracks import Track
from jax_nano.bench.compare_report import (
    FORM_TRACK,
    LABEL,
    CompareError,
    aggregate,
    curve_of,
    device_slug,
    write_report,
)
from jax_nano.bench.load import LoadMonitor
from jax_nano.bench.worker import WorkerError, launch, worker_env


def stop_rule(track: Track, *, steps: int | None = None, tokens: int | None = None) -> Track:
    """Throughput mode: the track stops after `steps` steps (or the steps that hold `tokens` tokens).

    The program timed stays the track's own: a loss track keeps its per-step target check, with a target no
    run can reach (a cross-entropy is never below -inf) and the budget as its step cap; a token track gets
    the budget as its token target."""
    if steps is not None and tokens is not None:
        raise CompareError("--steps and --tokens conflict: pass only one budget")
    if steps is not None and steps < 1:
        raise CompareError(f"--steps {steps}: must be >= 1")
    if tokens is not None and tokens < 1:
        raise CompareError(f"--tokens {tokens}: must be >= 1")
    if steps is None and tokens is None:
        return track
    if track.is_loss_track:
        steps = steps if steps is not None else -(-tokens // track.tokens_per_step)
        return track.replace(target_loss=-math.inf, max_tokens=None, max_steps=steps)
    tokens = tokens if tokens is not None else steps * track.tokens_per_step
    return track.replace(target_tokens=tokens, max_tokens=None)


def _check_data(track: Track) -> None:
    """The data errors of a speedrun, before anything is started."""
    from configs.model import get_model_config
    from jax_nano.data.token_store import open_store, require_tokens

    cfg = get_model_config(track.model)
    store = open_store(track.data, vocab_size=cfg.vocab_size, seq_len=track.seq_len, verify=False)
    needed = track.total_steps * track.tokens_per_step if not track.is_loss_track else track.tokens_per_step
    require_tokens(store, needed, track.name)


def forms_for(track: Track, eager: bool = True) -> tuple:
    """The forms a race runs: JAX, PyTorch as the track runs it, and eager PyTorch as an extra row when the PyTorch
    row may compile (with --torch-compile off the PyTorch row is eager already)."""
    extra = ("torch-eager",) if eager and track.torch_compile != "off" else ()
    return ("jax", "torch", *extra)


def form_track(track: Track, form: str) -> Track:
    return track.replace(**FORM_TRACK[form])


def split_steps_of(track: Track, forms: tuple, work: Path, steps: int, show_bar: bool, log) -> dict:
    """Each form's step timed in two halves (worker "split" jobs), after the timed runs."""
    split = {}
    for form in forms:
        log(f"[compare] step split of {LABEL[form]}: {steps} steps timed in two halves")
        try:
            split[form] = launch({"mode": "split", "track": form_track(track, form), "steps": steps,
                                  "runs_dir": str(work / "runs"), "show_bar": show_bar},
                                 work, f"the step split of {LABEL[form]}",
                                 env=worker_env(work, FORM_TRACK[form]["framework"]))
        except (WorkerError, RuntimeError) as e:
            split[form] = {"error": str(e).splitlines()[0]}
    return split


def compare(track: Track, *, repeats: int = 3, results_dir="results", output=None, show_bar: bool = True,
            profile_dir=None, baseline=None, throughput_only: bool = False, keep_work: bool = False,
            mesh: str | None = None, eager: bool = True, split_steps: int = 3, log=print) -> dict:
    """Run the head to head and write the report; returns the report dict (with "files").

    `mesh`: the JAX runs' device mesh ("data=N,fsdp=M", speedrun's `mesh`); PyTorch always uses one device, so
    a multi-device report adds tokens/s per device (and scaling efficiency against `baseline`)."""
    if repeats < 1:
        raise CompareError(f"--repeats {repeats}: must be >= 1 (3 or more for a significance test)")
    track = track.replace(framework="jax")
    _check_data(track)
    baseline_report = None
    if baseline is not None:
        try:
            baseline_report = json.loads(Path(baseline).read_text())
        except (OSError, ValueError) as e:
            raise CompareError(f"--baseline {baseline}: not a readable comparison JSON ({e})") from None
    results_dir = Path(results_dir)
    run_results = results_dir / f"compare-{track.name}-runs"
    work = Path(tempfile.mkdtemp(prefix="jax-nano-compare-"))
    try:
        log(f"[compare] {track.name}: the JAX initial weights (seed {track.seed}) are exported by the first run "
            "and every run of both frameworks starts from them")
        summaries, curves = [], []
        forms = forms_for(track, eager)
        total = len(forms) * repeats
        with LoadMonitor() as load:
            for k in range(repeats):
                for fw in forms:
                    i = len(summaries) + 1
                    cache = "cold cache" if k == 0 else "warm cache"
                    log(f"[compare] run {i}/{total}: {LABEL[fw]} (repeat {k + 1}/{repeats}, {cache})")
                    run_name = f"compare-{track.name}-{fw}-{k + 1}"
                    summary = launch({"mode": "run", "track": form_track(track, fw), "run_name": run_name,
                                      "results_dir": str(run_results), "runs_dir": str(work / "runs"),
                                      "init_from": str(work / "init.pt"), "show_bar": show_bar,
                                      "export_init": not summaries, "mesh": mesh if fw == "jax" else None},
                                     work, f"run {i}/{total} ({LABEL[fw]})",
                                     env=worker_env(work, FORM_TRACK[fw]["framework"]))
                    summary["form"] = fw
                    summaries.append(summary)
                    curves.append(curve_of(run_results / f"{run_name}.jsonl"))
                    log(f"[compare]   {LABEL[fw]}: {summary['active_time']} active, "
                        f"{summary['tokens_per_s']:,.0f} tokens/s, setup {summary['setup_time_s']:.2f} s, "
                        f"train loss {summary['train_loss']:.4f}")
        split = split_steps_of(track, forms, work, split_steps, show_bar, log) if split_steps else None
        result = aggregate(summaries, curves, baseline=baseline_report)
        result["load"], result["split"] = load.summary(), split
        result["track_config"] = {**dataclasses.asdict(track), "framework": "both"}
        result["throughput_only"] = throughput_only
        result["run_results_dir"] = str(run_results)
        result["notes"] = notes_for(summaries)
        stem = Path(output) if output else results_dir / f"compare-{device_slug(result['device'])}-{track.name}"
        write_report(result, curves, stem)
        if profile_dir is not None:
            log(f"[compare] profiling 5 JAX steps into {profile_dir} (not timed, not in the report)")
            launch({"mode": "trace", "track": track.replace(max_steps=5, eval_batches=1, eval_every=0),
                     "profile_dir": str(profile_dir), "runs_dir": str(work / "runs"),
                     "results_dir": str(work / "profile-results"), "init_from": str(work / "init.pt"),
                     "show_bar": show_bar, "mesh": mesh}, work, "the profiled JAX run")
            result["profile_dir"] = str(profile_dir)
            write_report(result, curves, stem)
        return result
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


def notes_for(summaries: list[dict]) -> list[str]:
    notes = ["Setup & Compilation Time: JAX's persistent compilation cache and TorchInductor's/Triton's caches "
             "start empty, so each form's first run is cold and the later ones warm; a compiled PyTorch's setup "
             "includes its compilation, off the clock, as JAX's does."]
    if any(s.get("mfu") is None for s in summaries):
        notes.append("MFU is n/a where the device has neither a published peak nor a measured one.")
    if any(s.get("peak_memory_bytes") is None for s in summaries):
        notes.append("Peak device memory is n/a where the framework does not report it (PyTorch on CPU).")
    if any(s.get("compiles_during_run") for s in summaries):
        notes.append("WARNING: a run compiled during its timed loop (compiles_during_run > 0).")
    return notes
