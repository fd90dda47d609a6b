"""Facts only a GPU compile shows, checked on a CPU: the tiny model's steps compiled for an H100 (deviceless).

Tests that compile need JAX's CUDA compiler (`pip install --no-deps jax-cuda12-plugin jax-cuda12-pjrt` of the
installed JAX's version) or libtpu (the version JAX pins): README's second test command installs both. They are
skipped without them; the one-line errors run everywhere.
"""

import json
import os
from pathlib import Path

# The card is compiled for, never used: JAX must not start a GPU backend (on a machine without a GPU the CUDA
# plugin is dropped when it tries), as scripts/plan.py arranges. JAX reads this when it is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from configs.model import get_model_config  # noqa: E402
from configs.tracks import get_track  # noqa: E402
from jax_nano.core.cli import run_main  # noqa: E402
from jax_nano.plan import deviceless  # noqa: E402
from jax_nano.plan.targets import GPUS, TPUS  # noqa: E402
from tests.script_modules import load_script

needs_plugin = pytest.mark.skipif(not deviceless.has_cuda_plugin(),
                                  reason="JAX's CUDA compiler is not installed (README, Tests)")
needs_libtpu = pytest.mark.skipif(not deviceless.has_libtpu(), reason="libtpu is not installed (README, Tests)")
# The tiny model on a loss track (the step that keeps its input for the rewind), bf16 compute so that `auto`
# picks cuDNN attention on a GPU.
TRACK = get_track("4.5loss").replace(model="tiny", batch_size=2, seq_len=128)


def plan_script():
    return load_script("plan")


