"""The toy training setup shared by the pytest fixtures (tests/conftest.py) and the fake-device subprocess
(tests/sharding_runner.py), which cannot use fixtures."""

from configs.optim import OptimConfig
from configs.tracks import Track, get_track

VOCAB, SEQ = 512, 64


def toy_track(store: str, steps: int = 30, **changes) -> Track:
    """A float32 token track of the tiny model on the toy store, `steps` steps of 8 x 64 tokens. PyTorch runs it
    eagerly: Inductor's CPU compile takes minutes, and tests/run/test_torch_compile.py tests the compiled path."""
    return get_track("smoke").replace(
        model="tiny", data=store, batch_size=8, seq_len=SEQ, target_tokens=8 * SEQ * steps, precision="float32",
        eval_every=0, eval_batches=2, warmup_steps=1, torch_compile="off",
        optim=OptimConfig(muon_lr=0.02, adamw_lr=0.006, ortho_dtype="float32"),
    ).replace(**changes)
