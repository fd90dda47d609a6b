"""The roofline estimate's arithmetic on hand-written modules: one matmul and one elementwise op timed by hand,
loops multiplied by their trip counts, slices and in-place updates moving only what they touch, and the FLOPs
summed over kernels equal to the census's."""

import pytest

from configs.model import get_model_config
from configs.tracks import get_track
from jax_nano.core import report
from jax_nano.plan import roofline
from jax_nano.plan.census import census
from jax_nano.plan.peaks import PEAKS, Peaks, card_named
from jax_nano.plan.targets import GPUS
from tests.plan.test_census import PADDED, TPU_LOOP

# Round peaks so the expected times are plain arithmetic: bf16 100 TFLOP/s, 1 TB/s, 2 us a launch.
PEAKS_ROUND = Peaks(bf16=100e12, tf32=50e12, fp32=10e12, source="test")
BANDWIDTH = 1e12
LAUNCH = 2e-6

# A bf16 GEMM (1024 x 4096) @ (4096 x 1024) fused as a GPU compile fuses it, and an f32 elementwise add.
HAND = """HloModule hand

%gemm_computation (p0: bf16[1024,4096], p1: bf16[4096,1024]) -> bf16[1024,1024] {
  %p0 = bf16[1024,4096]{1,0} parameter(0)
  %p1 = bf16[4096,1024]{1,0} parameter(1)
  ROOT %dot.1 = bf16[1024,1024]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%add_computation (p2: f32[1024,1024], p3: f32[1024,1024]) -> f32[1024,1024] {
  %p2 = f32[1024,1024]{1,0} parameter(0)
  %p3 = f32[1024,1024]{1,0} parameter(1)
  ROOT %add.1 = f32[1024,1024]{1,0} add(%p2, %p3)
}

ENTRY %main (a: bf16[1024,4096], b: bf16[4096,1024], x: f32[1024,1024], y: f32[1024,1024]) -> (bf16[], f32[]) {
  %a = bf16[1024,4096]{1,0} parameter(0)
  %b = bf16[4096,1024]{1,0} parameter(1)
  %x = f32[1024,1024]{1,0} parameter(2)
  %y = f32[1024,1024]{1,0} parameter(3)
  %gemm_fusion_dot.1 = bf16[1024,1024]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_computation
  %loop_add_fusion = f32[1024,1024]{1,0} fusion(%x, %y), kind=kLoop, calls=%add_computation
  ROOT %t = (bf16[1024,1024]{1,0}, f32[1024,1024]{1,0}) tuple(%gemm_fusion_dot.1, %loop_add_fusion)
}
"""

# A loop of 4 trips over a stacked f32 weight (4 x 256 x 256): each trip slices out one layer's matrix, multiplies
# x (f32, TF32 at default precision) by it, and writes the result into row i of a (4 x 128 x 256) buffer in place.
LOOP = """HloModule loop

%slice_computation (w: f32[4,256,256], i0: s32[]) -> f32[256,256] {
  %w = f32[4,256,256]{2,1,0} parameter(0)
  %i0 = s32[] parameter(1)
  %z0 = s32[] constant(0)
  %ds = f32[1,256,256]{2,1,0} dynamic-slice(%w, %i0, %z0, %z0), dynamic_slice_sizes={1,256,256}
  ROOT %bc = f32[256,256]{1,0} bitcast(%ds)
}

%mm_computation (x: f32[128,256], m: f32[256,256]) -> f32[128,256] {
  %x = f32[128,256]{1,0} parameter(0)
  %m = f32[256,256]{1,0} parameter(1)
  ROOT %dot.2 = f32[128,256]{1,0} dot(%x, %m), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%dus_computation (buf: f32[4,128,256], upd: f32[128,256], i1: s32[]) -> f32[4,128,256] {
  %buf = f32[4,128,256]{2,1,0} parameter(0)
  %upd = f32[128,256]{1,0} parameter(1)
  %i1 = s32[] parameter(2)
  %z1 = s32[] constant(0)
  %up3 = f32[1,128,256]{2,1,0} bitcast(%upd)
  ROOT %dus = f32[4,128,256]{2,1,0} dynamic-update-slice(%buf, %up3, %i1, %z1, %z1)
}

%body (arg: {state}) -> {state} {
  %arg = {state} parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %wt = f32[4,256,256]{2,1,0} get-tuple-element(%arg), index=1
  %xt = f32[128,256]{1,0} get-tuple-element(%arg), index=2
  %bt = f32[4,128,256]{2,1,0} get-tuple-element(%arg), index=3
  %slice_fusion = f32[256,256]{1,0} fusion(%wt, %i), kind=kLoop, calls=%slice_computation
  %gemm_fusion_dot.2 = f32[128,256]{1,0} fusion(%xt, %slice_fusion), kind=kCustom, calls=%mm_computation
  %dus_fusion = f32[4,128,256]{2,1,0} fusion(%bt, %gemm_fusion_dot.2, %i), kind=kLoop, calls=%dus_computation
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %tt = {state} tuple(%next, %wt, %xt, %dus_fusion)
}

%cond (carg: {state}) -> pred[] {
  %carg = {state} parameter(0)
  %ci = s32[] get-tuple-element(%carg), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%ci, %n), direction=LT
}

ENTRY %main (w0: f32[4,256,256], x0: f32[128,256], b0: f32[4,128,256]) -> {state} {
  %w0 = f32[4,256,256]{2,1,0} parameter(0)
  %x0 = f32[128,256]{1,0} parameter(1)
  %b0 = f32[4,128,256]{2,1,0} parameter(2)
  %zero = s32[] constant(0)
  %init = {state} tuple(%zero, %w0, %x0, %b0)
  ROOT %while.1 = {state} while(%init), condition=%cond, body=%body, {trips}
}
""".replace("{state}", "(s32[], f32[4,256,256]{2,1,0}, f32[128,256]{1,0}, f32[4,128,256]{2,1,0})").replace(
    "{trips}", 'backend_config={"known_trip_count":{"n":"4"}}')

