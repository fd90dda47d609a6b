"""The benchmark suite (scripts/bench.py): everything one GPU run should measure, in one command.

1. JAX and PyTorch, interleaved, `repeats` runs each, on the throughput step of each case in `CASES` (the 151M
   4.5loss step with its target check on, the 88M 8M step); on the CPU (`Plan.cpu`) the race's cases
   `CPU_CASES` instead (the smoke track's step and the 88M at 4 x 256). PyTorch runs compiled wherever
   torch.compile works, and eager PyTorch is a labelled extra form (`FORMS`); the machine's load is sampled
   before and during the runs (jax_nano/bench/load.py);
2. JAX levers one at a time against the default, on the first case: each lever in `LEVERS` is data (Track
   overrides and environment variables of its worker), so the table is data, not code paths;
3. with `profile_steps`, a JAX profile of a few steps of each case (jax_nano/bench/profile.py);
4. with `split_steps`, each form's step of each case timed in two halves, forward+backward and optimizer
   (jax_nano/bench/worker.py, "split").

Every run is a fresh process (jax_nano/bench/worker.py) doing `speedrun` of the real track, on random tokens (a token
store written into the work folder: the GPU machine has no dataset), in throughput mode
(`compare.stop_rule`: a fixed step budget, the loss track's target check kept). All runs of one invocation
share fresh compilation caches: each program's first run is cold, a repeat of it warm.

GPU time is scarce, so the bench keeps to a time budget: it prints its plan with an estimate per run, refines
the estimates from the runs it has measured, skips (and reports as skipped) a run that would not fit, and
rewrites the report after every run, so a run killed by the machine's time limit still leaves one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from configs.errors import UserError
from configs.model import get_model_config
from configs.tracks import Track, get_track
from jax_nano.bench import bench_report
from jax_nano.bench.compare import form_track, stop_rule
from jax_nano.bench.compare_report import FORM_TRACK, FORMS, LABEL
from jax_nano.bench.load import LoadMonitor
from jax_nano.bench.worker import WorkerError, launch, worker_env


class BenchError(UserError):
    """A benchmark that cannot run as asked; one line with the fix."""


@dataclass(frozen=True)
class Case:
    """A head-to-head configuration: a track's real step, with `changes` (Track field, value) pairs."""

    name: str
    track: str
    changes: tuple = ()


@dataclass(frozen=True)
class Lever:
    """One JAX change against the default: Track field overrides, OptimConfig field overrides and worker
    environment variables."""

    name: str
    about: str
    track: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)
    compile_factor: float = 1.0  # its setup time against the default's, for the time budget's estimates


CASES = (Case("151M 4.5loss", "4.5loss"), Case("88M 8M", "8M"))
# The CPU race: the smoke track's step, and the 88M model's step (its Muon, its 49152-token head) at a batch a CPU
# runs, in float32: a CPU without bf16 instructions (AVX-512 BF16, AMX) gives PyTorch's bf16 matmuls no fast path
# (about 1 GFLOP/s on an AVX2 Zen 3, against 50-60 per core in float32), which would race the hardware, not the
# frameworks.
CPU_CASES = (Case("smoke", "smoke"),
             Case("88M 4x256", "8M", (("batch_size", 4), ("seq_len", 256), ("precision", "float32"))))

