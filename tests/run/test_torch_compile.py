"""The PyTorch trainer under torch.compile on the CPU: the same losses as eager, no graph break, nothing compiled
after the warm-up, and the fall-back to eager where Inductor has no C++ compiler."""

import numpy as np
import pytest
import torch

from configs.model import get_model_config
from jax_nano.core.trainer import TrainerError
from tests import toy
from torch_ref import compiles
from torch_ref.train import TorchTrainer

STEPS = 3


@pytest.fixture(scope="module")
def compiled_and_eager():
    """One warm-up step and STEPS timed steps of each form on the same batches. The model is the tiniest with every
    path: one layer and every Muon matrix 32 x 32, so Inductor compiles one orthogonalization, not one per shape."""
    cfg = get_model_config("tiny").replace(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=32, mlp="relu2")
    track = toy.toy_track("unused", steps=STEPS + 1).replace(batch_size=2, seq_len=16)
    batches = [np.random.default_rng(k).integers(0, cfg.vocab_size, (2, 16)) for k in range(STEPS + 1)]
    out = {}
    for mode in ("off", "on"):
        trainer = TorchTrainer(track.replace(torch_compile=mode), cfg)
        trainer.setup(batches[:1], None)
        after_setup = compiles.counters()
        losses = [trainer.read(trainer.step(ids_BT))[0] for ids_BT in batches[1:]]
        out[mode] = {"losses": losses, "after_setup": after_setup, "after_steps": compiles.counters(),
                     "facts": trainer.facts(), "compiles": trainer.compiles()}
    return out


def test_compiled_steps_equal_eager_with_no_graph_break_and_no_recompile(compiled_and_eager):
    eager, compiled = compiled_and_eager["off"], compiled_and_eager["on"]
    assert eager["facts"]["compile"] == "eager (--torch-compile off)"
    assert compiled["facts"]["compile"].startswith("torch.compile (Inductor, CPU")
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=2e-5, atol=0)
    # The model's forward and backward and the orthogonalization: all compiled during setup's warm-up step.
    assert compiled["after_setup"]["graphs"] >= 2
    assert compiled["after_steps"] == compiled["after_setup"], "torch.compile compiled again after the warm-up"
    assert compiled["after_steps"]["graph_breaks"] == 0 and compiled["facts"]["graph_breaks"] == 0
    assert isinstance(compiled["losses"][0], float) and compiled["compiles"] == compiled["after_steps"]["graphs"]


def test_auto_falls_back_to_eager_without_a_compiler_and_on_refuses():
    cpu = torch.device("cpu")
    none = compiles.decide("auto", cpu, find_compiler=lambda: None)
    assert not none.compile and none.note == ("eager: torch.compile fell back (no C++ compiler for Inductor's CPU "
                                              "backend; set CXX or install g++)")
    assert compiles.decide("auto", cpu, find_compiler=lambda: "g++").compile
    assert compiles.decide("auto", torch.device("cuda"), find_compiler=lambda: None).compile
    assert not compiles.decide("off", cpu).compile
    with pytest.raises(TrainerError, match="--torch-compile on: Inductor's CPU backend needs a C\\+\\+ compiler"):
        compiles.decide("on", cpu, find_compiler=lambda: None)
    with pytest.raises(TrainerError, match="unknown --torch-compile 'fast'"):
        compiles.decide("fast", cpu)
