"""The variants (configs/variants.py) in both frameworks: the same logits, gradients and optimizer updates, and
Drop-Muon's masks drawn at the asked rate, reproducibly."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs.model import get_model_config
from configs.optim import OptimConfig
from jax_nano import model as jm
from jax_nano import optim as jopt
from jax_nano.interop.convert import jax_to_torch, torch_to_jax
from jax_nano.variants import muon_drop as jdrop
from parity_tests.compare import assert_all_close, max_abs_error
from parity_tests.test_model_parity import gradients, random_ids, twin_models
from parity_tests.test_optim_parity import module_from, random_torch_tree, to_numpy
from torch_ref import model as tm
from torch_ref import optim as topt
from torch_ref.variants import muon_drop as tdrop

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# unet-skips


def test_unet_logits_and_loss_match_and_differ_from_the_baseline():
    """5 layers: blocks 2 and 3 get blocks 1 and 0 added, in that order; the last gets nothing."""
    cfg = get_model_config("tiny", n_layers=5, unet_skips=True)
    jax_model, torch_model = twin_models(cfg)
    ids = random_ids(cfg, 2, 32)
    with torch.no_grad():
        logits_torch = torch_model(torch.tensor(ids))
        loss_torch = tm.loss_fn(torch_model, torch.tensor(ids)).item()
    logits_jax = jax_model(jnp.asarray(ids))
    assert max_abs_error(logits_jax, logits_torch) <= 1e-5
    assert abs(float(jm.loss_fn(jax_model, jnp.asarray(ids))) - loss_torch) <= 1e-5
    # The same weights without the skips compute another function.
    plain, _ = twin_models(cfg.replace(unet_skips=False))
    assert max_abs_error(plain(jnp.asarray(ids)), logits_torch) > 1e-2


@pytest.mark.long  # JAX against itself; the scanned stack's parity with PyTorch is in the quick suite
def test_unet_unrolled_stack_is_the_scanned_one():
    cfg = get_model_config("tiny", n_layers=5, unet_skips=True)
    scanned, _ = twin_models(cfg)
    unrolled, _ = twin_models(cfg.replace(unroll_layers=True))
    ids = jnp.asarray(random_ids(cfg, 2, 16))
    assert max_abs_error(scanned(ids), unrolled(ids)) <= 1e-5


def test_unet_gradients_match_for_every_parameter():
    cfg = get_model_config("tiny", n_layers=4, unet_skips=True)
    grads_jax, grads_torch = gradients(*twin_models(cfg), random_ids(cfg, 2, 32))
    assert_all_close(grads_jax, grads_torch, 1e-4, what="unet-skips gradient")


def test_unet_cached_forward_is_the_full_forward():
    """Generation's KV-cached path keeps the skips: a prompt run through it gives the full forward's logits."""
    n_layers = 5
    cfg = get_model_config("tiny", n_layers=n_layers, unet_skips=True)
    jax_model, torch_model = twin_models(cfg)
    B, T = 2, 12
    ids = random_ids(cfg, B, T)
    pos = np.broadcast_to(np.arange(T), (B, T))
    mask = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T))
    zeros = jnp.zeros((n_layers, B, T, cfg.n_kv_heads, cfg.head_dim))
    h, _, _ = jax_model.hidden_cached(jnp.asarray(ids), jnp.asarray(pos), zeros, zeros, 0, jnp.asarray(mask))
    assert max_abs_error(jax_model.logits(h), jax_model(jnp.asarray(ids))) <= 1e-5
    cache = torch.zeros(n_layers, B, cfg.n_kv_heads, T, cfg.head_dim)
    with torch.no_grad():
        cached = torch_model.forward_cached(torch.tensor(ids), torch.tensor(pos), cache, cache.clone(), 0,
                                            torch.tensor(mask))
        assert max_abs_error(cached, torch_model(torch.tensor(ids))) <= 1e-5


# ---------------------------------------------------------------------------------------------------------------
# muon-drop

P, SEED = 0.3, 7


def jax_masks_by_torch_name(cfg, params, count: int) -> dict:
    """The masks the JAX optimizer draws at step `count`, in PyTorch's names and layout (ones where no Muon)."""
    labels = jopt.param_labels(params)
    tree = jax.tree_util.tree_map_with_path(
        lambda path, x, label: jdrop.keep_mask(SEED, count, jdrop.leaf_name(path), x.shape, P).astype(jnp.float32)
        if label == "muon" else jnp.ones(x.shape, jnp.float32), params, labels)
    return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in jax_to_torch(tree, cfg).items()}


