"""The Hugging Face export: stock transformers classes compute what jax-nano and torch_ref compute, greedy
generation and the tokenizer agree with the project's, export then import is bit-exact, the model card holds the
run's figures, and bad input is one line."""

import json
import shutil

import numpy as np
import pytest
import torch

from jax_nano.core.checksums import weights_sha256
from jax_nano.core.cli import run_main
from jax_nano.data import tokenizer
from jax_nano.interop.convert import to_torch_model
from jax_nano.interop.hf import FAMILIES
from jax_nano.interop.weights import fit_state_dict, load_model, load_weights, read_state_dict

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")

IDS = np.random.default_rng(0).integers(0, 512, (2, 24))
PROMPTS = ["The history of", "def main():\n    return", "To be, or not to be, 42"]
NEW = 8


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()


def all_exports(hf_run, fresh_exports) -> dict:
    """name -> (GPT, weights, folder) of every exported model, the run's as "small"."""
    summary, runs_dir, _, folder = hf_run
    model, cfg = load_model(run=summary["run"], runs_dir=runs_dir)
    weights, _ = load_weights(run=summary["run"], runs_dir=runs_dir)
    return {"small": (model, weights, folder), **fresh_exports}


@pytest.mark.parametrize("name", ["small", "tiny", "tiny-relu2-fused", "small-relu2"])
def test_transformers_computes_the_logits_of_jax_nano_and_torch_ref(name, hf_run, fresh_exports):
    model, _, folder = all_exports(hf_run, fresh_exports)[name]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [FAMILIES[model.cfg.mlp].architecture] and "auto_map" not in config
    hf = hf_model(folder)
    assert type(hf).__name__ == FAMILIES[model.cfg.mlp].architecture  # a stock class: no remote code ran
    with torch.no_grad():
        hf_logits = hf(torch.as_tensor(IDS)).logits.numpy()
        torch_logits = to_torch_model(model, model.cfg)(torch.as_tensor(IDS)).numpy()
    jax_logits = np.asarray(model(IDS))
    # measured: 4.8e-7 (small), 3.6e-7 (tiny) on a 2-core CPU
    assert np.abs(hf_logits - jax_logits).max() <= 1e-4
    assert np.abs(hf_logits - torch_logits).max() <= 1e-4


@pytest.mark.parametrize("name", ["small", "tiny", "tiny-relu2-fused", "small-relu2"])
def test_export_then_import_gives_the_same_weights(name, hf_run, fresh_exports):
    model, weights, folder = all_exports(hf_run, fresh_exports)[name]
    back = fit_state_dict(read_state_dict(folder), model.cfg, where=folder)  # in the model's own attention layout
    assert weights_sha256(back) == weights_sha256(weights)
    if name == "small":
        assert weights_sha256(back) == hf_run[0]["weights_sha256"]
    _, cfg = load_model(model_dir=folder)
    # the 88M family at tiny or small size is no preset: its shapes come from config.json
    assert (cfg.name, cfg.mlp) == ("custom" if "relu2" in name else model.cfg.name, model.cfg.mlp)


@pytest.mark.parametrize("name", ["small", "small-relu2"])
def test_greedy_generation_equals_the_generate_script(name, hf_run, fresh_exports, script, capsys):
    folder = all_exports(hf_run, fresh_exports)[name][2]
    argv = ["--model-dir", str(folder), "--greedy", "--max-new-tokens", str(NEW)]
    assert run_main(script("generate"), argv + [a for p in PROMPTS for a in ("--prompt", p)]) == 0
    printed = capsys.readouterr().out
    hf, tok = hf_model(folder), transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    expected = []
    for i, prompt in enumerate(PROMPTS, 1):
        ids = tok(prompt, return_tensors="pt")
        out = hf.generate(**ids, max_new_tokens=NEW, do_sample=False)[0, ids.input_ids.shape[1]:].tolist()
        new = out[: out.index(tokenizer.EOS_ID)] if tokenizer.EOS_ID in out else out
        expected.append(f"--- prompt {i} ---\n{prompt}{tok.decode(new)}\n")
    assert printed == "\n".join(expected) + "\n"


def test_the_exported_tokenizer_encodes_like_the_projects(hf_run):
    tok = transformers.AutoTokenizer.from_pretrained(hf_run[3], local_files_only=True)
    text = "Hello world! In 1984, naïve café owners said: <|endoftext|> def f(x): return x**2"
    assert tok(text).input_ids == tokenizer.encode_batch([text])[0]
    assert tok.eos_token_id == tokenizer.EOS_ID and tok.decode(tok(text).input_ids) == text


