"""The peak an MFU is measured against: published where known, else the matmul probe's, cached and reused."""

import json

import pytest

from configs.model import get_model_config
from jax_nano.core import peak
from jax_nano.core.leaderboard import row_from_summary, validate_row
from jax_nano.core.report import flops_per_token


def fake_probe(calls):
    def probe(framework):
        calls.append(framework)
        best = {"jax": 100e9, "torch": 150e9}[framework]
        return {"framework": framework, "version": "1", "results": [
            {"dtype": "float32", "n": 512, "flops_per_s": best}, {"dtype": "bfloat16", "n": 512, "flops_per_s": 1e9}]}
    return probe


def test_the_measured_peak_is_the_best_probe_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_NANO_PEAK_CACHE", str(tmp_path))
    monkeypatch.setattr(peak, "_busy", lambda: False)
    calls = []
    first = peak.measured_peak("CPU", fake_probe(calls))
    assert (first["flops_per_s"], first["framework"], first["dtype"]) == (150e9, "torch", "float32")
    assert calls == ["jax", "torch"]
    (path,) = tmp_path.glob("cpu-*.json")
    assert json.loads(path.read_text())["key"]["cores"] > 0
    again = peak.measured_peak("CPU", fake_probe(calls))
    assert again["flops_per_s"] == 150e9 and calls == ["jax", "torch"], "the cached peak was measured again"
    # A probe taken on a loaded machine is taken again once it is quiet.
    path.write_text(json.dumps({**json.loads(path.read_text()), "loaded": True, "flops_per_s": 1.0}))
    assert peak.measured_peak("CPU", fake_probe(calls))["flops_per_s"] == 150e9 and len(calls) == 4
    # Another device (or other library versions) has its own entry.
    peak.measured_peak("Other CPU", fake_probe(calls))
    assert len(calls) == 6 and len(list(tmp_path.glob("*.json"))) == 2


def test_mfu_is_against_the_published_peak_where_known_else_the_measured_one(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_NANO_PEAK_CACHE", str(tmp_path))
    monkeypatch.setattr(peak, "_busy", lambda: False)
    cfg = get_model_config("blueberry-88m")
    calls = []
    gpu = peak.mfu(1000.0, cfg, 2048, "NVIDIA GeForce RTX 4090", fake_probe(calls))
    assert gpu["basis"] == "published" and gpu["mfu"] == pytest.approx(1000 * flops_per_token(cfg, 2048) / 165e12)
    assert calls == []
    cpu = peak.mfu(100.0, cfg, 256, "CPU", fake_probe(calls))
    assert cpu["basis"] == "measured" and cpu["peak_flops"] == 150e9
    assert cpu["mfu"] == pytest.approx(100 * flops_per_token(cfg, 256) / 150e9)
    assert peak.describe(0.213, "measured", 150e9) == "21.3% of the measured matmul peak (150 GFLOP/s)"
    assert peak.describe(0.41, "published") == "41.0% of the published bf16 peak"
    note = peak.measured_note(cpu["peak_flops"], cpu["peak"])
    assert note.startswith("MFU is against the **measured** matmul peak of this device (150 GFLOP/s: PyTorch's "
                           f"float32 512 x 512 matmul, probed {cpu['peak']['date'][:10]} ")
    assert "compare MFUs of one invocation only." in note and "probed while the load" not in note
    loaded = peak.measured_note(150e9, {**cpu["peak"], "loaded": True})
    assert "probed while the load was above the core count" in loaded
    assert peak.measured_note(150e9, None).startswith("MFU is against the **measured** matmul peak of this device "
                                                      "(150 GFLOP/s: the best square")
    assert peak.mfu(1.0, cfg, 256, "Nowhere", lambda fw: None)["mfu"] is None
    summary = {"date": "2026-12-03", "framework": "jax", "device": "2-core CPU", "active_time_s": 5.0, "steps": 10,
               "tokens": 10240, "train_loss": 7.0, "val_loss": 7.1, "setup_time_s": 9.0, "params": 88_630_528,
               "commit": "abc", "tokens_per_s": 2048.0, "mfu": 0.213, "mfu_basis": "measured"}
    row = row_from_summary(summary)
    assert row["MFU"] == "21.3% (measured peak)"
    validate_row(row)
    assert row_from_summary({**summary, "mfu_basis": "published"})["MFU"] == "21.3%"


def test_the_real_probes_measure_a_matmul():
    from jax_nano.peak_probe import probe as jax_probe
    from torch_ref.peak_probe import probe as torch_probe

    for framework, probe in (("jax", jax_probe), ("torch", torch_probe)):
        found = probe(sizes=(64,), repeats=2)
        assert found["framework"] == framework and {r["dtype"] for r in found["results"]} == {"float32", "bfloat16"}
        assert all(r["flops_per_s"] > 0 and r["n"] == 64 for r in found["results"])


def test_a_dtype_too_slow_for_the_next_size_stops_growing(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(peak.time, "perf_counter", lambda: clock[0])
    rates = {"float32": 100e9, "bfloat16": 1e9}  # a CPU without bf16 instructions
    prepared = []

    def prepare(dtype, n):
        prepared.append((dtype, n))

        def run():
            clock[0] += 2 * n**3 / rates[dtype]
        return run

    results = peak.time_matmuls(prepare, (2048, 512, 1024), repeats=3, budget_s=2.0)
    # bf16 at 512 takes 0.27 s, so 1024 would take 2.1 s: over a quarter of the budget; 2048 is never tried.
    assert prepared == [("float32", 512), ("float32", 1024), ("float32", 2048), ("bfloat16", 512)]
    assert [r["flops_per_s"] for r in results] == pytest.approx([100e9] * 3 + [1e9])