def test_unknown_card_is_one_line(capsys):
    assert run_main(plan_script().main, ["--gpu", "rtx5090", "--track", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown card 'rtx5090'") and "--target-file" in err and "\n" not in err


def test_missing_cuda_compiler_says_how_to_install(monkeypatch):
    monkeypatch.setattr(deviceless, "PLUGINS", ("jax_plugins.no_such_plugin",))
    with pytest.raises(deviceless.PluginError, match=r"pip install --no-deps jax-cuda12-plugin==\S+ jax-cuda12-pjrt"):
        deviceless.card_mesh(GPUS["h100"])


@pytest.fixture(scope="module")
def compiled():
    return deviceless.compile_steps(TRACK, get_model_config("tiny"), GPUS["h100"])


@pytest.fixture(scope="module")
def xla_attention():
    return deviceless.compile_steps(TRACK.replace(attention="xla"), get_model_config("tiny"), GPUS["h100"])


@pytest.fixture(scope="module")
def on_a_tpu_chip():
    from jax_nano.plan.planner import assess

    return assess(TRACK, get_model_config("tiny"), TPUS["v5e-1"])


@needs_plugin
def test_loss_track_step_has_no_conditional_and_no_host_callback(compiled):
    from jax_nano.plan.census import census

    hlo = compiled.train.as_text()
    found = census(hlo)
    assert found["conditionals"] == 0 and found["host_callbacks"] == 0
    assert " conditional(" not in hlo and "callback" not in hlo.lower()
    assert found["kernels"] > found["gemms"] > 0


@needs_plugin
def test_cudnn_attention_is_in_the_step_when_asked(compiled, xla_attention):
    from jax_nano.plan.census import census

    calls = census(compiled.train.as_text())["custom_calls"]
    layers = get_model_config("tiny").n_layers
    assert calls.get("__cudnn$fmhaSoftmax") == layers and calls.get("__cudnn$fmhaSoftmaxBackward") == layers
    assert not census(xla_attention.train.as_text())["cudnn_attention"]


@needs_plugin
def test_eval_step_compiles_for_the_card(compiled):
    from jax_nano.plan.census import census

    found = census(compiled.evaluate.as_text())
    assert found["kernels"] > 0 and found["cudnn_attention"]
    assert compiled.evaluate.memory_analysis().argument_size_in_bytes > 0


@needs_plugin
def test_plan_memory_of_a_fixed_config_is_stable(compiled):
    from jax_nano.plan.planner import memory

    first = memory(compiled, TRACK)
    again = memory(deviceless.compile_steps(TRACK, get_model_config("tiny"), GPUS["h100"]), TRACK)
    assert first == again
    # The state is shapes alone: float32 parameters, Muon momenta and AdamW moments of the tiny model.
    assert first["state"] == 1_380_880
    # The compiler's temporaries for this config, as JAX 0.10.2 plans them (a change here is a change of XLA's
    # plan: look before updating the figure).
    assert 1_500_000 <= first["temporaries"] <= 2_500_000
    assert first["peak"] == first["train_step"] + first["kept_beside_step"] + first["batches"]


@needs_plugin
def test_a_run_no_lever_fits_is_one_line_exit_2(tmp_path, capsys):
    card = {**{k: v for k, v in vars(GPUS["h100"]).items()}, "name": "a 2 MiB card", "memory_bytes": 2 << 20}
    (tmp_path / "tiny-card.json").write_text(json.dumps(card))
    code = run_main(plan_script().main, ["--target-file", str(tmp_path / "tiny-card.json"), "--track", "smoke",
                                         "--model", "tiny", "--batch-size", "2", "--seq-len", "64",
                                         "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("error: smoke does not fit a 2 MiB card with any lever tried")
    result = json.loads((tmp_path / "plan-tiny-card-smoke.json").read_text())
    assert result["fits_with"] is None and len(result["levers"]) >= 4
    assert all("skipped" in lever and not lever["fits"] for lever in result["levers"])


@needs_libtpu
def test_the_step_compiles_for_a_tpu_chip_with_xla_attention(on_a_tpu_chip):
    result = on_a_tpu_chip
    assert result["platform"] == "tpu" and result["n_devices"] == 1 and result["attention"] == "xla"
    # The same state as on a GPU, padded: TPU layouts round small arrays up to whole tiles.
    assert 1_380_880 < result["memory"]["state"] < 2 * 1_380_880
    assert result["fits"] and result["pool"] == TPUS["v5e-1"].memory_bytes


@needs_libtpu
@needs_plugin
def test_a_tpu_step_counts_the_matmul_flops_of_the_same_step_on_a_gpu(on_a_tpu_chip, xla_attention):
    """libtpu writes matmuls as convolutions in loops without a trip count: counted right, the work is the
    work the GPU compile does (with the same XLA attention)."""
    from jax_nano.plan.census import census

    gpu = census(xla_attention.train.as_text())
    assert on_a_tpu_chip["kernels"]["gemms"] > 0
    assert on_a_tpu_chip["kernels"]["dot_flops"] == pytest.approx(gpu["dot_flops"], rel=1e-6)


@needs_plugin
def test_the_estimate_of_a_compiled_step_counts_the_census_flops_in_every_class(compiled):
    from jax_nano.plan import roofline
    from jax_nano.plan.census import census
    from jax_nano.plan.peaks import PEAKS

    hlo = compiled.train.as_text()
    found = census(hlo)
    est = roofline.estimate(hlo, PEAKS["h100"], GPUS["h100"].bandwidth_bytes_s)
    assert est["flops"] == found["dot_flops"] + found["attention_flops"] and est["kernels"] == found["kernels"]
    classes = est["classes"]
    assert all(classes[c]["kernels"] > 0 and classes[c]["bytes"] > 0 for c in roofline.CLASSES)
    # cuDNN's attention FLOPs land in the attention class, Polar Express's matmuls in Muon's, none in the rest.
    assert classes["attention"]["flops"] >= found["attention_flops"] > 0
    assert classes["muon"]["flops"] > 0 and classes["rest"]["flops"] == 0
    assert est["step_s"] == pytest.approx(sum(classes[c]["time_s"] for c in roofline.CLASSES))


@needs_plugin
def test_a_plan_for_a_listed_card_carries_its_step_time_labelled_an_estimate(compiled, monkeypatch, tmp_path):
    from jax_nano.plan import planner

    monkeypatch.setattr(planner, "compile_steps", lambda *args, **kwargs: compiled)
    result = planner.plan(TRACK, get_model_config("tiny"), GPUS["h100"], log=lambda *_: None)
    est = result["default"]["estimate"]
    # A loss track runs as many steps as upstream's record took: 6,086,656 tokens at 2 x 128 a step.
    assert est["kind"] == "estimate" and est["track"]["steps"] == 23_776
    assert est["track"]["active_s"] == pytest.approx(23_776 * est["step_s"])
    md = planner.render_markdown(result)
    assert "## Step time: an estimate (roofline of the compiled step, not a measurement)" in md
    assert f"{est['track']['tokens_per_s']:,.0f} tokens/s" in md and "upstream's RTX 4090 record" not in md
    files = planner.write({**result, "target_key": "h100"}, tmp_path)
    assert Path(files["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![the estimate per class](plan-h100-4.5loss.png)" in Path(files["md"]).read_text()
