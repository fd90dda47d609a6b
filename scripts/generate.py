"""Generate text from a trained model (JAX, or the PyTorch reference), with a KV cache.

    python scripts/generate.py --run smoke-jax --prompt "The history of"
    python scripts/generate.py --state-dict model.pt --prompts prompts.txt --greedy
    python scripts/generate.py --state-dict model.pt --framework torch --prompt "Once upon a time"
    python scripts/generate.py --model-dir exports/smoke-jax --prompt "Hello"   # a transformers folder
    python scripts/generate.py --model small --prompt "Hello"              # a fresh, untrained model

Weights: `--run NAME` (the latest checkpoint of runs/NAME), `--state-dict PATH` (a PyTorch state_dict of this
project, upstream's model.pt or a .safetensors), `--model-dir DIR` (a transformers folder that
scripts/export.py wrote) or `--model PRESET` alone (a fresh model). Prompts are encoded with the SmolLM2
tokenizer; one prompt is streamed as it is produced, several are printed prompt by prompt.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs.errors import UserError  # noqa: E402
from jax_nano.core.cli import add_weight_flags, check_weight_source, run_main, use_compilation_cache  # noqa: E402


class PromptError(UserError):
    """Prompts that cannot be generated from; one line naming the problem and the fix."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    add_weight_flags(p)
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, metavar="FILE", help="prompts, one per line")
    p.add_argument("--framework", default="jax", choices=("jax", "torch"))
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=0.95, help="keep the smallest set with this probability")
    p.add_argument("--greedy", action="store_true", help="always the most likely token (temperature 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    return p


MAX_PROMPTS_BYTES = 1 << 20  # prompts are read whole; a bound keeps a stray huge file from filling memory


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts is not None:
        path = Path(args.prompts)
        if not path.is_file():
            raise PromptError(f"prompt file {path} does not exist; pass a text file with one prompt per line")
        if path.stat().st_size > MAX_PROMPTS_BYTES:
            raise PromptError(f"prompt file {path} holds {path.stat().st_size:,} bytes, more than the "
                              f"{MAX_PROMPTS_BYTES:,} a prompt file may; split it")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise PromptError(f"prompt file {path} holds no prompt; write one prompt per line")
        prompts += lines
    if not prompts:
        raise PromptError("no prompt; pass --prompt TEXT (repeatable) or --prompts FILE")
    return prompts


def encode(prompts: list[str], cfg, max_new: int) -> tuple[list[list[int]], int]:
    """Token ids of every prompt and the number of new tokens that fit the model's context."""
    from jax_nano.data import tokenizer

    if cfg.vocab_size != tokenizer.VOCAB_SIZE:
        raise PromptError(f"model {cfg.name!r} has a {cfg.vocab_size}-token vocabulary, not the SmolLM2 tokenizer's "
                          f"{tokenizer.VOCAB_SIZE}; generate text from a model trained on SmolLM2 tokens")
    ids = tokenizer.encode_batch(prompts)
    for i, row in enumerate(ids, 1):
        if not row:
            raise PromptError(f"prompt {i} is empty; give it some text")
        if len(row) >= cfg.max_seq_len:
            raise PromptError(f"prompt {i} has {len(row)} tokens; the model's context is {cfg.max_seq_len} "
                              f"tokens with room for the new ones: shorten it")
    room = cfg.max_seq_len - max(map(len, ids))
    if room < max_new:
        print(f"note: only {room} new tokens fit the model's context after the longest prompt", file=sys.stderr)
    return ids, min(max_new, room)


class Printer:
    """Text as it is produced: one prompt streams token by token; several come out prompt by prompt."""

    def __init__(self, prompts: list[str], max_new: int):
        from jax_nano.data import tokenizer

        self.tok, self.prompts = tokenizer.load(), prompts
        self.tokens = [[] for _ in prompts]
        self.shown = [""] * len(prompts)
        self.bar = None
        if len(prompts) == 1:
            print(prompts[0], end="", flush=True)
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=len(prompts) * max_new, unit="tok", desc="generating", file=sys.stderr,
                            leave=False)

    def on_token(self, i: int, token: int) -> None:
        self.tokens[i].append(token)
        if self.bar is not None:
            self.bar.update(1)
            return
        text = self.tok.decode(self.tokens[i])
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(self.shown[i]):], end="", flush=True)
            self.shown[i] = text

    def finish(self, outputs: list[list[int]]) -> None:
        if self.bar is None:
            print(self.tok.decode(outputs[0])[len(self.shown[0]):])
            return
        self.bar.close()
        for i, (prompt, new) in enumerate(zip(self.prompts, outputs), 1):
            print(f"--- prompt {i} ---\n{prompt}{self.tok.decode(new)}\n")


def build_generator(args, batch_size: int, max_new: int, lengths: list[int], cfg, model):
    from jax_nano.core.generation import prefill_length

    # Prompt lengths rounded up to a power of two: similar prompts reuse the compiled programs (and the cache).
    max_len = min(cfg.max_seq_len, prefill_length(max(lengths), cfg.max_seq_len) + max_new)
    if args.framework == "torch":
        import torch

        from jax_nano.interop.convert import to_torch_model
        from torch_ref.generate import Generator

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return Generator(to_torch_model(model, cfg).to(device), batch_size=batch_size, max_len=max_len)
    from jax_nano.generate import Generator

    return Generator(model, batch_size=batch_size, max_len=max_len)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from jax_nano.core.generation import GenerationError, check_sampling

    temperature = 0.0 if args.greedy else args.temperature
    check_sampling(temperature, args.top_k, args.top_p)
    if args.max_new_tokens <= 0 or args.batch_size <= 0:
        raise GenerationError("--max-new-tokens and --batch-size must be positive")
    check_weight_source(args)
    prompts = read_prompts(args)

    import jax

    use_compilation_cache()
    from jax_nano.interop.weights import load_model

    model, cfg = load_model(run=args.run, state_dict=args.state_dict, model_dir=args.model_dir, preset=args.model,
                            runs_dir=args.runs_dir)
    ids, max_new = encode(prompts, cfg, args.max_new_tokens)
    batch_size = min(args.batch_size, len(ids))
    gen = build_generator(args, batch_size, max_new, list(map(len, ids)), cfg, model)
    printer = Printer(prompts, max_new)
    outputs = gen.generate(ids, max_new_tokens=max_new, temperature=temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, on_token=printer.on_token)
    printer.finish(outputs)
    device = jax.devices()[0].platform if args.framework == "jax" else gen.device.type
    print(f"[{args.framework} on {device}] {gen.stats.describe()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
