"""The census reads a TPU module as XLA's own cost analysis would: matmuls written as convolutions (a batch
axis disguised as a dilated window, padding) and loops whose trip count only their condition tells."""

from jax_nano.plan.census import census

# One layer-stacked batched matmul, (22, 8, 32) x (22, 32, 16), as libtpu writes it: the layer axis is a window
# that meets one real input element per output position. Run by a loop of 5 trips with no trip annotation.
TPU_LOOP = """HloModule loop

%fused_matmul (param_0: f32[22,8,32], param_1: f32[22,32,16]) -> f32[22,8,16] {
  %param_0 = f32[22,8,32]{2,1,0} parameter(0)
  %param_1 = f32[22,32,16]{2,1,0} parameter(1)
  ROOT %convolution.1 = f32[22,8,16]{2,1,0} convolution(%param_0, %param_1), {layer_window}
}

%body (arg: (s32[], f32[22,8,32], f32[22,32,16])) -> (s32[], f32[22,8,32], f32[22,32,16]) {
  %arg = (s32[], f32[22,8,32]{2,1,0}, f32[22,32,16]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %x = f32[22,8,32]{2,1,0} get-tuple-element(%arg), index=1
  %w = f32[22,32,16]{2,1,0} get-tuple-element(%arg), index=2
  %fusion.1 = f32[22,8,16]{2,1,0} fusion(%x, %w), kind=kOutput, calls=%fused_matmul
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[22,8,32]{2,1,0}, f32[22,32,16]{2,1,0}) tuple(%next, %x, %w)
}

%cond (arg: (s32[], f32[22,8,32], f32[22,32,16])) -> pred[] {
  %arg = (s32[], f32[22,8,32]{2,1,0}, f32[22,32,16]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[22,8,32], w: f32[22,32,16]) -> (s32[], f32[22,8,32], f32[22,32,16]) {
  %x = f32[22,8,32]{2,1,0} parameter(0)
  %w = f32[22,32,16]{2,1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[22,8,32]{2,1,0}, f32[22,32,16]{2,1,0}) tuple(%zero, %x, %w)
  ROOT %while.1 = (s32[], f32[22,8,32]{2,1,0}, f32[22,32,16]{2,1,0}) while(%init), condition=%cond, body=%body
}
""".replace("{layer_window}", "window={size=22 stride=21 lhs_dilate=22}, dim_labels=0bf_0io->0bf")

# A padded window: of 4 outputs x 3 taps, the 2 taps that fall on the padding do no work.
PADDED = """HloModule padded

ENTRY %main (x: f32[2,4,8], w: f32[3,8,6]) -> f32[2,4,6] {
  %x = f32[2,4,8]{2,1,0} parameter(0)
  %w = f32[3,8,6]{2,1,0} parameter(1)
  ROOT %convolution.2 = f32[2,4,6]{2,1,0} convolution(%x, %w), window={size=3 pad=1_1}, dim_labels=b0f_0io->b0f
}
"""


def test_a_disguised_batch_matmul_in_an_unannotated_loop_counts_each_layer_once_per_trip():
    found = census(TPU_LOOP)
    assert found["dot_flops"] == 5 * 2.0 * 22 * 8 * 16 * 32
    assert found["gemms"] == 5


def test_window_taps_on_padding_do_no_work():
    assert census(PADDED)["dot_flops"] == 2.0 * (2 * 6) * 8 * (4 * 3 - 2)
