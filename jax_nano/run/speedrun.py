"""One speedrun end to end, for either framework: data, setup (untimed), the timed loop, final evaluation,
checkpoint, summary JSON, loss-curve PNG and, on request, a LEADERBOARD.md row.

The driver stands above both frameworks and imports neither: it picks a trainer class by name (`TRAINERS`) and
talks to it only through the interface of jax_nano/core/trainer.py.
"""

import dataclasses
import datetime
import importlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from configs import variants
from configs.errors import UserError
from configs.model import CUSTOM, shape_changes
from configs.tracks import Track
from jax_nano.core import checksums, loop, peak, report, safe_paths, storage
from jax_nano.core.checkpoints import check_fingerprint, fingerprint, saved_model
from jax_nano.core.extras import require_torch
from jax_nano.core.guard import Diverged
from jax_nano.core.preemption import StopSignals
from jax_nano.core.runlock import RunLock
from jax_nano.core.trainer import Trainer
from jax_nano.data.loader import TrainLoader, val_batches
from jax_nano.data.token_store import open_store, require_tokens
from jax_nano.run.eligibility import band_of, in_band

EXPORT_FORMATS = ("plain", "upstream")
# framework -> the module and class of its trainer, imported only when a run asks for that framework
TRAINERS = {"jax": ("jax_nano.train", "JaxTrainer"), "torch": ("torch_ref.train", "TorchTrainer")}


class RunError(UserError):
    """A run that cannot start as asked; one line with the fix."""


def trainer_class(framework: str) -> type[Trainer]:
    if framework not in TRAINERS:
        raise RunError(f"unknown framework {framework!r}; choose one of {', '.join(TRAINERS)}")
    if framework == "torch":
        require_torch("--framework torch")
    module, name = TRAINERS[framework]
    return getattr(importlib.import_module(module), name)


def make_trainer(track: Track, run_dir: Path, init_weights=None, mesh=None) -> Trainer:
    return trainer_class(track.framework)(track, track.model_config, run_dir=run_dir,
                                          init_weights=init_weights, mesh=mesh)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def speedrun(track: Track, *, run_name: str | None = None, results_dir="results", runs_dir="runs", resume=False,
             stop_after: int | None = None, init_from=None, export_to=None, export_format="plain", show_bar=True,
             mesh: str | None = None, save_final: bool = True, fallback: bool = False) -> dict:
    """Run `track`; returns the summary (also written to results/<run>.json), or a partial one when stopped by
    `stop_after` or by SIGTERM/SIGINT (jax_nano/core/preemption.py; then `interrupted` names the signal): either
    way a checkpoint lets `resume=True` continue. `save_final=False` skips the end-of-run checkpoint (a benchmark
    that only wants the figures). `fallback`: when the newest checkpoint fails its checksums, resume from the
    newest that verifies (jax_nano/checkpoint.py `choose`) instead of stopping.

    `export_to`: the final weights as a PyTorch file, `export_format` "plain" (a state_dict) or "upstream"
    (upstream's trainer's `model.pt`: {"model_state_dict", "config", "metrics", "step"}).

    `mesh` ("data=N,fsdp=M", jax_nano/sharding.py): the devices to train on; default every device on the data
    axis. Under `jax.distributed` every process calls this alike: each loads only its share of each training
    batch (the validation batches, small, are read whole by every process and sharded the same way); only
    process 0 writes the results, the plot and the exported weights, and shows the progress bar. Signals are
    left to their default there: every process would have to agree on the step to stop at."""
    run_name = run_name or f"{track.name}-{track.framework}"
    run_dir = safe_paths.run_folder(runs_dir, run_name)
    safe_paths.result_files(results_dir, run_name)
    if export_format not in EXPORT_FORMATS:
        raise RunError(f"unknown export format {export_format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if export_to is not None or init_from is not None:
        require_torch("--export-torch and --init-from (PyTorch files)")
    framework = trainer_class(track.framework)
    built_mesh = framework.mesh_for(track, mesh)
    index, count = framework.processes()
    with RunLock(run_dir, run_name, index if count > 1 else None), StopSignals(enabled=count == 1) as stop:
        return _speedrun(track, framework, built_mesh, (index, count), run_name, run_dir, Path(results_dir),
                         resume=resume, stop_after=stop_after, init_from=init_from, export_to=export_to,
                         export_format=export_format, show_bar=show_bar, save_final=save_final, fallback=fallback,
                         stop=stop)


def has_checkpoints(run_dir: Path) -> bool:
    """Whether the run has a finished checkpoint (a save cut short leaves temporary files, not a checkpoint)."""
    folder = Path(run_dir) / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() or p.name.removesuffix(".pt").isdigit() for p in folder.iterdir())


