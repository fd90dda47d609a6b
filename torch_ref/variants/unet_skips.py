"""U-Net skips (variant `unet-skips`), as upstream's commit dcf1f5d has them; the twin of
jax_nano/variants/unet_skips.py.

After block i: if i < L // 2 its output is pushed on a stack; otherwise, while the stack is not empty, the last
pushed output is popped and added to block i's output. Block L//2 + j thus gets block L//2 - 1 - j's output
added; with an odd L the last block gets none. No weights are added.
"""

import torch

from configs.model import ModelConfig


class Skips:
    """The stack of one forward pass: `after(i, x)` is what follows block i."""

    def __init__(self, cfg: ModelConfig):
        self.on, self.half = cfg.unet_skips, cfg.n_layers // 2
        self.pushed: list[torch.Tensor] = []

    def after(self, i: int, x_BTD: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return x_BTD
        if i < self.half:
            self.pushed.append(x_BTD)
        elif self.pushed:
            x_BTD = x_BTD + self.pushed.pop()
        return x_BTD
