"""The JAX side of the variants (configs/variants.py): one module per variant, mirrored in torch_ref/variants/."""
