"""An estimate, not a measurement: how long a GPU step compiled on a machine without the card would take on it,
from its optimized HLO (a roofline per kernel).

Each kernel the census counts (jax_nano/plan/census.py: launched once per run of its computation, loop bodies
as often as they run) costs max(compute, memory) + one launch: compute is its matmul FLOPs against the card's
peak for the precision they run in (bf16/f16 operands: the bf16 tensor rate; float32: TF32 at JAX's default
precision, plain float32 at "highest"); memory is the bytes it reads and writes against the card's bandwidth
(jax_nano/plan/peaks.py, jax_nano/plan/targets.py). Bytes are its operands and its result, except what the
kernel cannot touch: an operand it only slices (a layer's weights out of the stacked ones) is read as the
slices, a buffer it updates in place (dynamic-update-slice) is written as the update, and a custom call's
scratch (u8/s8 workspace) not at all. Elementwise arithmetic is not counted as FLOPs (the memory term covers
it). What it leaves out: caches (every byte goes to DRAM), kernels sharing the card, tile and wave
quantisation, GEMM efficiency below peak: a real step is slower.

Each kernel is classed as the profile classes a measured one (jax_nano/bench/profile.py: matmul, attention,
Muon, rest), so the first profiled run on the card sets measured time beside each class's estimate.
"""

import os
import re
from collections import defaultdict
from pathlib import Path

from configs.model import ModelConfig
from configs.tracks import Track
from jax_nano.bench import profile
from jax_nano.core import report
from jax_nano.plan import census
from jax_nano.plan.peaks import LAUNCH_S, UPSTREAM_4090, Peaks

CLASSES = ("matmul", "attention", "muon", "rest")
TOP = 8  # the costliest kernels the estimate names
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_SIZES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SCRATCH = ("u8", "s8")
_SLICES = ("slice", "dynamic-slice")
_HALF = ("bf16", "f16")
_SUMS = ("kernels", "flops", "bytes", "work_s", "compute_bound", "launch_s", "time_s")


def _size(dtype: str) -> float:
    if dtype.startswith("f8"):
        return 1
    return 0.5 if dtype in ("s4", "u4") else _SIZES.get(dtype, 4)


def array_bytes(shape_text: str, skip_scratch: bool = False) -> float:
    """Bytes of a shape (every array of a tuple); `skip_scratch` leaves out a tuple's u8/s8 workspace."""
    arrays = _ARRAY.findall(shape_text)
    total = 0.0
    for dtype, dims in arrays:
        if skip_scratch and len(arrays) > 1 and dtype in _SCRATCH:
            continue
        n = 1
        for d in census._dims(dims):
            n *= d
        total += n * _size(dtype)
    return total


def operands(rest: str) -> list[str]:
    """The operand names of an instruction, from the text after its opcode's opening parenthesis."""
    depth, end = 0, len(rest)
    for i, ch in enumerate(rest):
        depth += ch in "({"
        if ch in ")}":
            if depth == 0:
                end = i
                break
            depth -= 1
    return [o.split()[-1].lstrip("%") for o in rest[:end].split(",") if o.strip()]


