"""jax-nano as a model of lm-evaluation-harness (`lm_eval`), so every task the harness knows scores through it.

    import lm_eval
    from jax_nano.evaluate.lm_eval_model import JaxNanoLM
    lm_eval.simple_evaluate(model=JaxNanoLM(run="4.5loss-jax"), tasks=["hellaswag"])

or, once this module is imported, `lm_eval.simple_evaluate(model="jax-nano", model_args={"run": "4.5loss-jax"})`.

The request handling (tokenization by the harness's own rules, sorting, batching, windows, stop sequences) is
shared; the arithmetic is an engine: `jax_nano.lm_eval_engine.JaxEngine`, `torch_ref.lm_eval_engine.TorchEngine` for the
PyTorch twin. Scoring sorts requests by length, cuts them into batches of a fixed size and right-pads each to a
power-of-two length bucket, so a whole evaluation compiles once per bucket used, whatever the lengths.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flax import nnx
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from configs.errors import UserError
from jax_nano.lm_eval_engine import JaxEngine

log = logging.getLogger(__name__)

SMALLEST_BUCKET = 16
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256
# Sampling keys of the harness that the generator understands; any other key is logged and ignored.
_SAMPLING_KEYS = {"do_sample", "temperature", "top_k", "top_p", "seed"}


class EvalError(UserError):
    """An evaluation that cannot run as asked; the message is one line."""


def length_buckets(max_length: int, smallest: int = SMALLEST_BUCKET) -> list[int]:
    """Padded lengths: powers of two from `smallest` below `max_length`, then `max_length` itself."""
    buckets, n = [], smallest
    while n < max_length:
        buckets.append(n)
        n *= 2
    return buckets + [max_length]


def bucket_for(length: int, buckets: list[int]) -> int:
    return next(b for b in buckets if b >= length)


class SmolLM2Tokenizer:
    """The project's tokenizer (jax_nano/data/tokenizer.py) in the shape the evaluator wants."""

    def __init__(self):
        from jax_nano.data import tokenizer

        self._tok = tokenizer.load()
        self.name, self.eot_id, self.vocab_size = tokenizer.NAME, tokenizer.EOS_ID, tokenizer.VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def engine_for(model):
    """The engine of a jax-nano `GPT` or of a `torch_ref` `MinimalLLM`."""
    if isinstance(model, nnx.Module):
        return JaxEngine(model)
    from torch_ref.lm_eval_engine import TorchEngine

    return TorchEngine(model)


def load_engine(*, run=None, state_dict=None, model_dir=None, preset=None, framework="jax", runs_dir="runs",
                compute_dtype="float32"):
    """An engine for saved weights (a run's checkpoint, a weights file, a transformers folder) or a fresh preset."""
    from jax_nano.interop.weights import load_model

    if framework not in ("jax", "torch"):
        raise EvalError(f"unknown framework {framework!r}; choose jax or torch")
    model, _ = load_model(run=run, state_dict=state_dict, model_dir=model_dir, preset=preset, runs_dir=runs_dir,
                          compute_dtype=compute_dtype)
    if framework == "jax":
        return JaxEngine(model)
    from jax_nano.interop.convert import to_torch_model
    from torch_ref.lm_eval_engine import TorchEngine
    from torch_ref.tensors import default_device

    return TorchEngine(to_torch_model(model, model.cfg).to(default_device()))


