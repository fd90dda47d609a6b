"""What a compiled GPU step launches and computes, read from its optimized HLO: kernels per step, GEMMs,
custom calls (cuDNN attention among them) and FLOPs, with every while loop's body counted as often as it runs.

A kernel is a fusion, custom call or other launching instruction of a computation that runs on its own (the
entry, a loop body, a called computation), not one inside a fusion. FLOPs: 2 x output elements x contracted
size for every dot (in fusions too); cuDNN's fused attention has no dot in HLO, so its FLOPs are estimated from
its output shape (forward two matmuls of B x H x T x T x D, backward five, halved under a causal mask).
"""

import math
import re
from collections import defaultdict

from jax_nano.bench.profile import COMPUTATION, TARGET

_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
                "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency"}
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul")


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def parse(hlo: str) -> dict:
    """{computation: {"entry": bool, "instructions": [(name, shape text, opcode, rest)]}}."""
    computations, current = {}, None
    for line in hlo.splitlines():
        head = COMPUTATION.match(line)
        if head and not line.startswith(" "):
            current = head.group(1)
            computations[current] = {"entry": line.startswith("ENTRY"), "instructions": []}
            continue
        found = _INSTRUCTION.match(line) if current else None
        if found:
            computations[current]["instructions"].append(found.groups())
    return computations


def _multipliers(computations: dict) -> tuple[dict, set]:
    """How often each computation runs per step, and which ones are fusion bodies (not launched on their own)."""
    runs, fused = defaultdict(int), set()
    entry = next(name for name, c in computations.items() if c["entry"])
    runs[entry] = 1
    pending = [entry]
    while pending:
        name = pending.pop()
        for _, _, opcode, rest in computations[name]["instructions"]:
            times = runs[name]
            if opcode == "while":
                trip = _TRIP.search(rest)
                times *= int(trip.group(1)) if trip else 1
            for key, child in re.findall(r"\b(calls|body|condition|to_apply|branch_computations)=\{?%?([\w.\-]+)",
                                         rest):
                if key == "to_apply":
                    continue  # a reducer's scalar body: part of its kernel
                if opcode == "fusion":
                    fused.add(child)
                if child in computations and runs[child] == 0:
                    runs[child] = times
                    pending.append(child)
    return runs, fused


def _attention_flops(shape_text: str, backward: bool, causal: bool) -> float:
    shape = _SHAPE.search(shape_text)
    b, h, t, d = _dims(shape.group(2))[:4]
    matmuls = 5 if backward else 2
    return matmuls * 2.0 * b * h * t * t * d * (0.5 if causal else 1.0)


def census(hlo: str) -> dict:
    computations = parse(hlo)
    runs, fused = _multipliers(computations)
    shapes = {}
    for c in computations.values():
        for name, shape_text, _, _ in c["instructions"]:
            shapes[name] = shape_text
    kernels, gemms, dot_flops, attention_flops = 0, 0, 0.0, 0.0
    custom_calls = defaultdict(int)
    for comp_name, c in computations.items():
        times = runs.get(comp_name, 0)
        inside_fusion = comp_name in fused
        for name, shape_text, opcode, rest in c["instructions"]:
            if opcode == "dot":
                out = _SHAPE.search(shape_text)
                lhs = re.match(r"\s*%?([\w.\-]+)", rest)
                lhs_shape = _SHAPE.search(shapes.get(lhs.group(1), "")) if lhs else None
                contract = _CONTRACT.search(rest)
                k = math.prod(_dims(lhs_shape.group(2))[i] for i in _dims(contract.group(1))) if (
                    lhs_shape and contract) else 0
                dot_flops += times * 2.0 * math.prod(_dims(out.group(2))) * k
            if inside_fusion or opcode in _NOT_KERNELS:
                continue
            kernels += times
            if opcode == "custom-call":
                target = TARGET.search(rest).group(1)
                custom_calls[target] += times
                if target in _GEMM_TARGETS:
                    gemms += times
                elif target.startswith("__cudnn$fmha"):
                    attention_flops += times * _attention_flops(shape_text, "Backward" in target,
                                                                '"mask_type":"CAUSAL"' in rest)
            elif opcode == "fusion" and ("gemm" in name or '"kind":"__triton_gemm"' in rest or "cublas" in rest):
                gemms += times
    return {"kernels": kernels, "gemms": gemms, "custom_calls": dict(sorted(custom_calls.items())),
            "cudnn_attention": any(t.startswith("__cudnn$fmha") for t in custom_calls),
            "host_callbacks": sum(n for t, n in custom_calls.items() if "callback" in t),
            "conditionals": sum(1 for c in computations.values() for i in c["instructions"] if i[2] == "conditional"),
            "dot_flops": dot_flops, "attention_flops": attention_flops}
