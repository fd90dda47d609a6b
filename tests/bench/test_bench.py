"""The benchmark: its plan, its time budget, the profile classifier, its CLI's errors, and the smoke suite on CPU."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from configs.optim import OptimConfig
from configs.tracks import Track
from jax_nano.bench import bench, profile
from jax_nano.core import device

ROOT = Path(__file__).resolve().parents[2]

# -- the plan ------------------------------------------------------------------------------------------------


def test_the_plan_interleaves_both_frameworks_and_runs_each_lever_as_data():
    plan = bench.Plan(levers=("loss-chunk-2048", "xla-flags-off"))
    runs = bench.plan_runs(plan, "store")
    head = [(r.case, r.framework, r.cold) for r in runs if r.kind == "head-to-head"]
    forms = ("jax", "torch", "torch-eager")
    assert head == [(c.name, fw, k == 0) for k in range(2) for c in bench.CASES for fw in forms]
    eager = next(r.track for r in runs if r.framework == "torch-eager")
    assert eager.framework == "torch" and eager.torch_compile == "off"
    assert next(r.track for r in runs if r.framework == "torch").torch_compile == "auto"
    loss, tokens = (next(r.track for r in runs if r.case == c.name and r.framework == "jax") for c in bench.CASES)
    # The real steps: 151M 4 x 2048 bf16-compute with its target check on; 88M 8 x 2048 bf16.
    assert (loss.model, loss.batch_size, loss.seq_len, loss.precision) == ("blueberry-151m", 4, 2048, "bf16-compute")
    assert loss.is_loss_track and loss.target_loss == -math.inf and loss.total_steps == plan.steps
    assert (tokens.model, tokens.batch_size, tokens.seq_len, tokens.precision) == ("blueberry-88m", 8, 2048, "bf16")
    assert not tokens.is_loss_track and tokens.total_steps == plan.steps and loss.data == "store"
    levers = [r for r in runs if r.kind == "lever"]
    assert [r.lever for r in levers] == ["xla-flags-off", "loss-chunk-2048"]  # LEVERS' order
    assert levers[1].track == loss.replace(loss_chunk=2048) and levers[1].env == {}
    assert levers[0].track == loss and levers[0].env == {"JAX_NANO_XLA_FLAGS": "0"}
    check_off = bench.plan_runs(bench.Plan(levers=("no-target-check",)), "store")[-1].track
    assert not check_off.is_loss_track and check_off.total_steps == loss.total_steps
    text = bench.describe_plan(runs, plan)
    assert f"{len(runs)} runs" in text and "budget of 8 min" in text
    # Every lever of the table sets fields the Track has.
    fields = {f.name for f in dataclasses.fields(Track)}
    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    assert all(set(lever.track) <= fields and set(lever.optim) <= optim_fields and (lever.track or lever.env or
               lever.optim) for lever in bench.LEVERS)
    bench.Plan().check()


def test_a_run_that_would_pass_the_budget_is_skipped_and_reported(tmp_path):
    plan = bench.Plan(smoke=True, repeats=1, levers=("remat-full",), budget_s=1e-3)
    result = bench.bench(plan, device="cpu", results_dir=tmp_path, log=lambda *_: None)
    assert [r["skipped"].startswith("time budget") for r in result["runs"]] == [True] * 7
    assert result["levers"][1]["status"].startswith("skipped: time budget")
    md = Path(result["files"]["md"]).read_text()
    assert "CPU (no run finished)" in md and "remat-full" in md
    with pytest.raises(bench.BenchError, match="ran on the CPU although the bench was asked for the GPU"):
        bench.check_backend({"label": "151M 4.5loss JAX", "backend": "cpu"}, "gpu")


# -- the profile classifier ----------------------------------------------------------------------------------

HLO = """HloModule jit_step, entry_computation_layout={(f32[4,4]{1,0})->f32[4,4]{1,0}}

FileNames
1 "/src/jax_nano/optim.py"
2 "/src/jax_nano/model.py"
3 "/site-packages/flax/nnx/nn/linear.py"

FunctionNames
1 "orthogonalize"
2 "Attention.__call__"
3 "Linear.__call__"
4 "RMSNorm.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=60 end_line=60 column=1 end_column=9}
2 {file_name_id=2 function_name_id=2 line=94 end_line=94 column=1 end_column=9}
3 {file_name_id=3 function_name_id=3 line=10 end_line=10 column=1 end_column=9}
4 {file_name_id=2 function_name_id=4 line=31 end_line=31 column=1 end_column=9}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=3}
4 {file_location_id=4 parent_frame_id=4}

