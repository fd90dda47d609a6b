"""Where JAX and PyTorch meet: weights converted between them, read from PyTorch files and written to them."""
