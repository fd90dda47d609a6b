"""Measured beside the estimate, per kernel class: a profiled step on a GPU (jax_nano/bench/profile.py) set beside
the roofline estimate of the very program it ran (jax_nano/plan/roofline.py, read from the optimized HLO the
profile dumped), so the first run on a card says how far off the estimate is, and where.

Both sides class kernels by the same rules (matmul, attention, Muon, rest). A class's measured time is its share
of the traced window per step; its estimate is max(compute, memory) summed over its kernels. The gaps between
kernels are set beside the estimate's launch overheads, the step beside the estimated step.
"""

from pathlib import Path

from jax_nano.plan import roofline
from jax_nano.plan.peaks import card_named

ROWS = (*roofline.CLASSES, "gaps", "step")


def train_step_hlo(dump_dir) -> str | None:
    """The optimized HLO of the train step the profile ran: the newest train-step module of the dump folder."""
    found = sorted(Path(dump_dir).glob("*train_step*after_optimizations.txt"), key=lambda p: p.stat().st_mtime)
    return found[-1].read_text() if found else None


def beside(breakdown: dict, est: dict | None) -> dict:
    """Milliseconds per step, per class: measured, estimated, and measured / estimate (None where unknown)."""
    step = breakdown["step_time_s"]
    measured = {c: breakdown["shares"].get(c, 0.0) * step for c in (*roofline.CLASSES, "gaps")}
    measured["step"] = step
    predicted = {}
    if est is not None:
        predicted = {c: est["classes"][c]["work_s"] for c in roofline.CLASSES}
        predicted.update(gaps=est["launch_s"], step=est["step_s"])
    rows = []
    for row in ROWS:
        ms, guess = measured[row] * 1e3, predicted[row] * 1e3 if row in predicted else None
        rows.append({"class": row, "measured_ms": ms, "estimate_ms": guess,
                     "ratio": ms / guess if guess else None})
    return {"rows": rows, "estimated": est is not None}


def with_estimate(result: dict, dump_dir) -> dict:
    """A profile job's result with its classes set beside the estimate, where the device is a listed card."""
    card, hlo = card_named(result.get("device", "")), train_step_hlo(dump_dir)
    est = roofline.estimate(hlo, card[1], card[0].bandwidth_bytes_s) if card and hlo else None
    return {**result, "versus_estimate": beside(result, est)}


def render(profiles: list[dict]) -> list[str]:
    """Markdown lines: per profiled case, each class measured beside its estimate."""
    done = [p for p in profiles if (p.get("breakdown") or {}).get("versus_estimate")]
    if not done:
        return []
    lines = ["", "## Measured beside the estimate (roofline of the compiled step: jax_nano/plan/roofline.py)", "",
             "An estimate is not a measurement; a ratio above 1 is a class slower than its roofline. Gaps are set "
             "beside the estimate's launch overheads.", "",
             "| case | class | measured | estimate | measured / estimate |", "|---|---|---|---|---|"]
    for prof in done:
        versus = prof["breakdown"]["versus_estimate"]
        for row in versus["rows"]:
            guess = "n/a (no peaks for this device)" if row["estimate_ms"] is None else f"{row['estimate_ms']:.2f} ms"
            ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
            lines.append(f"| {prof['case']} | {row['class']} | {row['measured_ms']:.2f} ms | {guess} | {ratio} |")
    return lines
