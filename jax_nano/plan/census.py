"""What a compiled GPU or TPU step launches and computes, read from its optimized HLO: kernels per step, GEMMs,
custom calls (cuDNN attention among them) and FLOPs, with every while loop's body counted as often as it runs.

A kernel is a fusion, custom call or other launching instruction of a computation that runs on its own (the
entry, a loop body, a called computation), not one inside a fusion. FLOPs: 2 x output elements x contracted
size for every dot (in fusions too) and cuBLAS GEMM call; cuDNN's fused attention has no dot in HLO, so its
FLOPs are estimated from its output shape (forward two matmuls of B x H x T x T x D, backward five, halved
under a causal mask).
A TPU writes its matmuls as convolutions, some with a batch axis disguised as a dilated window: their FLOPs
count only the window positions that meet a real input element, as XLA's own cost analysis does, and a fusion
holding one is a GEMM.
"""

import math
import re
from collections import defaultdict

import numpy as np

from jax_nano.bench.profile import COMPUTATION, TARGET

_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
                "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency"}
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul")
_LABELS = re.compile(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_WINDOW = re.compile(r"window=\{([^}]*)\}")
_GROUPS = re.compile(r"(feature|batch)_group_count=(\d+)")
_GEMM_CONTRACT = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')


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


def _trip_count(rest: str, computations: dict) -> int:
    """A while loop's trip count: from the GPU compiler's annotation, else (a TPU module has none) from its
    condition `counter < N`, the counter starting at 0 in steps of 1 as lax.scan and fori_loop emit it."""
    trip = _TRIP.search(rest)
    if trip:
        return int(trip.group(1))
    condition = re.search(r"condition=%?([\w.\-]+)", rest)
    instructions = computations.get(condition.group(1), {}).get("instructions", []) if condition else []
    constants = {name: r.rstrip(")") for name, _, op, r in instructions if op == "constant"}
    for _, _, opcode, r in instructions:
        bound = re.match(r"\s*%?[\w.\-]+, %?([\w.\-]+)\), direction=LT", r)
        if opcode == "compare" and bound and constants.get(bound.group(1), "").isdigit():
            return int(constants[bound.group(1)])
    return 1


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
                times *= _trip_count(rest, computations)
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


def _dot_flops(out_text: str, lhs_text: str, rest: str) -> float:
    """2 x output elements x the contracted size."""
    out, lhs, contract = _SHAPE.search(out_text), _SHAPE.search(lhs_text), _CONTRACT.search(rest)
    k = math.prod(_dims(lhs.group(2))[i] for i in _dims(contract.group(1))) if lhs and contract else 0
    return 2.0 * math.prod(_dims(out.group(2))) * k


def _window_field(window: str, key: str, n: int, default: int) -> list:
    found = re.search(rf"\b{key}=([0-9_x\-]+)", window)
    if not found:
        return [default] * n
    return [int(v.split("_")[0]) for v in found.group(1).split("x")]


def _convolution_flops(out_text: str, lhs_text: str, rest: str) -> float:
    """2 x multiply-adds of one convolution: per output element, the input features of its group times the
    window positions that land on a real input element (not padding, not a hole of lhs dilation)."""
    labels, out, lhs = _LABELS.search(rest), _SHAPE.search(out_text), _SHAPE.search(lhs_text)
    if not (labels and out and lhs):
        return 0.0
    lhs_labels, _, out_labels = labels.groups()
    lhs_dims, out_dims = _dims(lhs.group(2)), _dims(out.group(2))
    groups = dict(_GROUPS.findall(rest))
    fma = out_dims[out_labels.index("b")] * out_dims[out_labels.index("f")]
    fma *= lhs_dims[lhs_labels.index("f")] // int(groups.get("feature", 1))
    spatial = sorted(c for c in lhs_labels if c.isdigit())
    window = _WINDOW.search(rest)
    window = window.group(1) if window else ""
    size = _window_field(window, "size", len(spatial), 1)
    stride = _window_field(window, "stride", len(spatial), 1)
    pad_low = _window_field(window, "pad", len(spatial), 0)
    lhs_dilate = _window_field(window, "lhs_dilate", len(spatial), 1)
    rhs_dilate = _window_field(window, "rhs_dilate", len(spatial), 1)
    for i, d in enumerate(spatial):
        o_K = np.arange(out_dims[out_labels.index(d)])[:, None]
        at_K = o_K * stride[i] + np.arange(size[i])[None, :] * rhs_dilate[i] - pad_low[i]
        dilated = (lhs_dims[lhs_labels.index(d)] - 1) * lhs_dilate[i] + 1
        fma *= int(np.count_nonzero((at_K >= 0) & (at_K < dilated) & (at_K % lhs_dilate[i] == 0)))
    return 2.0 * fma


def _gemm_call_flops(out_text: str, lhs_text: str, rest: str) -> float:
    """A GEMM custom call (cuBLAS, chosen by autotuning on a card): 2 x its result's elements x the contracted
    size, from the dimension numbers of its backend config."""
    out, lhs = _SHAPE.search(out_text), _SHAPE.search(lhs_text)
    contract = _GEMM_CONTRACT.search(rest)
    if not (out and lhs and contract):
        return 0.0
    k = math.prod(_dims(lhs.group(2))[int(i)] for i in re.findall(r"\d+", contract.group(1)))
    return 2.0 * math.prod(_dims(out.group(2))) * k


# The instructions that multiply matrices, and their FLOPs from (output shape, first operand's shape, the rest).
_MATMULS = {"dot": _dot_flops, "convolution": _convolution_flops}


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
    convolving = {name for name, c in computations.items() if any(i[2] == "convolution" for i in c["instructions"])}
    for comp_name, c in computations.items():
        times = runs.get(comp_name, 0)
        inside_fusion = comp_name in fused
        for name, shape_text, opcode, rest in c["instructions"]:
            if opcode in _MATMULS:
                lhs = re.match(r"\s*%?([\w.\-]+)", rest)
                dot_flops += times * _MATMULS[opcode](shape_text, shapes.get(lhs.group(1), "") if lhs else "", rest)
            if inside_fusion or opcode in _NOT_KERNELS:
                continue
            kernels += times
            if opcode == "custom-call":
                target = TARGET.search(rest).group(1)
                custom_calls[target] += times
                if target in _GEMM_TARGETS:
                    gemms += times
                    lhs = re.match(r"\s*%?([\w.\-]+)", rest)
                    dot_flops += times * _gemm_call_flops(shape_text, shapes.get(lhs.group(1), "") if lhs else "",
                                                          rest)
                elif target.startswith("__cudnn$fmha"):
                    attention_flops += times * _attention_flops(shape_text, "Backward" in target,
                                                                '"mask_type":"CAUSAL"' in rest)
            elif opcode == "fusion" and ("gemm" in name or '"kind":"__triton_gemm"' in rest or "cublas" in rest
                                         or re.search(r"calls=%?([\w.\-]+)", rest).group(1) in convolving):
                gemms += times
            elif opcode == "convolution":
                gemms += times
    return {"kernels": kernels, "gemms": gemms, "custom_calls": dict(sorted(custom_calls.items())),
            "cudnn_attention": any(t.startswith("__cudnn$fmha") for t in custom_calls),
            "host_callbacks": sum(n for t, n in custom_calls.items() if "callback" in t),
            "conditionals": sum(1 for c in computations.values() for i in c["instructions"] if i[2] == "conditional"),
            "dot_flops": dot_flops, "attention_flops": attention_flops}
