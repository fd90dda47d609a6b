"""The PyTorch engine of the lm-eval model (jax_nano/evaluate/lm_eval_model.py holds the request handling both
frameworks share): the same token log-probabilities and greedy generation from a `MinimalLLM` as
jax_nano/lm_eval_engine.py gives from a `GPT`, so the two frameworks can be compared item by item."""

import numpy as np
import torch

from torch_ref.model import MinimalLLM

# Positions run through the model at once: (positions x vocab) float32 logits stay near 800 MB for the real vocab.
POSITIONS_PER_CALL = 4096


class TorchEngine:
    framework = "torch"
    compile_s = 0.0  # eager: nothing is compiled

    def __init__(self, model: MinimalLLM):
        self.cfg = model.cfg
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self._generator = None

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"cuda: {torch.cuda.get_device_name(self.device)}"
        return self.device.type

    @torch.no_grad()
    def token_scores(self, inputs_BT: np.ndarray, targets_BT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log p(target | inputs up to that position) and whether the target is the argmax, per position."""
        B, T = inputs_BT.shape
        rows = max(1, POSITIONS_PER_CALL // T)
        logp, hit = [], []
        for start in range(0, B, rows):
            ids = torch.from_numpy(inputs_BT[start:start + rows]).long().to(self.device)
            targets = torch.from_numpy(targets_BT[start:start + rows]).long().to(self.device)
            logits = self.model(ids).float()
            logp.append((logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)).cpu())
            hit.append((logits.argmax(-1) == targets).cpu())
        return torch.cat(logp).numpy(), torch.cat(hit).numpy()

    def generate(self, prompts: list[list[int]], *, batch_size: int, max_len: int, **sampling) -> list[list[int]]:
        from torch_ref.generate import Generator

        if self._generator is None:
            self._generator = Generator(self.model, batch_size=batch_size, max_len=max_len)
        return self._generator.generate(prompts, **sampling)