def finished_summary(results_dir, run_name: str) -> dict | None:
    """The summary of run `run_name` if it finished (results/<run>.json), else None."""
    path = Path(results_dir) / f"{run_name}.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary.get("finished") else None


def _speedrun(track, framework, built_mesh, processes, run_name, run_dir, results_dir, *, resume, stop_after,
              init_from, export_to, export_format, show_bar, save_final, fallback, stop) -> dict:
    """`speedrun` with the run folder locked and the signals caught."""
    index, count = processes
    lead = index == 0
    share = {"process_index": index, "process_count": count}
    folder = run_dir / "checkpoints"
    checkpointed = has_checkpoints(run_dir)
    if resume and not checkpointed:
        raise RunError(f"--resume: run {run_name!r} has no checkpoint in {run_dir}; start it without --resume")
    if not resume and checkpointed:
        raise RunError(f"run {run_name!r} already has checkpoints in {run_dir}; pass --resume to continue it "
                       "or --run-name NAME to start a new one")
    if lead:
        storage.require_room(results_dir)
    init_weights = None
    if init_from is not None:  # a PyTorch file: reading it takes PyTorch whichever framework trains
        track, init_weights = _weights_to_start_from(track, init_from, lead)
    cfg = track.model_config
    storage.require_room(run_dir, checkpoint_bytes(cfg, track.precision))
    store = open_store(track.data, vocab_size=cfg.vocab_size, seq_len=track.seq_len)
    # A token track must not repeat data; a loss track may (it stops when it stops).
    needed = track.total_steps * track.tokens_per_step if not track.is_loss_track else track.tokens_per_step
    require_tokens(store, needed, track.name)
    val_NBT = val_batches(store, track.batch_size, track.eval_batches)

    trainer = make_trainer(track, run_dir, init_weights, built_mesh)
    # The checksums and the settings are checked before setup, so a resume that cannot work is refused before any
    # compilation.
    step = trainer.resume_step(fallback) if resume else None
    if resume and step is None:  # only something else under a checkpoint's name, e.g. a file named 4 in a JAX run
        raise RunError(f"--resume: run {run_name!r} has no checkpoint {trainer.framework} can read in {run_dir}")
    if resume:
        saved = trainer.saved_fingerprint(step)
        model = saved_model(saved)
        if model is not None and model.name == CUSTOM and track.model_config.name != CUSTOM:
            # A run of a model no preset has (begun with --init-from): its shapes come from its checkpoint.
            track = _with_shapes(track, model)
            trainer = make_trainer(track, run_dir, None, built_mesh)
        note = check_fingerprint(saved, fingerprint(track, trainer.cfg), folder / str(step))
        if note and lead:
            print(note, file=sys.stderr)
    warm = TrainLoader(store, track.batch_size, track.seed, prefetch=0, **share)
    setup_s = trainer.setup([warm.batch(i) for i in range(track.warmup_steps)], val_NBT)
    progress = trainer.restore(step) if resume else loop.Progress()
    first_step = progress.next_step
    loader = TrainLoader(store, track.batch_size, track.seed, start_step=first_step, **share)
    compiles_before = trainer.compiles()
    metrics_path = results_dir / f"{run_name}.jsonl"
    try:
        with (report.MetricsLog(metrics_path, append=resume, before_step=first_step) if lead else _NoLog()) as log:
            try:
                progress = loop.run(track, trainer, loader, val_NBT, progress=progress, log=log,
                                    stop_after=stop_after, show_bar=show_bar and lead, stop=stop)
            except Diverged as e:
                # A checkpoint taken after k steps holds the weights that gave step k's loss.
                kept = trainer.discard_checkpoints(from_step=e.from_step)
                raise Diverged(e.step, e.reason, e.from_step, kept=(
                    f"kept the checkpoint of step {kept}, the newest that verifies" if kept is not None
                    else "no verified checkpoint of an earlier step is kept")) from None
            compiles = trainer.compiles() - compiles_before
            if not loop.finished(track, progress):
                return _stop_session(trainer, track, progress, first_step, stop, run_name, results_dir, lead)
            t0 = time.perf_counter()
            final = trainer.evaluate(val_NBT)
            progress.eval_time_s += time.perf_counter() - t0
            log.write({"step": progress.next_step - 1, **final})
    finally:
        loader.close()
    weights = trainer.export()  # every process: a gather under a mesh
    if lead and export_to is not None:
        from jax_nano.interop.export import export_torch

        metrics = {"train_loss": progress.losses[-1] if progress.losses else math.nan, **final}
        with storage.writing(export_to):
            export_torch(weights, export_to, export_format, cfg=trainer.cfg, metrics=metrics,
                         step=progress.next_step)
    digests = {"weights_sha256": checksums.weights_sha256(weights) if lead else None,
               "data_sha256": store.header["sha256"], "data_header_sha256": store.header_sha256}

    summary = summarize(track, trainer.facts(), progress, final, setup_s, run_name, compiles)
    summary.update(digests)
    summary["checkpoint"] = str(checkpoint_path(trainer, progress.next_step)) if save_final else None
    # The summary is written before the final checkpoint: a save that fails must not lose the run's result.
    if lead:
        _write_results(summary, progress, track, results_dir)
    if save_final:
        try:
            trainer.save(progress)
            trainer.close()
        except storage.StorageError as e:
            if lead:
                summary["checkpoint"] = f"not saved: {e}"
                _write_results(summary, progress, track, results_dir, plot=False)
            raise storage.StorageError(f"{e} (the run's summary is in {results_dir / run_name}.json)") from None
    trainer.close()
    return summary