def card_figures(folder) -> dict:
    rows = [line.strip("| ").split(" | ") for line in (folder / "README.md").read_text().splitlines()
            if line.startswith("| ") and line.count(" | ") == 1]
    return {k: v for k, v in rows}


def test_the_model_card_holds_the_runs_figures(hf_run):
    summary, _, _, folder = hf_run
    figures = card_figures(folder)
    assert figures["Track"] == summary["track"] and figures["Device"] == summary["device"]
    assert figures["Tokens"] == f"{summary['tokens']:,}" and summary["tokens"] > 0
    assert figures["Active Training Time"] == summary["active_time"]
    assert float(figures["Validation loss"]) == pytest.approx(summary["val_loss"], abs=1e-6)
    assert figures["weights_sha256"] == figures["Run weights_sha256"] == summary["weights_sha256"]
    assert figures["data_sha256"] == summary["data_sha256"]
    assert figures["Eligible for the leaderboard"] == ("yes" if summary["eligible"] else "no")


def test_safetensors_format_keeps_upstreams_names(hf_run, tmp_path, script):
    summary, runs_dir, results_dir, _ = hf_run
    out = tmp_path / "sd"
    argv = ["--run", summary["run"], "--format", "safetensors", "--out", str(out), "--runs-dir", str(runs_dir),
            "--results-dir", str(results_dir)]
    assert run_main(script("export"), argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    tensors = read_state_dict(out / "model.safetensors")
    assert "transformer_blocks.0.attention.q_proj.weight" in tensors
    weights, cfg = load_weights(state_dict=out / "model.safetensors")
    assert cfg.name == "small" and weights_sha256(weights) == summary["weights_sha256"]


def test_bad_input_is_one_line_and_writes_nothing(hf_run, tmp_path, script, capsys):
    summary, runs_dir, results_dir, folder = hf_run
    export_main = script("export")
    base = ["--runs-dir", str(runs_dir), "--results-dir", str(results_dir)]

    def refused(argv, *words) -> str:
        assert run_main(export_main, argv + base) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err
        return err

    refused(["--run", summary["run"], "--format", "onnx", "--out", str(tmp_path / "a")], "unknown format 'onnx'")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    refused(["--run", summary["run"], "--format", "hf", "--out", str(taken)], "--force")
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    damaged = tmp_path / "runs"
    shutil.copytree(runs_dir, damaged)
    array = next(p for p in (damaged / summary["run"] / "checkpoints").rglob("*") if p.is_file()
                 and p.stat().st_size > 100_000)
    array.write_bytes(array.read_bytes()[:-1000])
    assert run_main(export_main, ["--run", summary["run"], "--format", "hf", "--out", str(tmp_path / "b"),
                                  "--runs-dir", str(damaged)]) == 2
    assert "fails verification" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))
    # --force replaces a folder, whole
    assert run_main(export_main, ["--run", summary["run"], "--format", "safetensors", "--out", str(taken),
                                  "--force"] + base) == 0
    assert [p.name for p in taken.iterdir()] == ["model.safetensors"]


def foreign(folder, tmp_path, name, change_config=None, change_tensors=None):
    out = tmp_path / name
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    if change_config:
        change_config(config)
    (out / "config.json").write_text(json.dumps(config))
    if change_tensors:
        from safetensors.torch import load_file, save_file

        tensors = load_file(out / "model.safetensors")
        change_tensors(tensors)
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_a_foreign_folder_is_one_line_naming_the_first_mismatch(fresh_exports, tmp_path, script, capsys):
    folder = fresh_exports["tiny"][2]
    cases = {
        "llama": (dict(change_config=lambda c: c.update(architectures=["LlamaForCausalLM"])), "LlamaForCausalLM"),
        "gelu": (dict(change_config=lambda c: c.update(hidden_act="gelu")), "hidden_act='gelu'"),
        "tied": (dict(change_config=lambda c: c.update(tie_word_embeddings=True)), "tie_word_embeddings=True"),
        "eps": (dict(change_config=lambda c: c.update(rms_norm_eps=1e-6)), "rms_norm_eps=1e-06"),
        "shape": (dict(change_config=lambda c: c.update(intermediate_size=128)), "mlp.gate_proj.weight has shape"),
        "qwen3 trained elsewhere": (dict(change_tensors=lambda t: t["model.embed_tokens.weight"].mul_(3.0)),
                                    "sqrt(hidden_size)"),
    }
    generate = script("generate")
    for name, (change, words) in cases.items():
        out = foreign(folder, tmp_path, name.replace(" ", "-"), **change)
        assert run_main(generate, ["--model-dir", str(out), "--prompt", "Hi"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and words in err, (name, err)
        assert str(out) in err, err