def test_muon_drop_with_the_same_masks_gives_the_same_update():
    cfg = get_model_config("tiny")
    config = OptimConfig(ortho_dtype="float32", muon_drop=P)
    params_t = random_torch_tree(cfg, seed=0, scale=0.02)
    grads_t = [random_torch_tree(cfg, seed=1 + s, scale=1e-3) for s in range(2)]
    params_j = jax.tree.map(jnp.asarray, torch_to_jax(params_t, cfg))

    model = module_from(params_t)
    muon_names = [n for n, p in model.named_parameters() if topt.param_label(n, p) == "muon"]
    drawn = {count: jax_masks_by_torch_name(cfg, params_j, count) for count in range(2)}
    optimizers, schedulers = topt.make_optimizer(
        config, model, 10, masks=lambda step, index, like: drawn[step][muon_names[index]].to(like.dtype))
    named = dict(model.named_parameters())
    opt = jopt.make_optimizer(config, 10, seed=SEED)
    state = opt.init(params_j)
    update = jax.jit(opt.update)
    for grads in grads_t:
        for name, p in named.items():
            p.grad = grads[name].clone()
        topt.step(model, optimizers, schedulers, config.grad_clip)
        updates, state = update(jax.tree.map(jnp.asarray, torch_to_jax(grads, cfg)), state, params_j)
        params_j = optax.apply_updates(params_j, updates)
    ours = {k: to_numpy(v) for k, v in jax_to_torch(params_j, cfg).items() if k in muon_names}
    ref = {k: to_numpy(named[k]) for k in muon_names}
    assert_all_close(ours, ref, 1e-5, what="muon-drop parameter after 2 steps")
    # Step 0 moves nothing (factor 0); at step 1 exactly the dropped entries stay where they were.
    for name in muon_names:
        still = ref[name] == to_numpy(params_t[name])
        assert np.array_equal(still, drawn[1][name].numpy() == 0), name


def test_muon_drop_keeps_entries_at_the_asked_rate_in_both_frameworks():
    shape, p = (4, 256, 256), 0.1
    n = math.prod(shape)
    sigma = math.sqrt(n * p * (1 - p))
    kept_jax = int(jdrop.keep_mask(SEED, 3, "w", shape, p).sum())
    kept_torch = int(tdrop.Masks(SEED, p)(3, 0, torch.empty(shape)).sum())
    for kept in (kept_jax, kept_torch):
        assert abs(kept - n * (1 - p)) < 5 * sigma, (kept, n * (1 - p))
    # Each mask is its own draw: another step, parameter or seed gives other entries.
    base = np.asarray(jdrop.keep_mask(SEED, 3, "w", shape, p))
    for other in (jdrop.keep_mask(SEED, 4, "w", shape, p), jdrop.keep_mask(SEED, 3, "v", shape, p),
                  jdrop.keep_mask(SEED + 1, 3, "w", shape, p)):
        assert 0.1 < np.mean(base != np.asarray(other)) < 0.3
    masks = tdrop.Masks(SEED, p)
    assert not torch.equal(masks(3, 0, torch.empty(shape)), masks(4, 0, torch.empty(shape)))


MASK_DIGESTS = """
import hashlib, json, torch
from jax_nano.variants import muon_drop as jdrop
from torch_ref.variants import muon_drop as tdrop
j = bytes(__import__("numpy").asarray(jdrop.keep_mask(7, 5, "transformer_blocks/w", (64, 96), 0.3)))
t = tdrop.Masks(7, 0.3)(5, 2, torch.empty(64, 96)).numpy().tobytes()
print(json.dumps([hashlib.sha256(j).hexdigest(), hashlib.sha256(t).hexdigest()]))
"""


def test_muon_drop_masks_are_the_same_in_another_process():
    """The masks depend on nothing but (seed, step, parameter): not on the process's hash seed or history."""
    import hashlib

    out = subprocess.run([sys.executable, "-c", MASK_DIGESTS], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123", "JAX_PLATFORMS": "cpu",
                              "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-1500:]
    here = [hashlib.sha256(bytes(np.asarray(jdrop.keep_mask(7, 5, "transformer_blocks/w", (64, 96), 0.3))))
            .hexdigest(),
            hashlib.sha256(tdrop.Masks(7, 0.3)(5, 2, torch.empty(64, 96)).numpy().tobytes()).hexdigest()]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_torch_muon_drop_resumes_with_the_masks_it_would_have_drawn():
    """The Muon step count that picks the masks is optimizer state: a checkpoint's state_dict carries it."""
    cfg = get_model_config("tiny")
    config = OptimConfig(ortho_dtype="float32", muon_drop=P)
    params_t = random_torch_tree(cfg, seed=0, scale=0.02)
    grads_t = [random_torch_tree(cfg, seed=1 + s, scale=1e-3) for s in range(3)]

    def train(steps, model, optimizers, schedulers):
        for grads in steps:
            for name, p in model.named_parameters():
                p.grad = grads[name].clone()
            topt.step(model, optimizers, schedulers, config.grad_clip)

    whole = module_from(params_t)
    train(grads_t, whole, *topt.make_optimizer(config, whole, 10, seed=SEED))
    split = module_from(params_t)
    optimizers, schedulers = topt.make_optimizer(config, split, 10, seed=SEED)
    train(grads_t[:2], split, optimizers, schedulers)
    saved = [o.state_dict() for o in optimizers + schedulers]
    optimizers, schedulers = topt.make_optimizer(config, split, 10, seed=SEED)
    for obj, state in zip(optimizers + schedulers, saved):
        obj.load_state_dict(state)
    train(grads_t[2:], split, optimizers, schedulers)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), split.parameters()))
    other = module_from(params_t)
    train(grads_t, other, *topt.make_optimizer(config, other, 10, seed=SEED + 1))
    assert not all(torch.equal(a, b) for a, b in zip(whole.parameters(), other.parameters()))