def _weights_to_start_from(track: Track, init_from, lead: bool) -> tuple[Track, dict]:
    """(the track, the weights of `init_from`): a file whose tensors describe no preset trains as the model they
    describe (said in one line); one of a preset must be the track's."""
    from jax_nano.interop.weights import fit_state_dict, infer_config, read_checkpoint

    checkpoint = read_checkpoint(init_from)
    tensors = checkpoint["model_state_dict"]
    found = infer_config(tensors, where=init_from, saved=checkpoint["config"])
    if found.name == CUSTOM:
        track = _with_shapes(track, found)
        if lead:
            print(f"--init-from {init_from}: a model of no preset (d_model {found.d_model}, {found.n_layers} layers, "
                  f"{found.n_heads}/{found.n_kv_heads} heads, d_ff {found.d_ff}, {found.mlp}); training it as it is",
                  file=sys.stderr)
    return track, fit_state_dict(tensors, track.model_config, where=init_from)


def _with_shapes(track: Track, model) -> Track:
    """`track` training `model`'s shapes, with the variants the track itself asks for."""
    changes = {**dict(shape_changes(model)), **dict(track.model_changes)}
    return track.replace(model_changes=tuple(sorted(changes.items())))


def checkpoint_path(trainer: Trainer, step: int) -> Path:
    """Where the trainer's checkpoint of `step` lives: a folder (JAX, orbax) or a file (PyTorch)."""
    return Path(trainer.run_dir) / "checkpoints" / (f"{step}.pt" if trainer.framework == "torch" else str(step))


def checkpoint_bytes(cfg, precision: str) -> int:
    """About what one checkpoint takes on disk: the weights and at most two optimizer moments per weight."""
    per_value = 2 if precision == "bf16" else 4
    return 3 * per_value * report.n_matmul_params(cfg)


def _stop_session(trainer, track, progress, first_step, stop, run_name, results_dir, lead) -> dict:
    """A training session that ends before the run does (`stop_after` or a signal): checkpoint it and say where it
    stands."""
    partial = {"run": run_name, "finished": False, "next_step": progress.next_step, "interrupted": stop.received,
               "active_time_s": progress.active_time_s,
               "train_loss": progress.losses[-1] if progress.losses else None}
    trained = progress.next_step > first_step
    if trained and not (track.checkpoint_every and progress.next_step % track.checkpoint_every == 0):
        trainer.save(progress)  # (on a checkpoint_every boundary the loop has just saved this step)
    trainer.close()
    # Stopped before its first step, a fresh run has nothing to keep; a resumed one still has its checkpoint.
    partial["checkpoint"] = str(checkpoint_path(trainer, progress.next_step)) if trained or first_step else None
    if lead and stop.received:
        with storage.writing(results_dir / f"{run_name}.json"):
            report.write_json_atomic(results_dir / f"{run_name}.json", partial)
    return partial


