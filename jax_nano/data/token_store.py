"""Token stores: a directory of uint16 token ids and a checked header, written atomically, read memory-mapped.

A store is a directory with `tokens.bin` (flat little-endian uint16 token ids, rows of `seq_len` tokens back
to back) and `header.json`. Everything here works on numpy arrays only, so batch k is bit-identical whichever
framework asks for it (jax_nano/data/loader.py cuts the batches).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from configs.errors import UserError
from jax_nano.core.checksums import sha256_file

SAMPLE = "sample"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
FORMAT = "jax-nano-tokens/1"
VAL_FRACTION = 0.1
SPLIT_SEED = 42

_TOKENS, _HEADER = "tokens.bin", "header.json"
_DTYPE = np.dtype("<u2")
_MAX_HEADER_BYTES = 1 << 20  # a header is well under 10 KB; provenance notes included
_REQUIRED_KEYS = ("format", "vocab_size", "seq_len", "n_tokens", "n_rows", "sha256", "val_fraction", "split_seed")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# A header edited by hand or damaged on disk must fail here, not as a TypeError deep in the loader.
_HEADER_CHECKS = {
    "vocab_size": lambda v: _count(v) and v <= 1 << 16,
    "seq_len": _count,
    "n_tokens": _count,
    "n_rows": _count,
    "sha256": lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
    "val_fraction": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
    "split_seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
}


class DataError(UserError):
    """A one-line, user-facing message naming the problem and the fix."""


# --------------------------------------------------------------------------- writing


def refuse_existing(out, overwrite: bool) -> None:
    """Raise before any work if `out` holds something we were not asked to replace."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / _HEADER).is_file():  # --overwrite replaces stores only, never an arbitrary directory
        raise DataError(f"{out} exists and is not a token store; choose another --out")
    if not overwrite:
        raise DataError(f"{out} already exists; pass overwrite=True (--overwrite) or choose another --out")