%fused_dot (p0: f32[4,4], p1: f32[4,4]) -> f32[4,4] {
  %p0 = f32[4,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[4,4]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %ortho = f32[4,4]{1,0} dot(%a, %a), lhs_contracting_dims={1}, metadata={op_name="x" stack_frame_id=1}
  %attn = f32[4,4]{1,0} custom-call(%a), custom_call_target="__cudnn$fmha", metadata={op_name="y" stack_frame_id=2}
  %proj = f32[4,4]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot, metadata={op_name="z" stack_frame_id=3}
  %gemm = (f32[4,4]{1,0}, s8[64]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm"
  %norm = f32[4,4]{1,0} multiply(%a, %a), metadata={op_name="w" stack_frame_id=4}
  %loop = (f32[4,4]{1,0}) while(%t), condition=%cond, body=%body
  ROOT %out = f32[4,4]{1,0} add(%proj, %norm)
}
"""


def kernel(ts, dur, name, hlo_op=None, pid=1, tid=7):
    args = {"hlo_op": hlo_op, "hlo_module": "jit_step"} if hlo_op else {}
    return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name, "args": args}


def test_profile_classifier_splits_a_synthetic_gpu_trace(tmp_path):
    module, ops = profile.parse_hlo(HLO)
    assert module == "jit_step"
    assert ops["ortho"]["function"] == "orthogonalize" and ops["proj"]["calls"] == ["dot", "parameter"]
    assert ops["gemm"]["target"] == "__cublas$gemm" and ops["loop"]["opcode"] == "while"
    (tmp_path / "module_0001.jit_step.sm_9.0_gpu_after_optimizations.txt").write_text(HLO)
    modules = profile.load_hlo_dumps(tmp_path)
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "pid": 1, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7(Compute)"}},
            {"ph": "M", "pid": 1, "tid": 9, "name": "thread_name", "args": {"name": "XLA Ops"}},
            {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}}]
    events = [kernel(0, 10, "gemm_kernel", "ortho"), kernel(10, 20, "kernel_a", "attn"),
              kernel(30, 30, "kernel_b", "proj"), kernel(60, 10, "kernel_c", "gemm"),
              kernel(80, 10, "loop_multiply_fusion", "norm"), kernel(0, 100, "while", "loop"),
              kernel(90, 5, "sm90_xmma_gemm_bf16bf16_bf16f32"), kernel(95, 5, "cudnn_generated_sdpa_flash_fprop"),
              kernel(0, 100, "ortho", "ortho", tid=9), kernel(0, 200, "PjitFunction(step)", "ortho", pid=2)]
    found = profile.device_events({"traceEvents": meta + events})
    assert len(found) == 8  # the GPU stream's kernels; not the "XLA Ops" line, not the host
    result = profile.breakdown(found, modules, n_steps=2)
    shares = result["shares"]
    expected = {"muon": 0.10, "attention": 0.25, "matmul": 0.45, "rest": 0.10, "gaps": 0.10}
    assert shares == pytest.approx(expected)
    assert result["step_time_s"] == pytest.approx(50e-6) and result["busy_s"] == pytest.approx(45e-6)
    assert result["kernels_without_hlo"] == 2 and result["top_ops"][0] == {
        "op": "proj", "category": "matmul", "ms_per_step": pytest.approx(0.015)}


def test_profile_classifier_counts_overlapping_cpu_thunks_once():
    events = [kernel(0, 10, "proj", "proj", pid=5, tid=1), kernel(5, 10, "norm", "norm", pid=5, tid=2),
              kernel(0, 50, "python", pid=5, tid=3)]
    found = profile.device_events({"traceEvents": events})
    assert [e["name"] for e in found] == ["proj", "norm"]
    result = profile.breakdown(found, {"jit_step": profile.parse_hlo(HLO)[1]}, n_steps=1)
    assert result["shares"] == pytest.approx({"matmul": 0.5, "rest": 0.5, "attention": 0.0, "muon": 0.0, "gaps": 0.0})
    with pytest.raises(ValueError, match="no device kernels"):
        profile.breakdown([], {}, n_steps=1)


# -- the command line ----------------------------------------------------------------------------------------


def cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--no-bar", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_bad_input_is_a_one_line_error(tmp_path):
    cases = {
        ("--smoke", "--levers", "nope"): "unknown lever 'nope'",
        ("--smoke", "--repeats", "0"): "--repeats 0: must be >= 2 (1 is allowed only with --smoke)",
        ("--repeats", "1"): "--repeats 1: must be >= 2",
        ("--device", "cpu", "--split-steps", "-1"): "--split-steps -1: must be >= 0",
        ("--device", "cpu", "--repeats", "1"): "--repeats 1: must be >= 2",
        ("--smoke", "--frameworks", "torch"): "levers are measured against the JAX default",
    }
    if device.driver_version() is None:  # a GPU bench on a machine without a GPU
        cases[()] = "this machine has no NVIDIA GPU"
    for extra, message in cases.items():
        out = cli(*extra, cwd=tmp_path, timeout=120)
        assert out.returncode == 2, (extra, out.stderr[-500:])
        assert message in out.stderr and "Traceback" not in out.stderr, (extra, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "results").exists()


SMOKE_LEVERS = ("xla-flags-off", "no-target-check", "remat-full")


@pytest.mark.long
def test_smoke_suite_runs_every_kind_of_row_on_the_cpu(tmp_path):
    # A generous budget: this checks the suite, not the speed of a shared CI machine. One repeat: every kind of row
    # runs (each case in both frameworks; a lever of each kind, one set by the environment and one by the track, as
    # test_model_levers.py checks what every lever computes), in the fewest processes.
    out = cli("--smoke", "--repeats", "1", "--budget-min", "60", "--levers", ",".join(SMOKE_LEVERS),
              "--results-dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (md_path,) = tmp_path.glob("bench-*cpu*.md")
    files = {kind: md_path.with_suffix(f".{kind}") for kind in ("md", "json", "png")}
    assert all(f.stat().st_size > 0 for f in files.values())
    result = json.loads(files["json"].read_text())
    md = files["md"].read_text()
    assert "CPU" in result["device"] and md.startswith(f"# Benchmark on {result['device']}")
    assert [(r["framework"], r["kind"]) for r in result["runs"][:6]] == [
        ("jax", "head-to-head"), ("torch", "head-to-head"), ("torch-eager", "head-to-head")] * 2
    for case in result["cases"]:
        for fw in ("jax", "torch", "torch-eager"):
            assert case["frameworks"][fw]["metrics"]["tokens_per_s"]["median"] > 0, (case["case"], fw)
        assert case["ratio_tokens_per_s"] > 0
    assert [row["lever"] for row in result["levers"]] == ["default", *SMOKE_LEVERS]
    for row in result["levers"]:
        assert row["status"] == "ok" and row["metrics"]["tokens_per_s"]["median"] > 0, row
        assert f"| {row['lever']} |" in md
    loss_runs = [r for r in result["runs"] if r["case"] == bench.CASES[0].name and r["lever"] != "no-target-check"]
    assert all(r["steps"] == 3 and r["reached_target"] is False for r in loss_runs)  # the check ran, never met
    assert "| JAX |" in md and "| PyTorch (compiled) |" in md and "| PyTorch eager |" in md
    assert files["png"].name in md


def test_the_cpu_race_plans_both_cases_every_form_the_split_and_the_cpu_levers():
    plan = bench.Plan(cpu=True, steps=4, repeats=2, levers=bench.parse_levers("cpu"), split_steps=2)
    plan.check()
    runs = bench.plan_runs(plan, {"smoke": "a", "88M 4x256": "b"})
    head = [r for r in runs if r.kind == "head-to-head"]
    assert [(r.case, r.framework) for r in head[:6]] == [(c, f) for c in ("smoke", "88M 4x256")
                                                         for f in ("jax", "torch", "torch-eager")]
    smoke, big = head[0].track, head[3].track
    assert (smoke.model, smoke.batch_size, smoke.seq_len, smoke.data) == ("small", 8, 128, "a")
    assert (big.model, big.batch_size, big.seq_len, big.precision, big.data) == ("blueberry-88m", 4, 256, "float32",
                                                                                  "b")
    levers = {r.lever: r for r in runs if r.kind == "lever"}
    assert set(levers) == set(bench.CPU_LEVERS) and all(r.case == "88M 4x256" for r in levers.values())
    assert levers["ortho-bfloat16"].track.optim.ortho_dtype == "bfloat16" and big.optim.ortho_dtype == "auto"
    assert levers["cpu-onednn"].env == {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}
    split = [(r.case, r.framework) for r in runs if r.kind == "split"]
    assert len(split) == 6 and split[3] == ("88M 4x256", "jax")
    assert "estimated" in bench.describe_plan(runs, plan)
