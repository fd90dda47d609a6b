"""The model's levers: the lean RMSNorm, remat policies, unrolled layers, the attention kernel, float32 precision,
the default XLA flags, and the activation-memory accounting of scripts/memory.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.model import ConfigError, get_model_config
from jax_nano import model as jm
from jax_nano import xla_flags
from jax_nano.bench import memory
from jax_nano.core.cli import run_main, track_from_args
from jax_nano.grouped_attention import causal_attention
from jax_nano.interop.convert import jax_to_torch
from jax_nano.train import JaxTrainer, model_config_for
from parity_tests.compare import assert_all_close
from tests.script_modules import load_script
from tests.test_sharding import cli_args, fake_devices
from tests.toy import toy_track

ROOT = Path(__file__).resolve().parent.parent


# -- RMSNorm ------------------------------------------------------------------------------------------------------


def plain_rms_norm(x, scale):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + jm.RMS_EPS)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def test_rms_norm_gives_the_plain_values_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 64)) * 3, jnp.float32)
    scale = jnp.asarray(1 + 0.3 * rng.normal(size=(64,)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=x.shape), jnp.float32)  # a loss that weighs every output differently

    def loss(norm):
        return lambda x, s: jnp.sum(norm(x, s) * probe)

    lean = lambda x, s: jm.rms_norm(x, s, jnp.float32)  # noqa: E731
    assert float(jnp.max(jnp.abs(lean(x, scale) - plain_rms_norm(x, scale)))) <= 1e-6
    got = jax.grad(loss(lean), argnums=(0, 1))(x, scale)
    want = jax.grad(loss(plain_rms_norm), argnums=(0, 1))(x, scale)
    for g, w in zip(got, want):
        assert float(jnp.max(jnp.abs(g - w))) <= 1e-6 * max(1.0, float(jnp.max(jnp.abs(w))))
    # The output dtype is the one cast every matmul reading it shares: the same values as casting afterwards.
    assert jnp.array_equal(jm.rms_norm(x, scale, jnp.bfloat16), plain_rms_norm(x, scale).astype(jnp.bfloat16))


# -- remat policies and unrolled layers: the same function ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_batch():
    cfg = get_model_config("tiny")
    ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 40)))
    return cfg, ids


def loss_and_grads(cfg, ids):
    graphdef, params = nnx.split(jm.GPT(cfg, rngs=nnx.Rngs(0)))
    loss, grads = jax.jit(jax.value_and_grad(lambda p: jm.loss_fn(nnx.merge(graphdef, p), ids)))(params)
    return float(loss), jax_to_torch(grads, cfg)


@pytest.fixture(scope="module")
def reference(tiny_batch):
    cfg, ids = tiny_batch
    return loss_and_grads(cfg, ids)


@pytest.mark.parametrize("remat,unroll", [("dots", False), ("full", False), ("none", True), ("full", True)])
def test_remat_policies_and_unrolled_layers_give_the_same_loss_and_gradients(tiny_batch, reference, remat, unroll):
    cfg, ids = tiny_batch
    loss, grads = loss_and_grads(cfg.replace(remat=remat, unroll_layers=unroll), ids)
    assert abs(loss - reference[0]) <= 1e-6
    assert_all_close(grads, reference[1], 1e-6, what="gradient")


# -- activation memory -------------------------------------------------------------------------------------------


def test_memory_accounting_shrinks_with_full_remat_and_matches_one_layer_traced_alone():
    cfg, batch, seq = get_model_config("tiny"), 2, 48
    none = memory.saved_activations(cfg, batch, seq)
    full = memory.saved_activations(cfg.replace(remat="full"), batch, seq)
    # Full remat keeps each layer's float32 input and nothing else of the layer.
    assert full.per_layer_bytes == batch * seq * cfg.d_model * 4 < none.per_layer_bytes
    assert full.outside_bytes == none.outside_bytes
    # XLA's (B, kv heads, T, group, T) scores are recomputed in the backward pass under every policy: none kept.
    assert none.scores_per_layer == full.scores_per_layer == 0
    alone = memory.layer_sources(cfg, batch, seq)
    assert sum(r.nbytes for r in alone) == none.per_layer_bytes
    assert any("Attention._project" in r.source for r in alone), alone


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_loss_keeps_one_vocab_sized_tensor_for_the_backward_pass_no_wider_than_the_logits(compute):
    """Float32 logits: the softmax is kept (not recomputed); narrower ones: the logits themselves, checkpointed."""
    cfg = get_model_config("tiny", compute_dtype=compute)
    outside = memory.saved_activations(cfg, 2, 40).outside
    vocab_sized = [(r.array, r.source.split(" from ")[0]) for r in outside
                   if r.array.endswith(f"[2,40,{cfg.vocab_size}]")]
    # Narrower: the logits themselves, as jax_nano/dense.py's rows_matmul returns them (its dot reshaped).
    kept = "output of exp" if compute == "float32" else "output of reshape"
    assert vocab_sized == [(f"{compute}[2,40,{cfg.vocab_size}]", kept)], outside


def test_151m_default_keeps_at_most_120_mib_per_layer():
    cfg = get_model_config("blueberry-151m", compute_dtype="bfloat16")
    kept = memory.saved_activations(cfg, 4, 2048)
    assert kept.per_layer_bytes <= 120 * 2**20, kept.per_layer_bytes / 2**20


def test_memory_script_prints_every_policy_and_a_budget(capsys):
    argv = ["--track", "smoke", "--model", "tiny", "--batch-size", "2", "--seq-len", "48", "--card-gib", "1"]
    assert memory.main(argv) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"^  {p} +[\d.]+ MiB", out, re.M) for p in ("none", "dots", "full")), out
    assert "cuDNN's fused attention keeps none" in out and "fits in 1 GiB" in out, out


# -- attention kernel and float32 precision -------------------------------------------------------------------------


def test_attention_choice_and_its_errors():
    cfg = get_model_config("tiny", compute_dtype="bfloat16")
    assert jm.attention_kernel(cfg) == "grouped"  # this is a CPU
    with jm.compiling_for("gpu"):
        assert jm.attention_kernel(cfg) == "cudnn"
        assert jm.attention_kernel(cfg.replace(compute_dtype="float32")) == "xla"
    with jm.compiling_for("tpu"):
        assert jm.attention_kernel(cfg) == "xla"
    assert jm.attention_kernel(cfg.replace(attention="xla")) == "xla"
    with pytest.raises(ConfigError, match="attention 'cudnn' needs an NVIDIA GPU"):
        jm.GPT(cfg.replace(attention="cudnn"), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="needs bf16 compute"):
        get_model_config("tiny", attention="cudnn")
    with pytest.raises(ConfigError, match="unknown attention 'flash'"):
        get_model_config("tiny", attention="flash")
    with pytest.raises(ConfigError, match="unknown remat policy 'some'"):
        get_model_config("tiny", remat="some")


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2)])
def test_grouped_attention_gives_jax_nn_values_and_gradients(heads, kv_heads):
    B, T, H = 2, 24, 16
    q, k, v, dy = (jax.random.normal(key, (B, T, n, H)) for key, n in
                   zip(jax.random.split(jax.random.key(0), 4), (heads, kv_heads, kv_heads, heads)))

    def grads(attend):
        return jax.value_and_grad(lambda q, k, v: jnp.sum(attend(q, k, v) * dy), argnums=(0, 1, 2))(q, k, v)

    with jax.default_matmul_precision("highest"):
        got = grads(lambda q, k, v: causal_attention(q, k, v, 0.25))
        want = grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.25, is_causal=True,
                                                                  implementation="xla"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    # Causal: the first position attends to itself alone.
    np.testing.assert_allclose(causal_attention(q, k, v, 0.25)[:, 0, 0], v[:, 0, 0], rtol=1e-6)


def test_grouped_and_jax_nn_attention_train_the_model_alike(tiny_batch, reference):
    cfg, ids = tiny_batch
    loss, grads = loss_and_grads(cfg.replace(attention="xla"), ids)
    assert abs(loss - reference[0]) <= 1e-6
    assert_all_close(grads, reference[1], 1e-5, what="gradient")


def test_float32_step_lowers_every_matmul_at_highest_precision(toy_store):
    trainer = JaxTrainer(toy_track(toy_store, steps=2), get_model_config("tiny"))
    trainer.setup([], None)
    compiled = trainer._step.as_text()
    dots = len(re.findall(r" dot\(", compiled))
    assert dots > 20 and compiled.count("operand_precision={highest,highest}") == dots
    cfg = get_model_config("tiny", compute_dtype="bfloat16")
    graphdef, params = nnx.split(jm.GPT(cfg, rngs=nnx.Rngs(0)))
    ids = jnp.zeros((2, 16), jnp.int32)
    lowered = jax.jit(jax.grad(lambda p: jm.loss_fn(nnx.merge(graphdef, p), ids))).lower(params).as_text()
    assert "dot_general" in lowered and "HIGHEST" not in lowered


@pytest.mark.parametrize("fused_qkvo", [False, True])
def test_every_matmul_with_a_weight_contracts_one_axis(tiny_batch, fused_qkvo):
    """jax_nano/dense.py merges the positions into one row axis first, so no weight's gradient is a dot over (B, T)
    at once, which XLA's CPU backend ran through a transposed copy of the activation gradient."""
    cfg, ids = tiny_batch
    graphdef, params = nnx.split(jm.GPT(cfg.replace(fused_qkvo=fused_qkvo), rngs=nnx.Rngs(0)))
    lowered = jax.jit(jax.grad(lambda p: jm.loss_fn(nnx.merge(graphdef, p), ids))).lower(params).as_text()
    dots = [line for line in lowered.splitlines() if "stablehlo.dot_general" in line]
    unbatched = [re.search(r"contracting_dims = \[([\d, ]*)\]", line)[1]
                 for line in dots if "batching_dims" not in line]
    # The scanned block's projections (q|k|v and o fused, or four apart; the MLP's) and the tied head: each a
    # forward, an input-gradient and a weight-gradient dot.
    projections = (2 if fused_qkvo else 4) + (3 if cfg.mlp == "swiglu" else 2)
    assert len(unbatched) == 3 * (projections + 1), unbatched
    assert all("," not in dims for dims in unbatched), unbatched


