"""Where a JAX train step spends its device time: a profiler trace of a few real steps, split into matmuls,
attention, Muon (the Polar Express orthogonalization), the rest, and gaps between kernels.

The trace (`jax.profiler.trace(..., create_perfetto_trace=True)`) names, for every kernel (GPU) or thunk (CPU),
the HLO instruction that launched it (`hlo_op`) and its module (`hlo_module`). XLA's optimized HLO, dumped as
text while the step compiles (`dump_flags`), says what each instruction is and which Python function it came
from (its innermost stack frame). An instruction's category is the first rule that matches:

1. muon: its innermost frame is in `MUON_FUNCTIONS` (jax_nano/optim.py's orthogonalization, its matmuls too);
2. attention: its innermost frame is `Attention.__call__` (jax_nano/model.py; the `dot_product_attention` call:
   cuDNN's fused kernel, or XLA's scores, softmax and weighted sum), or the kernel's name is a fused attention
   kernel's (`fmha`, `flash`, `sdpa`, `attention`);
3. matmul: a `dot` or `convolution`, a fusion whose computation holds one, a custom call to a GEMM, or a kernel
   named like a GEMM (`gemm`, `cublas`, `cutlass`, `xmma`, `wgmma`, `matmul`);
4. rest: everything else (norms, elementwise, the loss's softmax, AdamW, copies).
Control-flow containers (`while`, `conditional`, `call`) are skipped: the kernels inside them are counted.

Device time: the union of the kernels' intervals over the traced window (first kernel start to last kernel
end) is busy time; the window minus busy time is gaps (host stalls, launch latency). Each category's share
is its summed kernel time scaled so that the categories add up to busy time (kernels that overlap on
several streams or threads are counted once).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

CATEGORIES = ("matmul", "attention", "muon", "rest", "gaps")
MUON_FUNCTIONS = ("orthogonalize", "_mul")
ATTENTION_FUNCTIONS = ("Attention.__call__", "causal_attention")
ATTENTION_KERNEL = re.compile(r"fmha|flash|sdpa|attention", re.I)
GEMM_KERNEL = re.compile(r"gemm|cublas|cutlass|xmma|wgmma|matmul", re.I)
CONTAINERS = ("while", "conditional", "call")

_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
# Shared with jax_nano/plan/census.py, which reads the same optimized HLO text.
TARGET = re.compile(r'custom_call_target="([^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def dump_flags(dump_dir) -> str:
    """XLA flags that write each compiled module's optimized HLO as text into `dump_dir`."""
    return f"--xla_dump_to={dump_dir} --xla_dump_hlo_as_text"


def parse_hlo(text: str) -> tuple[str, dict]:
    """(module name, {instruction: {"opcode", "calls", "target", "function"}}) of an HLO module's text, where
    "function" is the instruction's innermost Python function (None without stack-frame metadata) and "calls"
    the fused computation's opcodes (for a fusion)."""
    lines = text.splitlines()
    module = re.match(r"HloModule\s+([^\s,]+)", lines[0]).group(1) if lines else ""
    tables, table = {name: {} for name in _TABLES}, None
    ops, computations, current = {}, defaultdict(set), None
    for line in lines[1:]:
        if line.strip() in _TABLES:
            table = line.strip()
            continue
        if table is not None:
            if not line.strip():
                table = None
            else:
                key, value = line.split(" ", 1)
                tables[table][int(key)] = value
            continue
        match = _INSTRUCTION.match(line)
        if match is None:
            comp = COMPUTATION.match(line)
            if comp is not None:
                current = comp.group(1)
            continue
        name, rest = match.groups()
        opcode = _OPCODE.search(" " + rest)
        opcode = opcode.group(1) if opcode else ""
        calls, target, frame = _CALLS.search(rest), TARGET.search(rest), _FRAME.search(rest)
        ops[name] = {"opcode": opcode, "calls": calls.group(1) if calls else None,
                     "target": target.group(1) if target else "", "frame": int(frame.group(1)) if frame else None}
        computations[current].add(opcode)
    functions = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}

    def field(entry: str, key: str) -> int | None:
        found = re.search(rf"\b{key}=(\d+)", entry)
        return int(found.group(1)) if found else None

    def function_of(frame: int | None) -> str | None:
        location = tables["FileLocations"].get(field(tables["StackFrames"].get(frame, ""), "file_location_id"))
        return functions.get(field(location, "function_name_id")) if location else None

    for op in ops.values():
        op["function"] = function_of(op.pop("frame"))
        op["calls"] = sorted(computations.get(op["calls"], ())) if op["calls"] else []
    return module, ops


def load_hlo_dumps(dump_dir) -> dict:
    """{module name: its instructions} of every optimized module in an XLA dump folder."""
    modules = {}
    for path in sorted(Path(dump_dir).glob("*after_optimizations.txt")):
        name, ops = parse_hlo(path.read_text())
        modules.setdefault(name, {}).update(ops)
    return modules