class _Module:
    """The parsed module with what the roofline looks up: shapes, computations, who uses what."""

    def __init__(self, hlo: str):
        self.computations = census.parse(hlo)
        self.runs, self.fused = census._multipliers(self.computations)
        self.shapes = {name: s for c in self.computations.values() for name, s, _, _ in c["instructions"]}
        self.ops = profile.parse_hlo(hlo)[1]

    def matmul_seconds(self, comp: str, peaks: Peaks) -> tuple[float, float]:
        """(FLOPs, seconds at peak) of every matmul in a fused computation and the fusions nested in it."""
        flops, seconds = 0.0, 0.0
        for _, shape_text, opcode, rest in self.computations.get(comp, {}).get("instructions", []):
            if opcode in census._MATMULS:
                f, s = self.matmul(shape_text, opcode, rest, peaks)
                flops, seconds = flops + f, seconds + s
            elif opcode == "fusion":
                f, s = self.matmul_seconds(re.search(r"calls=%?([\w.\-]+)", rest).group(1), peaks)
                flops, seconds = flops + f, seconds + s
        return flops, seconds

    def matmul(self, shape_text: str, opcode: str, rest: str, peaks: Peaks) -> tuple[float, float]:
        """(FLOPs, seconds at the peak of the precision it runs in) of a dot, convolution or GEMM call."""
        lhs_shape = self.shapes.get(operands(rest)[0], "")
        flops = census._MATMULS.get(opcode, census._gemm_call_flops)(shape_text, lhs_shape, rest)
        dtype = _ARRAY.search(lhs_shape).group(1) if _ARRAY.search(lhs_shape) else "f32"
        if dtype in _HALF or dtype.startswith("f8"):
            peak = peaks.bf16
        elif dtype == "f32" and "highest" not in rest and "dot_f32_f32_f32" not in rest:
            peak = peaks.tf32
        else:
            peak = peaks.fp32
        return flops, flops / peak

    def fusion_bytes(self, comp: str, args: list[str], out_shape: str) -> float:
        """Bytes a fusion reads and writes: each operand as its fused computation uses it, and its result."""
        instructions = self.computations[comp]["instructions"]
        users = defaultdict(list)
        for name, shape_text, opcode, rest in instructions:
            for i, o in enumerate(operands(rest) if opcode != "parameter" else ()):
                users[o].append((opcode, i, shape_text, name))
        params = {int(rest.split(")")[0]): name for name, _, opcode, rest in instructions if opcode == "parameter"}
        total = 0.0
        for index, arg in enumerate(args):
            uses = self._through_bitcasts(params.get(index), users)
            if uses and all(op in _SLICES and i == 0 for op, i, _, _ in uses):
                total += sum(array_bytes(s) for _, _, s, _ in uses)
            elif uses and all(op == "dynamic-update-slice" and i == 0 for op, i, _, _ in uses):
                continue  # the buffer updated in place: only the update moves (counted with the result)
            else:
                total += array_bytes(self.shapes.get(arg, ""))
        root_name, _, root_op, root_rest = instructions[-1]
        parts = operands(root_rest) if root_op == "tuple" else [root_name]
        by_name = {name: (opcode, rest) for name, _, opcode, rest in instructions}
        for part in parts:
            opcode, rest = by_name.get(part, ("", ""))
            if opcode == "dynamic-update-slice":
                total += array_bytes(self.shapes.get(operands(rest)[1], ""))
            elif root_op != "tuple":
                total += array_bytes(out_shape)
            else:
                total += array_bytes(self.shapes.get(part, ""))
        return total

    @staticmethod
    def _through_bitcasts(name, users) -> list:
        """The uses of a fused parameter, looking through bitcasts (which move nothing)."""
        found, pending = [], [name] if name else []
        while pending:
            for use in users.get(pending.pop(), ()):
                if use[0] == "bitcast":
                    pending.append(use[3])
                else:
                    found.append(use)
        return found

    def kernel(self, name: str, shape_text: str, opcode: str, rest: str, peaks: Peaks) -> dict:
        """One launch of a kernel: its FLOPs, compute seconds at peak and bytes moved."""
        args = operands(rest)
        flops, compute = 0.0, 0.0
        if opcode == "fusion":
            comp = re.search(r"calls=%?([\w.\-]+)", rest).group(1)
            flops, compute = self.matmul_seconds(comp, peaks)
            moved = self.fusion_bytes(comp, args, shape_text)
        elif opcode == "dynamic-slice":
            moved = 2 * array_bytes(shape_text)
        elif opcode == "dynamic-update-slice":
            moved = 2 * array_bytes(self.shapes.get(args[1], ""))
        else:
            if opcode in census._MATMULS:
                flops, compute = self.matmul(shape_text, opcode, rest, peaks)
            target = profile.TARGET.search(rest) if opcode == "custom-call" else None
            if target and target.group(1) in census._GEMM_TARGETS:
                flops, compute = self.matmul(shape_text, opcode, rest, peaks)
            elif target and target.group(1).startswith("__cudnn$fmha"):
                flops = census._attention_flops(shape_text, "Backward" in target.group(1),
                                                '"mask_type":"CAUSAL"' in rest)
                compute = flops / peaks.bf16
            moved = sum(array_bytes(self.shapes.get(a, "")) for a in args)
            moved += array_bytes(shape_text, skip_scratch=opcode == "custom-call")
        kind = profile.category(self.ops.get(name), name) or "rest"
        return {"name": name, "class": kind, "flops": flops, "compute_s": compute, "bytes": moved}


def kernels(hlo: str, peaks: Peaks) -> list[dict]:
    """Every launched kernel of the module with how often it runs per step (`times`) and one launch's work."""
    module, found = _Module(hlo), []
    for comp_name, c in module.computations.items():
        times = module.runs.get(comp_name, 0)
        if comp_name in module.fused or not times:
            continue
        for name, shape_text, opcode, rest in c["instructions"]:
            if opcode not in census._NOT_KERNELS:
                found.append({**module.kernel(name, shape_text, opcode, rest, peaks), "times": times})
    return found


def estimate(hlo: str, peaks: Peaks, bandwidth_bytes_s: float, launch_s: float = LAUNCH_S) -> dict:
    """The step's estimated time on the card, in all and per class: per kernel max(compute, memory) plus one
    launch, times how often it runs."""
    classes = {c: dict.fromkeys(_SUMS[:-1], 0.0) for c in CLASSES}
    found = kernels(hlo, peaks)
    for k in found:
        row = classes[k["class"]]
        memory_s = k["bytes"] / bandwidth_bytes_s
        k["step_s"] = k["times"] * (max(k["compute_s"], memory_s) + launch_s)
        row["kernels"] += k["times"]
        row["flops"] += k["times"] * k["flops"]
        row["bytes"] += k["times"] * k["bytes"]
        row["work_s"] += k["times"] * max(k["compute_s"], memory_s)
        row["compute_bound"] += k["times"] * (k["compute_s"] > memory_s)
        row["launch_s"] += k["times"] * launch_s
    classes = {c: {**row, "time_s": row["work_s"] + row["launch_s"]} for c, row in classes.items()}
    total = {key: sum(row[key] for row in classes.values()) for key in _SUMS}
    top = [{key: k[key] for key in ("name", "class", "times", "flops", "bytes", "step_s")}
           for k in sorted(found, key=lambda k: -k["step_s"])[:TOP]]
    return {"kind": "estimate", "launch_s_each": launch_s, "classes": classes, **total, "step_s": total["time_s"],
            "top_kernels": top}