@register_model("jax-nano")
class JaxNanoLM(TemplateLM):
    """lm-eval's model interface over a jax-nano (or torch_ref) model.

    `model`: a `GPT` or `MinimalLLM` already built; otherwise `run`, `state_dict`, `model_dir` or `preset` (with
    `framework`)
    load one through `jax_nano.interop.weights.load_model`. `tokenizer`: anything with `encode(str) -> list[int]`,
    `decode(list[int]) -> str`, `eot_id` and `vocab_size`; the SmolLM2 tokenizer by default.
    """

    def __init__(self, model=None, *, run=None, state_dict=None, model_dir=None, preset=None, framework="jax",
                 tokenizer=None,
                 batch_size=DEFAULT_BATCH_SIZE, max_length=None, max_gen_toks=DEFAULT_MAX_GEN_TOKS,
                 runs_dir="runs", compute_dtype="float32", show_bar=True):
        super().__init__()
        if isinstance(batch_size, str) and batch_size.isdigit():  # the harness's command line passes text
            batch_size = int(batch_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EvalError(f"batch_size={batch_size!r} must be a whole number >= 1 (the scoring batch is fixed)")
        if model is not None:
            self.engine = engine_for(model)
        else:
            self.engine = load_engine(run=run, state_dict=state_dict, model_dir=model_dir, preset=preset,
                                      framework=framework, runs_dir=runs_dir, compute_dtype=compute_dtype)
        cfg = self.engine.cfg
        self.text_tokenizer = tokenizer if tokenizer is not None else SmolLM2Tokenizer()
        if self.text_tokenizer.vocab_size > cfg.vocab_size:
            raise EvalError(f"the tokenizer has {self.text_tokenizer.vocab_size} tokens but model {cfg.name!r} only "
                            f"{cfg.vocab_size}; use a model with the tokenizer's vocabulary")
        self._max_length = int(max_length or cfg.max_seq_len)
        if not 1 < self._max_length <= cfg.max_seq_len:
            raise EvalError(f"max_length={self._max_length} must lie in 2..{cfg.max_seq_len} (the model's context)")
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.buckets = length_buckets(self._max_length)
        self.show_bar = show_bar
        self.model_time_s = 0.0

    @property
    def framework(self) -> str:
        return self.engine.framework

    @property
    def model_config(self):
        return self.engine.cfg

    def device_name(self) -> str:
        return self.engine.device_name()

    @property
    def compile_time_s(self) -> float:
        """Seconds spent compiling, part of `model_time_s` (the seconds inside the three request methods)."""
        return self.engine.compile_s

    @property
    def eot_token_id(self) -> int:
        return self.text_tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.text_tokenizer.encode(string)

    def tok_decode(self, ids: list[int]) -> str:
        return self.text_tokenizer.decode(ids)

    # ------------------------------------------------------------------------------------------- scoring

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids) -> (log-prob, is greedy)."""
        t0 = time.perf_counter()
        collator = Collator(requests, sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1] + r[2])))
        scores = []
        with tqdm(total=len(requests), desc="Scoring", disable=disable_tqdm or not self.show_bar) as bar:
            for chunk in collator.get_batched(n=self.batch_size):
                scores += self._score_batch([self._window(ctx, cont) for _, ctx, cont in chunk])
                bar.update(len(chunk))
        scores = collator.get_original(scores)
        for (strings, _, _), score in zip(requests, scores):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, score)
        self.model_time_s += time.perf_counter() - t0
        return scores

    def _window(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[list[int], int]:
        """The model's input and how many of its last positions score the continuation. What does not fit the
        context is cut from the left, as the harness's Hugging Face model does."""
        if len(continuation_ids) > self.max_length:
            raise EvalError(f"a continuation of {len(continuation_ids)} tokens does not fit the model's context of "
                            f"{self.max_length}; use a task with shorter answers")
        tokens = (context_ids + continuation_ids)[-(self.max_length + 1):]
        return tokens, len(continuation_ids)

    def _score_batch(self, windows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        T = bucket_for(max(len(tokens) - 1 for tokens, _ in windows), self.buckets)
        inputs_BT = np.zeros((self.batch_size, T), np.int32)
        targets_BT = np.zeros((self.batch_size, T), np.int32)
        for row, (tokens, _) in enumerate(windows):
            inputs_BT[row, : len(tokens) - 1] = tokens[:-1]
            targets_BT[row, : len(tokens) - 1] = tokens[1:]
        logp_BT, hit_BT = self.engine.token_scores(inputs_BT, targets_BT)
        out = []
        for row, (tokens, n_scored) in enumerate(windows):
            scored = slice(len(tokens) - 1 - n_scored, len(tokens) - 1)
            out.append((float(logp_BT[row, scored].astype(np.float64).sum()), bool(hit_BT[row, scored].all())))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts: disjoint windows of the model's context, each token predicted once."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            token_windows = get_rolling_token_windows(token_list=self.tok_encode(text), context_len=1,
                                                      prefix_token=self.prefix_token_id, max_seq_len=self.max_length)
            for context_ids, continuation_ids in map(make_disjoint_window, token_windows):
                windows.append((None, context_ids, continuation_ids))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[i] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context, cut at the first of its `until` strings (and at end-of-text)."""
        t0 = time.perf_counter()
        args = [req.args for req in requests]
        collator = Collator(args, sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]), group_by="gen_kwargs",
                            group_fn=lambda a: a[1])
        eos = self.tok_decode([self.eot_token_id])
        texts = []
        with tqdm(total=len(args), desc="Generating", disable=disable_tqdm or not self.show_bar) as bar:
            for chunk in collator.get_batched(n=self.batch_size):
                contexts, all_kwargs = zip(*chunk)
                texts += self._generate_batch(list(contexts), all_kwargs[0], eos)
                bar.update(len(chunk))
        texts = collator.get_original(texts)
        for a, text in zip(args, texts):
            self.cache_hook.add_partial("generate_until", a, text)
        self.model_time_s += time.perf_counter() - t0
        return texts

    def _generate_batch(self, contexts: list[str], gen_kwargs: dict, eos: str) -> list[str]:
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_new = kwargs.pop("max_gen_toks")
        ignored = sorted(set(kwargs) - _SAMPLING_KEYS)
        if ignored:
            log.warning("jax-nano ignores the generation settings %s", ", ".join(ignored))
        room = self.max_length - max_new
        if room < 1:
            raise EvalError(f"max_gen_toks={max_new} leaves no room for a prompt in the model's context of "
                            f"{self.max_length}; ask for fewer new tokens")
        prompts = [(self.tok_encode(c) or [self.prefix_token_id])[-room:] for c in contexts]
        sampling = {"temperature": float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                    "top_k": int(kwargs.get("top_k") or 0), "top_p": float(kwargs.get("top_p") or 1.0),
                    "seed": int(kwargs.get("seed") or 0)}
        new_ids = [[] for _ in prompts]

        def reached_until(i: int, token: int) -> bool:
            # A row ends as soon as its text holds a stop string, instead of running to max_gen_toks.
            new_ids[i].append(token)
            return any(stop in self.tok_decode(new_ids[i]) for stop in until)

        self.engine.generate(prompts, batch_size=self.batch_size, max_len=self.max_length, max_new_tokens=max_new,
                             stop_ids=(self.eot_token_id,), on_token=reached_until, **sampling)
        return [postprocess_generated_text(self.tok_decode(ids), until, None) for ids in new_ids]