def category(op: dict | None, kernel_name: str) -> str | None:
    """The category of one kernel (see the module's docstring); None for a control-flow container."""
    if op is not None:
        if op["opcode"] in CONTAINERS:
            return None
        if op["function"] in MUON_FUNCTIONS:
            return "muon"
        if op["function"] in ATTENTION_FUNCTIONS:
            return "attention"
    if ATTENTION_KERNEL.search(kernel_name):
        return "attention"
    if op is not None and (op["opcode"] in ("dot", "convolution") or {"dot", "convolution"} & set(op["calls"])
                           or GEMM_KERNEL.search(op["target"])):
        return "matmul"
    return "matmul" if GEMM_KERNEL.search(kernel_name) else "rest"


def device_events(trace: dict) -> list[dict]:
    """The kernels of a Chrome/Perfetto trace: events on a GPU's streams, or else (CPU) the events that name an
    HLO instruction."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e["args"]["name"]
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if devices:
        streams = {key for key, name in threads.items() if key[0] in devices and name.startswith("Stream")}
        return [e for e in spans if e["pid"] in devices and (not streams or (e["pid"], e.get("tid")) in streams)]
    return [e for e in spans if (e.get("args") or {}).get("hlo_op")]


def breakdown(events: list[dict], modules: dict, n_steps: int) -> dict:
    """Shares of the traced window per category, the step time, and the ten costliest instructions."""
    by_category, by_op, intervals, unknown = defaultdict(float), defaultdict(float), [], 0
    for e in events:
        args = e.get("args") or {}
        hlo_op, module = args.get("hlo_op"), args.get("hlo_module")
        ops = modules.get(module) or next((m for m in modules.values() if hlo_op in m), {})
        op = ops.get(hlo_op) if hlo_op else None
        unknown += op is None
        kind = category(op, e.get("name", ""))
        if kind is None:
            continue
        start, dur = float(e["ts"]), float(e["dur"])
        intervals.append((start, start + dur))
        by_category[kind] += dur
        by_op[(hlo_op or e.get("name", "?"), kind)] += dur
    if not intervals:
        raise ValueError("the trace holds no device kernels")
    intervals.sort()
    busy, (lo, hi) = 0.0, intervals[0]
    window_start, window_end = intervals[0][0], max(end for _, end in intervals)
    for start, end in intervals[1:]:
        if start > hi:
            busy, lo, hi = busy + hi - lo, start, end
        else:
            hi = max(hi, end)
    busy += hi - lo
    window = window_end - window_start
    total = sum(by_category.values())
    shares = {kind: (by_category.get(kind, 0.0) / total) * busy / window if window else 0.0
              for kind in CATEGORIES[:-1]}
    shares["gaps"] = (window - busy) / window if window else 0.0
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:10]
    return {"steps": n_steps, "step_time_s": window / 1e6 / n_steps, "busy_s": busy / 1e6 / n_steps,
            "shares": shares, "kernels": len(intervals), "kernels_without_hlo": unknown,
            "top_ops": [{"op": op, "category": kind, "ms_per_step": t / 1e3 / n_steps} for (op, kind), t in top]}


def read_trace(trace_dir) -> dict:
    """The newest Perfetto trace JSON under a `jax.profiler.trace` folder."""
    found = sorted(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(found[-1], "rt") as f:
        return json.load(f)


def profile_job(job: dict) -> dict:
    """A worker job: set up the track's JAX trainer (compile, warm up), trace `job["steps"]` steps of the real
    loop, and return the breakdown. The worker sets `dump_flags(job["dump_dir"])` before JAX starts."""
    import jax

    from configs.model import get_model_config
    from jax_nano.core import loop
    from jax_nano.core.device import backend_of
    from jax_nano.data.loader import TrainLoader
    from jax_nano.data.token_store import open_store
    from jax_nano.run.speedrun import make_trainer

    track = job["track"]
    cfg = get_model_config(track.model)
    store = open_store(track.data, vocab_size=cfg.vocab_size, seq_len=track.seq_len, verify=False)
    warm = TrainLoader(store, track.batch_size, track.seed, prefetch=0)
    trainer = make_trainer(track, run_dir=None)
    trainer.setup([warm.batch(i) for i in range(track.warmup_steps)], None)
    loader = TrainLoader(store, track.batch_size, track.seed)
    try:
        with jax.profiler.trace(job["trace_dir"], create_perfetto_trace=True):
            progress = loop.run(track.replace(max_steps=job["steps"]), trainer, loader, None,
                                progress=loop.Progress(), show_bar=False)
    finally:
        loader.close()
        trainer.close()
    result = breakdown(device_events(read_trace(job["trace_dir"])), load_hlo_dumps(job["dump_dir"]),
                       progress.next_step)
    return {**result, "device": trainer.facts()["device"], "backend": backend_of("jax"), "track": track.name,
            "model": track.model}