# A GEMM that autotuning on a card gave to cuBLAS: a custom call with its workspace, dimension numbers in its config.
CUBLAS = """HloModule cublas

ENTRY %main (a: bf16[512,1024], b: bf16[1024,256]) -> bf16[512,256] {
  %a = bf16[512,1024]{1,0} parameter(0)
  %b = bf16[1024,256]{1,0} parameter(1)
  %gemm = (bf16[512,256]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", {config}
  ROOT %out = bf16[512,256]{1,0} get-tuple-element(%gemm), index=0
}
""".replace("{config}", 'backend_config={"gemm_backend_config":{"alpha_real":1,"dot_dimension_numbers":{'
            '"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],'
            '"rhs_batch_dimensions":[]}}}')


def _estimate(hlo):
    return roofline.estimate(hlo, PEAKS_ROUND, BANDWIDTH, launch_s=LAUNCH)


def test_one_matmul_and_one_elementwise_op_take_the_hand_computed_times():
    est = _estimate(HAND)
    flops = 2.0 * 1024 * 1024 * 4096
    gemm_bytes = (1024 * 4096 + 4096 * 1024 + 1024 * 1024) * 2
    matmul_s = max(flops / 100e12, gemm_bytes / BANDWIDTH)  # compute-bound: 85.9 us against 18.9 us
    add_s = 3 * 1024 * 1024 * 4 / BANDWIDTH  # two operands read, the sum written; no FLOPs counted
    assert matmul_s == flops / 100e12
    assert est["classes"]["matmul"]["time_s"] == pytest.approx(matmul_s + LAUNCH, rel=1e-12)
    assert est["classes"]["rest"]["time_s"] == pytest.approx(add_s + LAUNCH, rel=1e-12)
    assert est["step_s"] == pytest.approx(matmul_s + add_s + 2 * LAUNCH, rel=1e-12)
    assert est["kernels"] == 2 and est["compute_bound"] == 1 and est["kind"] == "estimate"
    assert est["bytes"] == gemm_bytes + 3 * 1024 * 1024 * 4
    assert [(k["name"], k["step_s"]) for k in est["top_kernels"]] == [
        ("gemm_fusion_dot.1", pytest.approx(matmul_s + LAUNCH)), ("loop_add_fusion", pytest.approx(add_s + LAUNCH))]