def write_store(
    out_dir,
    tokens_iter_or_array,
    *,
    seq_len: int,
    vocab_size: int,
    source: str,
    tokenizer: str,
    extra: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Stream token chunks into a new store and return its header.

    Chunks are concatenated; the final partial row is dropped. The store is built in a sibling
    temp directory and renamed into place only when complete, so a failure (bad ids, empty
    input, Ctrl-C) never leaves a half-written store or touches an existing one.
    """
    if not 0 < vocab_size <= 1 << 16:
        raise DataError(f"vocab_size {vocab_size} does not fit the uint16 store format (max 65536)")
    if seq_len <= 0:
        raise DataError(f"seq_len must be positive, got {seq_len}")
    out = Path(out_dir)
    refuse_existing(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        sha, n_tokens, n_dropped, max_id = _write_tokens(tmp / _TOKENS, tokens_iter_or_array, seq_len, vocab_size)
        if n_tokens == 0:
            raise DataError(f"no complete row of {seq_len} tokens in the input ({n_dropped} tokens); nothing written")
        header = {
            "format": FORMAT,
            "dtype": "uint16",
            "vocab_size": int(vocab_size),
            "seq_len": int(seq_len),
            "n_tokens": n_tokens,
            "n_rows": n_tokens // seq_len,
            "dropped_tail_tokens": n_dropped,
            "source": source,
            "tokenizer": tokenizer,
            "sha256": sha,
            "val_fraction": VAL_FRACTION,
            "split_seed": SPLIT_SEED,
            "created_by": "jax_nano.data.token_store.write_store",
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **(extra or {}),
            "max_id": max_id,
        }
        (tmp / _HEADER).write_text(json.dumps(header, indent=2) + "\n")
        refuse_existing(out, overwrite)  # the input may have taken hours; re-check before replacing
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return header
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _chunks(tokens) -> Iterable[np.ndarray]:
    if isinstance(tokens, np.ndarray):
        yield tokens.reshape(-1)
    else:
        for chunk in tokens:
            yield np.asarray(chunk).reshape(-1)


def _write_tokens(path: Path, tokens, seq_len: int, vocab_size: int) -> tuple[str, int, int, int]:
    """Write only whole rows (so the hash covers exactly what is kept); return (sha256, n_written, n_dropped,
    the largest id written)."""
    sha, n, carry, top = hashlib.sha256(), 0, np.empty(0, _DTYPE), 0
    with open(path, "wb") as f:
        for chunk in _chunks(tokens):
            if chunk.size == 0:
                continue
            if chunk.dtype.kind not in "iu":
                raise DataError(f"token ids must be integers, got dtype {chunk.dtype}")
            lo, hi = int(chunk.min()), int(chunk.max())
            if lo < 0 or hi >= vocab_size:
                bad = hi if hi >= vocab_size else lo
                raise DataError(f"token id {bad} is outside the vocabulary [0, {vocab_size}); wrong tokenizer or vocab")
            buf = np.concatenate([carry, chunk.astype(_DTYPE)])
            keep = buf.size - buf.size % seq_len
            top = max(top, int(buf[:keep].max())) if keep else top
            data = buf[:keep].tobytes()
            f.write(data)
            sha.update(data)
            n += keep
            carry = buf[keep:]
    return sha.hexdigest(), n, int(carry.size), top


# --------------------------------------------------------------------------- reading


def _resolve(path_or_name) -> Path:
    if str(path_or_name) == SAMPLE:
        return SAMPLE_DIR
    return Path(path_or_name)


def _read_header(path: Path) -> tuple[dict, str]:
    """The header of the store at `path`, checked field by field, and the sha256 of its bytes."""
    hp = path / _HEADER
    if not hp.is_file():
        raise DataError(f"{path} is not a token store (no {_HEADER}); build one with python scripts/prepare_data.py")
    if hp.stat().st_size > _MAX_HEADER_BYTES:
        raise DataError(f"{hp} is {hp.stat().st_size:,} bytes, not a header (at most {_MAX_HEADER_BYTES:,}); rebuild "
                        "the store with prepare_data")
    try:
        raw = hp.read_bytes()
        header = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise DataError(f"{hp} cannot be read ({e.strerror}); check its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(
            f"{hp} is not valid JSON ({e.__class__.__name__}); rebuild the store with prepare_data"
        ) from None
    missing = [k for k in _REQUIRED_KEYS if k not in header] if isinstance(header, dict) else list(_REQUIRED_KEYS)
    if missing:
        raise DataError(f"{hp} lacks {', '.join(missing)}; rebuild the store with scripts/prepare_data.py")
    if header["format"] != FORMAT:
        raise DataError(f"{hp} has format {header['format']!r}, this code reads {FORMAT!r}; rebuild the store")
    for key, ok in _HEADER_CHECKS.items():
        if not ok(header[key]):
            raise DataError(f"{hp} has a damaged {key} ({header[key]!r}); rebuild the store with prepare_data")
    if header["n_tokens"] != header["n_rows"] * header["seq_len"]:
        raise DataError(f"{hp} is inconsistent: n_tokens != n_rows * seq_len; rebuild the store")
    top = header.get("max_id", 0)
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top < header["vocab_size"]:
        raise DataError(f"{hp} has a damaged max_id ({top!r}), not an id of its vocabulary [0, "
                        f"{header['vocab_size']}); rebuild the store with prepare_data")
    return header, hashlib.sha256(raw).hexdigest()


def split_rows(
    n_rows: int, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) native row indices.

    This is the algorithm of `datasets.Dataset.train_test_split(test_size=val_fraction, seed=seed)`
    (a default_rng(seed) permutation, the first ceil(n * fraction) rows are the test split), so
    on the same rows it selects the same train and validation rows, in the same order.
    """
    n_val = int(np.ceil(val_fraction * n_rows))
    perm = np.random.default_rng(seed).permutation(n_rows)
    return perm[n_val:], perm[:n_val]


class TokenStore:
    """A memory-mapped store seen as `seq_len` windows; `train_rows`/`val_rows` count windows.

    The split is made on the store's native rows before they are cut into windows, so no
    window of a validation row ever appears in training.
    """

    def __init__(self, path: Path, header: dict, seq_len: int, header_sha256: str | None = None):
        self.path, self.header, self.header_sha256 = path, header, header_sha256
        self.vocab_size = int(header["vocab_size"])
        self.native_seq_len = int(header["seq_len"])
        self.seq_len = int(seq_len)
        self.windows_per_row = self.native_seq_len // self.seq_len
        self.n_tokens = int(header["n_tokens"])
        self._windows = np.memmap(path / _TOKENS, dtype=_DTYPE, mode="r").reshape(-1, self.seq_len)
        train, val = split_rows(int(header["n_rows"]), header["val_fraction"], header["split_seed"])
        self._split = {"train": train, "val": val}
        self.train_rows = len(train) * self.windows_per_row
        self.val_rows = len(val) * self.windows_per_row

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, seq_len={self.seq_len}, train={self.train_rows}, val={self.val_rows})"

    def rows(self, split: str, idx) -> np.ndarray:
        """Windows `idx` (indices within `split`) as a (len(idx), seq_len) int32 array."""
        if split not in self._split:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        native = self._split[split][idx // self.windows_per_row]
        return self._windows[native * self.windows_per_row + idx % self.windows_per_row].astype(np.int32)


def open_store(path_or_name, *, vocab_size: int | None = None, seq_len: int | None = None, verify: bool = True):
    """Open a store (a path, or SAMPLE for the embedded sample) after checking it end to end."""
    path = _resolve(path_or_name)
    if not path.exists():
        raise DataError(f"token store {path} does not exist; build it with python scripts/prepare_data.py --out {path}")
    header, header_sha256 = _read_header(path)
    tp = path / _TOKENS
    expected = header["n_tokens"] * _DTYPE.itemsize
    actual = tp.stat().st_size if tp.is_file() else None
    if actual != expected:
        raise DataError(
            f"{tp} is truncated or missing ({actual} bytes, header says {expected}); rebuild it with prepare_data"
        )
    try:
        if verify and sha256_file(tp) != header["sha256"]:
            raise DataError(f"{tp} is corrupted (sha256 differs from {_HEADER}); rebuild it with prepare_data")
    except OSError as e:
        raise DataError(f"{tp} cannot be read ({e.strerror}); check its permissions") from None
    _check_ids(tp, header)
    if vocab_size is not None and vocab_size != header["vocab_size"]:
        raise DataError(
            f"store {path} was tokenized for vocab {header['vocab_size']}, the model has vocab {vocab_size}; "
            "use a store built with the model's tokenizer or change the model's vocab_size"
        )
    native = int(header["seq_len"])
    seq_len = native if seq_len is None else int(seq_len)
    if seq_len <= 0 or native % seq_len:
        raise DataError(
            f"store {path} has rows of {native} tokens; seq_len {seq_len} must divide it "
            f"(e.g. {native} or {native // 16}); or rebuild the store with --seq-len {seq_len}"
        )
    return TokenStore(path, header, seq_len, header_sha256)


def _check_ids(tp: Path, header: dict, chunk: int = 1 << 24) -> None:
    """Every id of tokens.bin below the header's vocab_size (a vectorised max over the memory map, chunk by
    chunk), and the header's max_id, when it records one, the true maximum."""
    tokens, vocab, top = np.memmap(tp, dtype=_DTYPE, mode="r"), header["vocab_size"], 0
    for start in range(0, tokens.size, chunk):
        part = tokens[start:start + chunk]
        top = max(top, int(part.max()))
        if top >= vocab:
            at = start + int(np.argmax(part >= vocab))
            raise DataError(f"{tp} holds token id {int(tokens[at])} (at token {at:,}), outside the vocabulary [0, "
                            f"{vocab}) of its header; rebuild the store with the model's tokenizer "
                            "(scripts/prepare_data.py)")
    if "max_id" in header and header["max_id"] != top:
        raise DataError(f"{tp.parent / _HEADER} records max_id {header['max_id']}, {tp.name} holds ids up to {top}; "
                        "rebuild the store with prepare_data")


def require_tokens(store: TokenStore, needed: int, what: str) -> None:
    have = store.train_rows * store.seq_len
    if have < needed:
        raise DataError(
            f"store {store.path} has {have:,} train tokens, track '{what}' needs {needed:,}; prepare more rows with "
            "python scripts/prepare_data.py --rows N (hub) or --source offline"
        )
