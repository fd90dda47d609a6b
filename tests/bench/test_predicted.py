"""Measured beside the estimate: a synthetic GPU profile of a hand-written step (one GEMM, one elementwise op),
its classes set beside the roofline of the same module as the bench does on a card."""

import pytest

from jax_nano.bench import predicted, profile
from jax_nano.plan.peaks import LAUNCH_S, PEAKS
from jax_nano.plan.targets import GPUS
from tests.plan.test_roofline import HAND

CARD = GPUS["rtx4090"]


def _profiled(tmp_path, device):
    """A profile job's result: the module dumped as XLA dumps it, two steps traced on the card's stream."""
    (tmp_path / "module_0001.jit_eval_step.sm_8.9_gpu_after_optimizations.txt").write_text("HloModule other\n")
    (tmp_path / "module_0002.jit_train_step.sm_8.9_gpu_after_optimizations.txt").write_text(HAND)
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}}]
    # Per step (us): the GEMM 100, a gap of 10, the add 20, a gap of 10.
    events = []
    for start in (0, 140):
        events += [{"ph": "X", "pid": 1, "tid": 7, "ts": start + t, "dur": d, "name": n,
                    "args": {"hlo_op": op, "hlo_module": "hand"}}
                   for t, d, n, op in ((0, 100, "gemm_kernel", "gemm_fusion_dot.1"),
                                       (110, 20, "loop_add_fusion", "loop_add_fusion"))]
    result = profile.breakdown(profile.device_events({"traceEvents": meta + events}),
                               profile.load_hlo_dumps(tmp_path), n_steps=2)
    return predicted.with_estimate({**result, "device": device}, tmp_path)


def test_each_class_is_set_beside_its_roofline(tmp_path):
    rows = {r["class"]: r for r in _profiled(tmp_path, CARD.name)["versus_estimate"]["rows"]}
    gemm_s = 2.0 * 1024 * 1024 * 4096 / PEAKS["rtx4090"].bf16
    add_s = 3 * 1024 * 1024 * 4 / CARD.bandwidth_bytes_s
    # The window of two steps is 270 us (the trailing gap falls outside it): 135 us a step.
    assert rows["matmul"]["measured_ms"] == pytest.approx(0.100)
    assert rows["matmul"]["estimate_ms"] == pytest.approx(gemm_s * 1e3)
    assert rows["matmul"]["ratio"] == pytest.approx(0.100 / (gemm_s * 1e3))
    assert rows["rest"]["measured_ms"] == pytest.approx(0.020)
    assert rows["rest"]["estimate_ms"] == pytest.approx(add_s * 1e3)
    assert rows["gaps"]["measured_ms"] == pytest.approx(0.015) and rows["gaps"]["estimate_ms"] == pytest.approx(
        2 * LAUNCH_S * 1e3)
    assert rows["step"]["measured_ms"] == pytest.approx(0.135)
    assert rows["step"]["estimate_ms"] == pytest.approx((gemm_s + add_s + 2 * LAUNCH_S) * 1e3)
    assert rows["attention"]["estimate_ms"] == 0 and rows["attention"]["ratio"] is None
    lines = predicted.render([{"case": "hand", "breakdown": _profiled(tmp_path, CARD.name)}])
    assert f"| hand | matmul | 0.10 ms | {gemm_s * 1e3:.2f} ms | {0.100 / (gemm_s * 1e3):.2f} |" in lines


def test_a_device_without_published_peaks_has_no_estimate(tmp_path):
    versus = _profiled(tmp_path, "cpu (2 cores)")["versus_estimate"]
    assert not versus["estimated"] and all(r["estimate_ms"] is None for r in versus["rows"])
    lines = predicted.render([{"case": "hand", "breakdown": _profiled(tmp_path, "cpu")}])
    assert "| hand | step | 0.14 ms | n/a (no peaks for this device) | n/a |" in lines
    assert predicted.render([{"case": "hand", "breakdown": None}]) == []
