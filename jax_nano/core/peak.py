"""The peak an MFU is measured against: the published dense bf16 figure where the device has one (SPEC section 5,
jax_nano/core/report.py), else a measured one, and which of the two it is.

The measured peak is the best FLOP/s of square float32 and bfloat16 matmuls of a few sizes, over the matmul
probes of every framework installed (jax_nano/peak_probe.py, torch_ref/peak_probe.py), each run in a child process
so that neither framework's memory pool or threads stay in the run's process. It is what this device does
with the best library at hand, so both frameworks' MFU share one denominator. Probing takes seconds, so the
result is cached per device and library versions, as JSON in the project's cache folder
($JAX_NANO_PEAK_CACHE, else $XDG_CACHE_HOME/jax-nano/peak, else ~/.cache/jax-nano/peak). A probe taken while the
machine's load was above its core count is marked so and taken again the next time the machine is quieter.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from jax_nano.core.report import flops_per_token, peak_flops, write_json_atomic

# framework -> the module of its matmul probe and the distribution whose version keys the cache.
PROBES = {"jax": ("jax_nano.peak_probe", "jaxlib"), "torch": ("torch_ref.peak_probe", "torch")}
PROBE_NAMES = {"jax": "JAX", "torch": "PyTorch"}
ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 300


# What the probes time: square matmuls of these sizes in both dtypes (bf16 where the hardware has it).
PROBE_DTYPES = ("float32", "bfloat16")
CPU_SIZES, ACCELERATOR_SIZES = (512, 1024, 2048), (2048, 4096, 8192)


def time_matmuls(prepare, sizes, repeats: int = 5, budget_s: float = 2.0) -> list[dict]:
    """[{"dtype", "n", "flops_per_s"}] for each of PROBE_DTYPES and each size, smallest first: the best of
    `repeats` calls of `prepare(dtype, n)()` (one matmul, waited for), or as many as fit in `budget_s`, after one
    untimed call that compiles and warms. The sizes of a dtype stop where one call, scaled from the size before
    by n**3, would take longer than a quarter of `budget_s`: on a CPU without bf16 instructions a bf16 matmul
    runs ~1 GFLOP/s, and the 2048 one alone would hold the probe (and the first run it serves) for half a
    minute."""
    results = []
    for dtype in PROBE_DTYPES:
        previous = None  # (n, seconds of one call)
        for n in sorted(sizes):
            if previous and previous[1] * (n / previous[0]) ** 3 > budget_s / 4:
                break
            run = prepare(dtype, n)
            run()
            best, spent = float("inf"), 0.0
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                dt = time.perf_counter() - t0
                best, spent = min(best, dt), spent + dt
                if spent > budget_s:
                    break
            results.append({"dtype": dtype, "n": n, "flops_per_s": 2 * n**3 / best})
            previous = (n, best)
    return results


def cache_dir() -> Path:
    if os.environ.get("JAX_NANO_PEAK_CACHE"):
        return Path(os.environ["JAX_NANO_PEAK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jax-nano" / "peak"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def device_key(device: str) -> dict:
    """What identifies a measured peak: the device, the CPU and its cores (a CPU's name alone is often just
    "CPU"), and the versions of the libraries that ran the probes."""
    versions = {}
    for _, dist in PROBES.values():
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"device": device, "cpu": cpu_model(), "cores": os.cpu_count(), "versions": versions}


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "-", key["device"].lower()).strip("-")[:40] or "device"
    return cache_dir() / f"{slug}-{digest}.json"


def run_probe(framework: str, sizes=None) -> dict | None:
    """One framework's probe in a child process; None when it fails (the framework missing or broken)."""
    module, _ = PROBES[framework]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        out = subprocess.run([sys.executable, "-m", module, *map(str, sizes or ())], capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _busy() -> bool:
    return os.getloadavg()[0] > (os.cpu_count() or 1)


def measure(device: str, probe=run_probe, frameworks=tuple(PROBES)) -> dict | None:
    """The probes' best result: {"flops_per_s", "framework", "dtype", "n", "date", "loaded", "results"}."""
    loaded = _busy()
    runs = [r for r in (probe(fw) for fw in frameworks) if r]
    cases = [{**case, "framework": r["framework"], "version": r["version"]} for r in runs for case in r["results"]]
    if not cases:
        return None
    best = max(cases, key=lambda c: c["flops_per_s"])
    return {"flops_per_s": best["flops_per_s"], "framework": best["framework"], "dtype": best["dtype"],
            "n": best["n"], "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "loaded": loaded or _busy(), "device": device, "results": cases}


def measured_peak(device: str, probe=run_probe) -> dict | None:
    """The cached measurement of `device`, or a new one (then cached). A lock lets processes that ask at the
    same time (the workers of a comparison, a test run on two workers) probe once."""
    key = device_key(device)
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _read(path)
        if cached is not None and not (cached.get("loaded") and not _busy()):
            return cached
        found = measure(device, probe)
        if found is None:
            return cached
        write_json_atomic(path, {**found, "key": key})
        return found


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("flops_per_s"), (int, float)) else None


def peak(device: str, probe=run_probe) -> dict:
    """{"flops_per_s", "basis"} with basis "published" or "measured" (plus what the probe found: framework, dtype,
    n), or {"flops_per_s": None, "basis": None} when neither is known."""
    published = peak_flops(device)
    if published is not None:
        return {"flops_per_s": published, "basis": "published"}
    found = measured_peak(device, probe)
    if found is None:
        return {"flops_per_s": None, "basis": None}
    return {"flops_per_s": found["flops_per_s"], "basis": "measured",
            **{k: found[k] for k in ("framework", "dtype", "n", "date", "loaded")}}


def mfu(tokens_per_s: float, cfg, seq_len: int, device: str, probe=run_probe) -> dict:
    """{"mfu", "basis", "peak_flops", ...}: tokens/s x training FLOPs per token over `peak`."""
    found = peak(device, probe)
    value = (None if found["flops_per_s"] is None
             else tokens_per_s * flops_per_token(cfg, seq_len) / found["flops_per_s"])
    return {"mfu": value, "basis": found["basis"], "peak_flops": found["flops_per_s"],
            "peak": {k: v for k, v in found.items() if k not in ("flops_per_s", "basis")}}


def measured_note(peak_flops_value: float, found: dict | None) -> str:
    """The reports' sentence on a measured peak: its value, which probe set it and when, and what to beware of.
    `found` is `mfu(...)["peak"]` (framework, dtype, n, date, loaded), or None where only the value is known."""
    found = found or {}
    which = ""
    if found.get("framework") and found.get("dtype") and found.get("n"):
        when = str(found.get("date", ""))[:16].replace("T", " ")
        which = (f"{PROBE_NAMES.get(found['framework'], found['framework'])}'s {found['dtype']} {found['n']} x "
                 f"{found['n']} matmul{f', probed {when} UTC' if when else ''}; ")
    note = (f"MFU is against the **measured** matmul peak of this device ({peak_flops_value / 1e9:,.0f} GFLOP/s: "
            f"{which}the best square float32/bf16 matmul of the installed frameworks, jax_nano/core/peak.py), not a "
            "published figure. The probe is cached and reused: a virtual machine whose speed drifts after it "
            "shifts every MFU alike, so compare MFUs of one invocation only")
    if found.get("loaded"):
        note += "; it was probed while the load was above the core count, so it is low and the MFU high"
    return note + "."


def describe(mfu_value: float | None, basis: str | None, peak_flops_value: float | None = None) -> str:
    """"21.3% of the measured matmul peak (150 GFLOP/s)", "41.0% of the published bf16 peak" or "n/a (...)"."""
    if mfu_value is None:
        return "n/a (no published or measured peak for this device)"
    if basis == "measured":
        size = f" ({peak_flops_value / 1e9:,.0f} GFLOP/s)" if peak_flops_value else ""
        return f"{mfu_value:.1%} of the measured matmul peak{size}"
    return f"{mfu_value:.1%} of the published bf16 peak"
