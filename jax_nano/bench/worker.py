"""One job in a fresh process: `python -m jax_nano.bench.worker JOB.pkl` (used by the comparison and the benchmark).

A run in its own process, so that
- JAX's GPU memory pool and PyTorch's caching allocator never share one process (each would starve the other),
  and peak device memory is per run, not the maximum over everything the process did before;
- "cold" and "warm" Setup & Compilation Time mean what they say: `worker_env` points every job of one
  invocation at the same fresh, empty compilation caches (JAX's persistent cache, TorchInductor's and
  Triton's), so the first run of a program compiles from scratch and later runs start from the cache it
  filled, as a second `speedrun.py` would.

Jobs (`job["mode"]`):
- "run": `speedrun` of `job["track"]`; returns its summary plus "backend" ("gpu" or "cpu": where the
  framework really ran, whatever the device name says);
- "trace": the same under `jax.profiler.trace(job["profile_dir"])`;
- "profile": a few traced steps and their breakdown (jax_nano/bench/profile.py);
- "split": the track's step split into forward+backward and optimizer, timed apart on random tokens
  (jax_nano/step_split.py, torch_ref/step_split.py).
A job's `UserError` comes back as its one-line message (`WorkerError` in the parent). The worker applies the
project's default XLA flags (jax_nano/xla_flags.py) unless its environment says otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

from configs.errors import UserError
from jax_nano import xla_flags
from jax_nano.core.device import backend_of
from jax_nano.core.report import flops_per_token, ortho_flops_per_step
from jax_nano.core.split_timing import WARM_BATCHES

ROOT = Path(__file__).resolve().parent.parent
# framework -> the module that times its step in two halves, imported only by a job that asks for it
SPLITS = {"jax": "jax_nano.step_split", "torch": "torch_ref.step_split"}


class WorkerError(UserError):
    """A job that stopped on a user error; its one line, prefixed with what the job was."""


def worker_env(work: Path, framework: str = "jax", *, cache: bool = True, extra: dict | None = None) -> dict:
    """The environment of a job: this checkout importable, the invocation's compilation caches under `work`
    (none with `cache=False`), and `extra` on top (a benchmark lever's variables)."""
    env = dict(os.environ)
    if framework == "torch":
        # JAX is imported by the shared driver; on a GPU it must not take a memory pool beside PyTorch.
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    caches = {"JAX_COMPILATION_CACHE_DIR": "xla", "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}
    for var, sub in caches.items():
        if cache:
            env[var] = str(work / "cache" / sub)
        else:
            env.pop(var, None)
    env.update(extra or {})
    return env


def launch(job: dict, work: Path, what: str, env: dict | None = None, timeout: float | None = None) -> dict:
    """Run one job in a fresh process; its result dict. A job's user error raises `WorkerError`, a crash or a
    job still running after `timeout` seconds (then stopped) `RuntimeError` (its output is above)."""
    name = f"job-{time.monotonic_ns()}"
    job_path, out_path = work / f"{name}.pkl", work / f"{name}.out.json"
    job_path.write_bytes(pickle.dumps({**job, "out": str(out_path)}))
    try:
        proc = subprocess.run([sys.executable, "-m", "jax_nano.bench.worker", str(job_path)],
                              env=env or worker_env(work), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} was still running after {timeout:.0f} s and was stopped") from None
    result = json.loads(out_path.read_text()) if out_path.is_file() else None
    if result is not None and "error" in result:
        raise WorkerError(f"{what}: {result['error']}")
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"{what} failed with exit code {proc.returncode}; its output is above")
    return result


def export_initial_weights(track, path) -> None:
    """JAX's initialisation of the track's model (its seed), as an upstream PyTorch state_dict at `path`.

    Built on the host CPU, in float32 (each trainer casts to its precision policy), so that the accelerator's
    memory and compilation cache see nothing of it before the timed run."""
    import jax
    from flax import nnx

    from configs.model import get_model_config
    from jax_nano.interop.convert import jax_to_torch
    from jax_nano.model import GPT
    from torch_ref.checkpoint import save_torch

    cfg = get_model_config(track.model)
    with jax.default_device(jax.devices("cpu")[0]):
        state_dict = jax_to_torch(nnx.state(GPT(cfg, rngs=nnx.Rngs(track.seed)), nnx.Param), cfg)
    save_torch(state_dict, path)


def split_job(job: dict) -> dict:
    """The "split" job: a trainer of the track, set up on one random batch, then `job["steps"]` steps timed in two
    halves (and whole) on more random batches."""
    import numpy as np

    from jax_nano.run.speedrun import make_trainer

    track = job["track"]
    trainer = make_trainer(track, Path(job["runs_dir"]) / f"split-{time.monotonic_ns()}")
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, trainer.cfg.vocab_size, (track.batch_size, track.seq_len))
               for _ in range(job["steps"] + 1 + WARM_BATCHES)]
    trainer.setup(batches[:1], None)
    times = importlib.import_module(SPLITS[track.framework]).split_times(trainer, batches[1:])
    trainer.close()
    # What each half computes, for its FLOP rate: the model's training FLOPs (the MFU formula's) and Muon's.
    flops = {"fwd_bwd": flops_per_token(trainer.cfg, track.seq_len) * track.batch_size * track.seq_len,
             "ortho": ortho_flops_per_step(trainer.cfg, track.optim.ortho_steps)}
    return {**times, "flops": flops, "framework": track.framework, "compile": trainer.facts().get("compile")}


def run_job(job: dict) -> dict:
    import jax

    if job["mode"] == "split":
        return split_job(job)
    if job["mode"] == "profile":
        from jax_nano.bench.predicted import with_estimate
        from jax_nano.bench.profile import profile_job

        return with_estimate(profile_job(job), job["dump_dir"])
    from jax_nano.run.speedrun import speedrun

    track = job["track"]
    if job.get("export_init"):
        export_initial_weights(track, job["init_from"])
    kw = dict(results_dir=job["results_dir"], runs_dir=job["runs_dir"], init_from=job.get("init_from"),
              show_bar=job["show_bar"], mesh=job.get("mesh"), save_final=False)
    if job["mode"] == "trace":
        with jax.profiler.trace(job["profile_dir"]):
            result = speedrun(track, run_name="profile", **kw)
    else:
        result = speedrun(track, run_name=job["run_name"], **kw)
    return {**result, "backend": backend_of(track.framework)}


def main(job_path: str) -> int:
    job = pickle.loads(Path(job_path).read_bytes())
    out = Path(job["out"])
    # Before JAX starts, as XLA reads its flags once. The defaults here, not in the parent, so that a benchmark
    # lever can switch them off through this process's environment (JAX_NANO_XLA_FLAGS=0).
    xla_flags.apply_default_flags()
    if job["mode"] == "profile":
        from jax_nano.bench.profile import dump_flags

        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {dump_flags(job['dump_dir'])}".strip()
    try:
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            from jax_nano.core.cli import use_compilation_cache

            use_compilation_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])
        result = run_job(job)
    except UserError as e:
        out.write_text(json.dumps({"error": str(e)}))
        return 2
    from jax_nano.core.report import write_json_atomic

    write_json_atomic(out, result)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(main(sys.argv[1]))
    sys.exit("usage: python -m jax_nano.bench.worker JOB.pkl (written by jax_nano.bench.compare or jax_nano.bench)")