def track_figures(est: dict, track: Track, cfg: ModelConfig, device_name: str, n_devices: int = 1) -> dict:
    """Tokens/s, MFU (SPEC section 5: analytic FLOPs against the published bf16 peak) and Active Training Time of
    `track` at the estimated step time. A token track runs its steps; a loss track as many as upstream's record
    took to reach its target."""
    tokens_per_s = track.tokens_per_step / est["step_s"]
    if track.is_loss_track:
        record = UPSTREAM_4090.get(track.name)
        steps = -(-record[1] // track.tokens_per_step) if record else None
        steps_from = "upstream's record" if record else None
    else:
        steps, steps_from = track.total_steps, "the track"
    mfu = report.mfu(tokens_per_s / n_devices, cfg, track.seq_len, device_name)
    ranked = sorted(CLASSES, key=lambda c: -est["classes"][c]["time_s"])
    return {"step_s": est["step_s"], "tokens_per_s": tokens_per_s, "mfu": mfu, "steps": steps,
            "steps_from": steps_from, "active_s": steps * est["step_s"] if steps else None,
            "top_classes": [(c, est["classes"][c]["time_s"] / est["step_s"]) for c in ranked[:3]]}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def render(est: dict, figures: dict, card_name: str, track_name: str) -> list[str]:
    """Markdown lines of the estimate, beside upstream's record where the card is an RTX 4090."""
    steps = (f"{figures['steps']:,} steps ({figures['steps_from']})" if figures["steps"]
             else "no step count (a loss track without an upstream record)")
    active = f"{figures['active_s']:.1f} s" if figures["active_s"] else "n/a"
    mfu = f"{figures['mfu']:.1%}" if figures["mfu"] is not None else "n/a"
    lines = ["", "## Step time: an estimate (roofline of the compiled step, not a measurement)", "",
             f"- estimated step {_ms(est['step_s'])}: {figures['tokens_per_s']:,.0f} tokens/s, MFU {mfu}; "
             f"Active Training Time {active} for {steps}",
             f"- {est['kernels']:,.0f} kernel launches x {est['launch_s_each'] * 1e6:.0f} us = "
             f"{_ms(est['launch_s'])}; {est['compute_bound']:,.0f} of them compute-bound; "
             f"{est['flops']:.4g} FLOPs, {est['bytes'] / 1e9:.2f} GB moved",
             "- top classes: " + ", ".join(f"{c} {share:.0%}" for c, share in figures["top_classes"])]
    record = UPSTREAM_4090.get(track_name)
    if record and "4090" in card_name and figures["active_s"]:
        lines.append(f"- upstream's RTX 4090 record: {record[0]:.1f} s for {record[1]:,} tokens "
                     f"({record[1] / record[0]:,.0f} tokens/s); estimate / record "
                     f"{figures['active_s'] / record[0]:.2f}")
    lines += ["", "| class | kernels | FLOPs | GB moved | max(compute, memory) | launches | estimate | share |",
              "|---|---|---|---|---|---|---|---|"]
    for c in CLASSES:
        row = est["classes"][c]
        lines.append(f"| {c} | {row['kernels']:,.0f} | {row['flops']:.3g} | {row['bytes'] / 1e9:.2f} | "
                     f"{_ms(row['work_s'])} | {_ms(row['launch_s'])} | {_ms(row['time_s'])} | "
                     f"{row['time_s'] / est['step_s']:.1%} |")
    lines += ["", "| costliest kernels | class | runs per step | FLOPs per run | MB per run | estimate per step |",
              "|---|---|---|---|---|---|"]
    lines += [f"| `{k['name']}` | {k['class']} | {k['times']} | {k['flops']:.3g} | {k['bytes'] / 1e6:,.1f} | "
              f"{_ms(k['step_s'])} |" for k in est["top_kernels"]]
    return lines


def plot(est: dict, title: str, path) -> None:
    """A PNG of the estimate per class: each class's max(compute, memory) and its launches, in ms per step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    work = [est["classes"][c]["work_s"] * 1e3 for c in CLASSES]
    launches = [est["classes"][c]["launch_s"] * 1e3 for c in CLASSES]
    ax.barh(CLASSES, work, color="tab:blue", label="max(compute, memory)")
    ax.barh(CLASSES, launches, left=work, color="tab:orange",
            label=f"launches ({est['launch_s_each'] * 1e6:.0f} us each)")
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per step (estimate; step {est['step_s'] * 1e3:.1f} ms)")
    ax.set_title(f"{title}: an estimate, not a measurement")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