# -- the command line ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["speedrun", "compare"])
def test_lever_flags_reach_the_model_config(script):
    parser = load_script(script).parser()
    track = track_from_args(parser.parse_args(["--unroll-layers", "--remat", "full", "--attention", "xla"]))
    cfg = model_config_for(track, get_model_config(track.model))
    assert (cfg.remat, cfg.unroll_layers, cfg.attention) == ("full", True, "xla")
    assert track_from_args(parser.parse_args([])).unroll_layers is False



@pytest.mark.parametrize("extra,message", [
    (["--remat", "some"], "unknown remat policy 'some'"),
    (["--attention", "flash"], "unknown attention 'flash'"),
    (["--attention", "cudnn"], "needs bf16 compute"),
])
def test_bad_lever_is_a_one_line_error(toy_store, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv(xla_flags.SWITCH, "0")
    monkeypatch.chdir(tmp_path)
    argv = cli_args(toy_store, *extra)[2:]
    assert run_main(load_script("speedrun").main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "results").exists()


def test_unrolled_layers_are_refused_where_fsdp_splits_the_layer_axis(toy_store, tmp_path):
    out = subprocess.run(cli_args(toy_store, "--mesh", "fsdp=2", "--unroll-layers"), cwd=tmp_path,
                         env=fake_devices(2), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--unroll-layers with mesh data=1,fsdp=2" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


# -- XLA flags -----------------------------------------------------------------------------------------------------


def test_default_flags_respect_the_user():
    env = {}
    applied = xla_flags.apply_default_flags(env)
    assert env == applied and env["XLA_FLAGS"] == " ".join(xla_flags.DEFAULT_XLA_FLAGS)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == xla_flags.DEFAULT_ENV["XLA_PYTHON_CLIENT_MEM_FRACTION"]
    mine = {"XLA_FLAGS": "", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
    assert xla_flags.apply_default_flags(dict(mine)) == {}
    off = {xla_flags.SWITCH: "0"}
    assert xla_flags.apply_default_flags(off) == {} and off == {xla_flags.SWITCH: "0"}


@pytest.mark.parametrize("extra,accepted", [((), True), (("--xla_gpu_enable_command_buffer=+NOT_A_COMMAND",), False)])
def test_xla_accepts_every_default_flag(extra, accepted):
    """XLA parses its GPU flags on the CPU too and aborts on one it does not know: the bogus flag proves it."""
    code = (f"import jax_nano.xla_flags as f; f.DEFAULT_XLA_FLAGS += {extra!r}; f.apply_default_flags(); "
            "import jax; jax.numpy.ones(2).block_until_ready()")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.SWITCH)}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode == 0) == accepted, out.stderr[-2000:]