def _write_results(summary: dict, progress, track: Track, results_dir: Path, plot: bool = True) -> None:
    path = results_dir / f"{summary['run']}.json"
    with storage.writing(path):
        report.write_json_atomic(path, summary)
    if plot:
        png = results_dir / f"{summary['run']}.png"
        with storage.writing(png):
            report.plot_curves({track.framework: (list(range(len(progress.losses))), progress.losses)}, png,
                               xlabel="step", title=f"{track.name}: {track.framework} on {summary['device']}",
                               hline=track.target_loss)


class _NoLog:
    """The metrics log of a process other than 0: writes nothing."""

    def write(self, record: dict) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def summarize(track: Track, facts: dict, progress: loop.Progress, final: dict, setup_s: float, run_name: str,
              compiles: int) -> dict:
    """`facts`: the trainer's (jax_nano/core/trainer.py)."""
    cfg = track.model_config
    steps = progress.next_step
    tokens = steps * track.tokens_per_step
    tokens_per_s = tokens / progress.active_time_s if progress.active_time_s > 0 else 0.0
    device = facts["device"]
    utilisation = peak.mfu(tokens_per_s, cfg, track.seq_len, device)
    return {
        "run": run_name, "finished": True, "track": track.name, "framework": track.framework,
        "date": datetime.date.today().isoformat(), "device": device, "commit": git_commit(),
        "versions": facts["versions"],
        "reached_target": progress.reached_step is not None if track.is_loss_track else None,
        "steps": steps, "tokens": tokens,
        "train_loss": progress.losses[-1] if progress.losses else math.nan,
        "val_loss": final["val_loss"], "val_accuracy": final["val_accuracy"],
        "val_perplexity": final["val_perplexity"],
        "active_time_s": progress.active_time_s, "active_time": report.format_duration(progress.active_time_s),
        "setup_time_s": setup_s, "eval_time_s": progress.eval_time_s,
        "tokens_per_s": tokens_per_s, "mfu": utilisation["mfu"], "mfu_basis": utilisation["basis"],
        "peak_flops": utilisation["peak_flops"], "peak": utilisation["peak"],
        "compile": facts.get("compile"), "graph_breaks": facts.get("graph_breaks"),
        "peak_memory_bytes": facts["peak_memory_bytes"], "params": facts["params"],
        "eligible": in_band(facts["params"], band_of(track)),
        "compiles_during_run": compiles, "evals": progress.evals,
        "n_devices": facts["n_devices"], "n_processes": facts["n_processes"], "mesh": facts["mesh"],
        "tokens_per_s_per_device": tokens_per_s / facts["n_devices"],
        "variants": variants.values(track), "track_config": dataclasses.asdict(track),
    }


def describe(summary: dict) -> str:
    """The end-of-run summary a person reads."""
    mfu = peak.describe(summary["mfu"], summary.get("mfu_basis"), summary.get("peak_flops"))
    memory = summary["peak_memory_bytes"]
    lines = [
        f"track {summary['track']} [{summary['framework']}] on {summary['device']}",
        f"  train loss {summary['train_loss']:.4f}   val loss {summary['val_loss']:.4f}   "
        f"val accuracy {summary['val_accuracy']:.4f}   val perplexity {summary['val_perplexity']:.2f}",
        f"  Active Training Time {summary['active_time']}   Setup & Compilation Time "
        f"{report.format_duration(summary['setup_time_s'])}   "
        f"evaluation {report.format_duration(summary['eval_time_s'])}",
        f"  {summary['steps']:,} steps   {summary['tokens']:,} tokens   "
        f"{summary['tokens_per_s']:,.0f} tokens/s   MFU {mfu}",
        f"  peak device memory {memory / 2**30:.2f} GiB" if memory
        else "  peak device memory: not reported by this device",
        *([f"  PyTorch: {summary['compile']}"] if summary.get("compile") else []),
        f"  variants: {variants.describe_values(summary['variants'])}",
        f"  {summary['params']:,} parameters: "
        f"{'eligible' if summary['eligible'] else 'not eligible'} for a leaderboard",
        f"  results/{summary['run']}.json, .jsonl, .png",
    ]
    if summary.get("n_devices", 1) > 1:
        lines.insert(1, f"  {summary['n_devices']} devices in {summary['n_processes']} process(es), mesh "
                        f"{summary['mesh']}: {summary['tokens_per_s_per_device']:,.0f} tokens/s per device")
    if summary["reached_target"] is False:
        lines.insert(1, "  target loss NOT reached within the step budget")
    return "\n".join(lines)
