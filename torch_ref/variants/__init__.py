"""The PyTorch side of the variants (configs/variants.py): one module per variant, mirrored in jax_nano/variants/."""