def test_a_loop_runs_its_kernels_per_trip_moving_only_the_slices_it_touches():
    found = {k["name"]: k for k in roofline.kernels(LOOP, PEAKS_ROUND)}
    assert {name: k["times"] for name, k in found.items()} == {
        "slice_fusion": 4, "gemm_fusion_dot.2": 4, "dus_fusion": 4, "next": 4, "lt": 4}
    # One layer's matrix read out of the stack (and written), not the stack; plus the s32 index.
    assert found["slice_fusion"]["bytes"] == 2 * 256 * 256 * 4 + 4
    gemm_bytes = (128 * 256 + 256 * 256 + 128 * 256) * 4
    assert found["gemm_fusion_dot.2"]["bytes"] == gemm_bytes
    # The update read and written into the buffer in place, not the whole buffer; plus the index.
    assert found["dus_fusion"]["bytes"] == 2 * 128 * 256 * 4 + 4
    flops = 2.0 * 128 * 256 * 256
    assert found["gemm_fusion_dot.2"]["flops"] == flops
    # f32 operands at default precision run as TF32: 50 TFLOP/s here.
    assert found["gemm_fusion_dot.2"]["compute_s"] == flops / 50e12
    est = _estimate(LOOP)
    assert est["kernels"] == 5 * 4 and est["classes"]["matmul"]["flops"] == 4 * flops
    assert est["classes"]["matmul"]["work_s"] == pytest.approx(4 * max(flops / 50e12, gemm_bytes / BANDWIDTH))


def test_a_cublas_gemm_call_is_a_matmul_that_does_not_move_its_workspace():
    (gemm,) = roofline.kernels(CUBLAS, PEAKS_ROUND)
    flops = 2.0 * 512 * 256 * 1024
    assert gemm["class"] == "matmul" and gemm["flops"] == flops and gemm["compute_s"] == flops / 100e12
    assert gemm["bytes"] == (512 * 1024 + 1024 * 256 + 512 * 256) * 2
    assert census(CUBLAS)["gemms"] == 1


@pytest.mark.parametrize("hlo", [HAND, LOOP, CUBLAS, TPU_LOOP, PADDED],
                         ids=["hand", "loop", "cublas", "tpu-loop", "padded"])
def test_the_kernels_flops_sum_to_the_census(hlo):
    found = census(hlo)
    est = _estimate(hlo)
    assert est["flops"] == found["dot_flops"] + found["attention_flops"] > 0
    assert est["kernels"] == found["kernels"]


def test_track_figures_of_a_token_and_a_loss_track():
    est = {"step_s": 0.1, "classes": {c: {"time_s": t} for c, t in
                                      zip(roofline.CLASSES, (0.05, 0.01, 0.03, 0.01), strict=True)}}
    eight = get_track("8M")
    figures = roofline.track_figures(est, eight, get_model_config(eight.model), GPUS["rtx4090"].name)
    assert figures["tokens_per_s"] == pytest.approx(8 * 2048 / 0.1)
    assert figures["steps"] == 489 and figures["active_s"] == pytest.approx(48.9)
    per_token = report.flops_per_token(get_model_config("blueberry-88m"), 2048)
    assert figures["mfu"] == pytest.approx(8 * 2048 / 0.1 * per_token / 165e12)
    assert [c for c, _ in figures["top_classes"]] == ["matmul", "muon", "attention"]
    loss = get_track("4.5loss")
    figures = roofline.track_figures(est, loss, get_model_config(loss.model), "a card of one's own")
    assert figures["steps"] == 743 and figures["steps_from"] == "upstream's record" and figures["mfu"] is None


def test_every_listed_card_has_peaks_found_by_the_name_it_reports():
    assert set(PEAKS) == set(GPUS)
    for key, card in GPUS.items():
        assert card_named(card.name) == (card, PEAKS[key])
        assert PEAKS[key].bf16 > PEAKS[key].tf32 >= PEAKS[key].fp32
    assert card_named("TPU v5 lite") is None


def test_the_report_says_estimate_and_sets_a_4090_beside_upstreams_record():
    track = get_track("8M")
    est = roofline.estimate(HAND, PEAKS["rtx4090"], GPUS["rtx4090"].bandwidth_bytes_s)
    figures = roofline.track_figures(est, track, get_model_config(track.model), GPUS["rtx4090"].name)
    text = "\n".join(roofline.render(est, figures, GPUS["rtx4090"].name, "8M"))
    assert "an estimate (roofline of the compiled step, not a measurement)" in text
    ratio = figures["active_s"] / 86.178
    assert f"upstream's RTX 4090 record: 86.2 s for 8,011,776 tokens (92,968 tokens/s); estimate / record {ratio:.2f}" \
        in text
    assert "| `gemm_fusion_dot.1` | matmul | 1 | 8.59e+09 | 18.9 |" in text
    assert "upstream" not in "\n".join(roofline.render(est, figures, GPUS["h100"].name, "8M"))

