"""How far `optax.contrib.muon` is from jax-nano's upstream-matching optimizer, tensor by tensor.

Both get the same parameters and the same two gradients; the table shows the relative error of optax's second
update against ours (the first of ours is zero: the schedule's step-0 factor). optax differs by design (SPEC 2):
bias-corrected Nesterov, NAdam on the Adam side, classic Newton-Schulz coefficients without the 1.01 safety
factor, float32 iteration, no gradient clipping; so the numbers are what a user gives up by swapping it in.

    python scripts/compare_optax_muon.py [--preset tiny]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from optax.contrib import MuonDimensionNumbers
from optax.contrib import muon as optax_muon

from configs.model import get_model_config
from configs.optim import OptimConfig
from jax_nano import optim as jopt
from jax_nano.model import GPT


def compare(preset: str = "tiny", n_layers: int | None = None, seed: int = 0) -> dict:
    """{param path: relative error of optax's update against ours}, on random parameters and gradients."""
    cfg = get_model_config(preset, **({"n_layers": n_layers} if n_layers else {}))
    shapes = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
    leaves, treedef = jax.tree.flatten(shapes)

    def random_tree(key, scale):
        keys = jax.random.split(key, len(leaves))
        return treedef.unflatten([scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])

    key_params, *key_grads = jax.random.split(jax.random.key(seed), 3)
    params = random_tree(key_params, 0.02)
    grads = [random_tree(k, 1e-3) for k in key_grads]

    config = OptimConfig()
    labels = jopt.param_labels(params)
    # Give optax the same split: stacked (L, in, out) kernels to Muon, everything else to its Adam branch.
    dims = jax.tree.map(lambda lab: MuonDimensionNumbers(reduction_axis=1, output_axis=2) if lab == "muon" else None,
                        labels)
    theirs_opt = optax_muon(config.muon_lr, beta=config.muon_momentum, adam_learning_rate=config.adamw_lr,
                            adam_weight_decay=config.weight_decay, muon_weight_dimension_numbers=dims)
    ours_opt = jopt.make_optimizer(config, total_steps=10)

    def second_update(opt):
        state = opt.init(params)
        _, state = opt.update(grads[0], state, params)
        updates, _ = opt.update(grads[1], state, params)
        return updates

    ours, theirs = second_update(ours_opt), second_update(theirs_opt)
    flat_ours = jax.tree_util.tree_flatten_with_path(ours)[0]
    flat_theirs = jax.tree.leaves(theirs)
    return {
        jax.tree_util.keystr(path, simple=True, separator="."):
            float(jnp.linalg.norm((b - a).ravel()) / jnp.linalg.norm(a.ravel()))
        for (path, a), b in zip(flat_ours, flat_theirs)
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--n-layers", type=int, default=None, help="override the preset's depth (quicker on CPU)")
    args = parser.parse_args()
    errors = compare(args.preset, args.n_layers)
    width = max(map(len, errors))
    print(f"{'parameter':<{width}}  rel. error of optax.contrib.muon update vs ours")
    for name, err in errors.items():
        print(f"{name:<{width}}  {err:.3e}")
    print(f"{'median':<{width}}  {np.median(list(errors.values())):.3e}")


if __name__ == "__main__":
    main()