# In the order they run: the slowest to compile last, so that a tight time budget drops it first.
LEVERS = (
    Lever("xla-flags-off", "the project's default XLA flags off", env={"JAX_NANO_XLA_FLAGS": "0"}),
    # The same steps as a token track (the step cap still stops it): what the per-step target check costs.
    Lever("no-target-check", "no per-step target check (the loss track's steps as a token track)",
          {"target_loss": None, "target_tokens": 10**15}),
    Lever("attention-xla", "jax.nn's XLA attention instead of the default (auto: cuDNN's fused kernel on a GPU in "
          "bf16, grouped einsums on a CPU)", {"attention": "xla"}),
    Lever("remat-dots", "activation checkpointing, matmul outputs saved", {"remat": "dots"}),
    Lever("remat-full", "activation checkpointing, everything recomputed", {"remat": "full"}),
    Lever("loss-chunk-2048", "cross-entropy over 2048 positions at a time", {"loss_chunk": 2048}),
    Lever("unrolled", "layers unrolled instead of scanned (one block compiled per layer)", {"unroll_layers": True},
          compile_factor=2.0),
    # CPU levers: what XLA's CPU backend offers for matmuls, and the orthogonalization's dtype.
    Lever("ortho-bfloat16", "Muon's orthogonalization in bf16, the records' dtype (auto: float32 on a CPU)",
          optim={"ortho_dtype": "bfloat16"}),
    Lever("cpu-onednn", "XLA's CPU matmuls through oneDNN", env={"XLA_FLAGS": "--xla_cpu_use_onednn=true"}),
    Lever("cpu-xnnpack", "XLA's CPU matmuls through XNNPACK", env={"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}),
)
CPU_LEVERS = ("attention-xla", "ortho-bfloat16", "cpu-onednn", "cpu-xnnpack", "loss-chunk-2048")
LEVER_NAMES = tuple(lever.name for lever in LEVERS)

SMOKE_MODEL, SMOKE_SEQ_LEN = "tiny", 64

# Seconds per run before anything is measured: a fresh process (imports, device), Setup & Compilation Time by
# (framework, cold cache), and a step. GPU: guesses for an H100 until one is measured (torch.compile's cold
# start is the largest); smoke: an idle 2-core CPU.
ESTIMATES = {
    "gpu": {"start": 8.0, ("jax", True): 25.0, ("jax", False): 6.0, ("torch", True): 75.0,
            ("torch", False): 25.0, "step": 0.1},
    "smoke": {"start": 6.0, ("jax", True): 6.0, ("jax", False): 3.0, ("torch", True): 2.0,
              ("torch", False): 2.0, "step": 0.05},
    # The CPU race on an idle 2-core CPU: Inductor's cold CPU compile is the largest; an 88M step takes seconds.
    "cpu": {"start": 8.0, ("jax", True): 40.0, ("jax", False): 15.0, ("torch", True): 150.0,
            ("torch", False): 30.0, "step": 3.0},
}


MIN_TIMEOUT_S = 60.0  # the least time a run gets before it is stopped, however little of the budget is left


@dataclass(frozen=True)
class Plan:
    smoke: bool = False
    cpu: bool = False  # the CPU race: CPU_CASES at their own sizes
    frameworks: tuple = FORMS  # forms (compare_report.FORMS): jax, torch, torch-eager
    steps: int = 30
    warmup: int | None = None  # None: the track's own warm-up steps
    repeats: int = 2
    levers: tuple = LEVER_NAMES
    lever_repeats: int = 1
    profile_steps: int = 0
    split_steps: int = 0
    budget_s: float = 8 * 60.0

    def check(self) -> None:
        if self.repeats < 1 or (self.repeats < 2 and not self.smoke):
            raise BenchError(f"--repeats {self.repeats}: must be >= 2 (1 is allowed only with --smoke)")
        for flag, value, low in (("--steps", self.steps, 1), ("--lever-repeats", self.lever_repeats, 1),
                                 ("--warmup", self.warmup, 0), ("--profile-steps", self.profile_steps, 0),
                                 ("--split-steps", self.split_steps, 0)):
            if value is not None and value < low:
                raise BenchError(f"{flag} {value}: must be >= {low}")
        if self.budget_s <= 0:
            raise BenchError(f"--budget-min {self.budget_s / 60:g}: must be > 0")
        unknown = [name for name in self.levers if name not in LEVER_NAMES]
        if unknown:
            raise BenchError(f"unknown lever {unknown[0]!r}; choose from {', '.join(LEVER_NAMES)} (or 'none')")
        if not self.frameworks or any(fw not in FORMS for fw in self.frameworks):
            raise BenchError(f"--frameworks {','.join(self.frameworks)}: choose from {', '.join(FORMS)}")
        if self.lever_list() and "jax" not in self.frameworks:
            raise BenchError("levers are measured against the JAX default: keep jax in --frameworks or pass "
                             "--levers none")

    def lever_list(self) -> list[Lever]:
        return [lever for lever in LEVERS if lever.name in self.levers]

    def cases(self) -> tuple:
        return CPU_CASES if self.cpu else CASES


def parse_levers(text: str) -> tuple:
    """"--levers a,b" -> ("a", "b"); "all" -> every lever; "cpu" -> CPU_LEVERS; "none" -> no lever."""
    if text.strip() == "all":
        return LEVER_NAMES
    if text.strip() == "cpu":
        return CPU_LEVERS
    if text.strip() == "none":
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


# -- the runs ------------------------------------------------------------------------------------------------


def case_track(case: Case, plan: Plan, store: str) -> Track:
    """The case's track in throughput mode on the random store (the tiny model at a short length in smoke)."""
    track = get_track(case.track).replace(**dict(case.changes))
    if plan.smoke:
        track = track.replace(model=SMOKE_MODEL, seq_len=SMOKE_SEQ_LEN)
    track = stop_rule(track, steps=plan.steps)
    warmup = track.warmup_steps if plan.warmup is None else plan.warmup
    return track.replace(data=store, eval_batches=1, eval_every=0, checkpoint_every=0, warmup_steps=warmup,
                         leaderboard=False)


def write_random_store(path: Path, track: Track, plan: Plan) -> str:
    """Uniform random tokens, enough for every run of the plan: the timed steps without repeating data, the
    warm-up, and one validation batch."""
    cfg = get_model_config(track.model)
    batch = max(case_track(case, plan, "").batch_size for case in plan.cases())
    # The validation split is 10% of the rows (rounded up) and must hold one batch.
    rows = -(-(plan.steps + 2) * batch * 10 // 9) + 10 * batch
    from jax_nano.data.token_store import write_store

    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, rows * track.seq_len, dtype=np.uint16)
    write_store(path, tokens, seq_len=track.seq_len, vocab_size=cfg.vocab_size, source="random tokens",
                     tokenizer="none")
    return str(path)


@dataclass
class Run:
    kind: str  # "head-to-head", "lever", "profile" or "split"
    case: str
    framework: str  # the form (compare_report.FORMS)
    track: Track
    cold: bool
    lever: str = "default"
    env: dict = field(default_factory=dict)
    repeat: int = 1
    compile_factor: float = 1.0

    @property
    def label(self) -> str:
        what = {"head-to-head": "", "lever": f" lever {self.lever}", "profile": " profile",
                "split": " step split"}[self.kind]
        return f"{self.case} {LABEL[self.framework]}{what}"


def plan_runs(plan: Plan, stores) -> list[Run]:
    """`stores`: one token store for every case, or {case name: store}."""
    cases = plan.cases()
    tracks = {case.name: case_track(case, plan, stores if isinstance(stores, str) else stores[case.name])
              for case in cases}
    runs = []
    for k in range(plan.repeats):
        for case in cases:
            for fw in plan.frameworks:
                runs.append(Run("head-to-head", case.name, fw, form_track(tracks[case.name], fw), cold=k == 0,
                                repeat=k + 1))
    base = cases[-1 if plan.cpu else 0].name  # on the CPU the larger case, where the levers matter
    for lever in plan.lever_list():
        track = tracks[base].replace(**lever.track)
        track = track.replace(optim=track.optim.replace(**lever.optim)) if lever.optim else track
        for k in range(plan.lever_repeats):
            runs.append(Run("lever", base, "jax", track, cold=k == 0, lever=lever.name,
                            env=dict(lever.env), repeat=k + 1, compile_factor=lever.compile_factor))
    if plan.profile_steps:
        for case in cases:
            runs.append(Run("profile", case.name, "jax", tracks[case.name], cold=True))
    if plan.split_steps:
        for case in cases:
            for fw in plan.frameworks:
                runs.append(Run("split", case.name, fw, form_track(tracks[case.name], fw), cold=False))
    return runs


def estimate_s(run: Run, plan: Plan, measured: dict) -> float:
    """A run's expected wall time: the measured time of the same program's like run if there is one (a lever's
    cold run is like the default's cold run), else the planning estimates."""
    factor = run.compile_factor
    like = measured.get((run.case, run.framework, run.cold))
    if like is not None:
        return like * factor
    est = ESTIMATES["smoke" if plan.smoke else "cpu" if plan.cpu else "gpu"]
    steps = run.track.warmup_steps + {"profile": plan.profile_steps, "split": 3 * plan.split_steps}.get(
        run.kind, plan.steps)
    # Eager PyTorch compiles nothing: its setup is a warm one's at most.
    setup = est[(FORM_TRACK[run.framework]["framework"], run.cold and run.framework != "torch-eager")]
    return est["start"] + setup * factor + steps * est["step"]


def describe_plan(runs: list[Run], plan: Plan) -> str:
    measured = {}
    total = sum(estimate_s(run, plan, measured) for run in runs)
    lines = [f"[bench] plan: {len(runs)} runs, each a fresh process; {plan.steps} timed steps per run after "
             f"{runs[0].track.warmup_steps} warm-up steps; {plan.repeats} runs per framework and case, interleaved; "
             f"{len(plan.lever_list())} levers x {plan.lever_repeats}"
             + (f"; profiles of {plan.profile_steps} steps" if plan.profile_steps else "")]
    for i, run in enumerate(runs, 1):
        lines.append(f"[bench]   {i:2d}. {run.label} ({'cold' if run.cold else 'warm'} cache): "
                     f"~{estimate_s(run, plan, measured):.0f} s")
    verdict = "fits" if total <= plan.budget_s else "EXCEEDS"
    lines.append(f"[bench] estimated {total / 60:.1f} min, {verdict} the budget of {plan.budget_s / 60:g} min "
                 "(a run that would not fit is skipped and reported as such)")
    return "\n".join(lines)


def run_one(run: Run, plan: Plan, work: Path, show_bar: bool, timeout: float) -> dict:
    framework = FORM_TRACK[run.framework]["framework"]
    if run.kind == "split":
        job = {"mode": "split", "track": run.track, "steps": plan.split_steps, "runs_dir": str(work / "runs"),
               "show_bar": show_bar}
        return launch(job, work, run.label, env=worker_env(work, framework, extra=run.env), timeout=timeout)
    if run.kind == "profile":
        job = {"mode": "profile", "track": run.track, "steps": plan.profile_steps,
               "trace_dir": str(work / f"trace-{time.monotonic_ns()}"), "dump_dir": str(work / "hlo")}
        shutil.rmtree(work / "hlo", ignore_errors=True)
        # No compilation cache: a cached program is not compiled, so XLA would dump no HLO for it.
        return launch(job, work, run.label, env=worker_env(work, cache=False, extra=run.env), timeout=timeout)
    job = {"mode": "run", "track": run.track, "run_name": f"bench-{time.monotonic_ns()}",
           "results_dir": str(work / "results"), "runs_dir": str(work / "runs"), "show_bar": show_bar}
    return launch(job, work, run.label, env=worker_env(work, framework, extra=run.env), timeout=timeout)


def check_backend(record: dict, device: str) -> None:
    """A GPU bench whose run fell back to the CPU (or the reverse) must not be reported under the wrong name."""
    backend = record.get("backend")
    expected = "cpu" if device == "cpu" else "gpu"
    if backend is not None and backend != expected:
        raise BenchError(f"{record['label']} ran on the {backend.upper()} although the bench was asked for the "
                         f"{expected.upper()}; nothing is reported under a device it did not run on")


def measure_run(i: int, run: Run, runs: list, plan: Plan, work: Path, device: str, show_bar: bool, measured: dict,
                t0: float, log) -> dict:
    """One run of the plan, or its skip when the time budget has no room for it: its record."""
    record = {"label": run.label, "kind": run.kind, "case": run.case, "framework": run.framework,
              "lever": run.lever, "cold": run.cold, "repeat": run.repeat}
    est = estimate_s(run, plan, measured)
    elapsed = time.monotonic() - t0
    if elapsed + est > plan.budget_s:
        record["skipped"] = (f"time budget: ~{est:.0f} s more would pass {plan.budget_s / 60:g} min "
                             f"({elapsed:.0f} s used)")
        log(f"[bench] {i}/{len(runs)}: {run.label}: skipped ({record['skipped']})")
        return record
    log(f"[bench] {i}/{len(runs)}: {run.label} ({'cold' if run.cold else 'warm'} cache, ~{est:.0f} s)")
    start = time.monotonic()
    try:
        # A run that hangs or overruns is stopped where the budget ends, so the report still gets written.
        timeout = max(plan.budget_s - elapsed, MIN_TIMEOUT_S)
        record["result"] = run_one(run, plan, work, show_bar, timeout)
        record["backend"] = record["result"].get("backend")
    except (WorkerError, RuntimeError) as e:
        record["error"] = str(e).splitlines()[0]
        log(f"[bench]   failed: {record['error']}")
    record["wall_s"] = time.monotonic() - start
    if run.kind == "head-to-head" and "error" not in record:
        measured.setdefault((run.case, run.framework, run.cold), record["wall_s"])
    check_backend(record, device)
    return record


def write_report(result: dict, output, results_dir, written):
    """The report at its stem (the device's name, once a run has given it); the stem it was written to."""
    stem = Path(output) if output else Path(results_dir) / f"bench-{result['device_slug']}"
    if written and written != stem:  # the first runs failed: the device's name came later
        for kind in ("md", "json", "png"):
            Path(f"{written}.{kind}").unlink(missing_ok=True)
    bench_report.write(result, stem)
    return stem


def bench(plan: Plan, *, device: str = "gpu", results_dir="results", output=None, show_bar: bool = True,
          keep_work: bool = False, log=print) -> dict:
    """Run the suite, writing the report after every run; returns the report dict (with "files")."""
    plan.check()
    work = Path(tempfile.mkdtemp(prefix="jax-nano-bench-"))
    try:
        stores = {}
        for case in plan.cases():
            track = case_track(case, plan, "")
            key = (track.model, track.seq_len)
            if key not in stores:
                stores[key] = write_random_store(work / f"store-{len(stores)}", track, plan)
            stores[case.name] = stores[key]
        runs = plan_runs(plan, stores)
        log(describe_plan(runs, plan))
        records, measured, t0, written, result = [], {}, time.monotonic(), None, None
        with LoadMonitor() as load:
            for i, run in enumerate(runs, 1):
                record = measure_run(i, run, runs, plan, work, device, show_bar, measured, t0, log)
                records.append(record)
                if "skipped" not in record or i == len(runs):
                    result = bench_report.assemble(records, plan, plan.cases(), device=device,
                                                   elapsed_s=time.monotonic() - t0, load=load.summary())
                    written = write_report(result, output, results_dir, written)
        result["load"] = load.summary()  # with the last sample, taken as the runs ended
        write_report(result, output, results_dir, written)
        return result
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
