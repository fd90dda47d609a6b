"""Where token stores come from: a Hugging Face dataset (the Hub or a local copy) as pre-tokenized rows.

`datasets` is imported lazily, only here: nothing else of the project needs it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jax_nano.data.token_store import DataError

HUB_DATASET = "vukrosic/blueberry-1B-pretrain"
_OFFLINE_HINT = "python scripts/prepare_data.py --source offline"
_FALSE = ("", "0", "false", "False", "FALSE", "no", "off")


def _hub_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # a direct probe says nothing about a proxied route; let datasets try
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_hub(dataset_id: str = HUB_DATASET, rows: int = 20000, split: str = "train"):
    """The first `rows` rows of a Hub dataset (or a local dataset directory/files `load_dataset` accepts).

    Fails fast with the offline alternative when the Hub is switched off or unreachable,
    instead of letting `datasets` retry for minutes.
    """
    import datasets

    if not Path(dataset_id).exists():
        offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "0") not in _FALSE]
        why = f"{offline[0]} is set" if offline else None if _hub_reachable() else "the Hugging Face Hub is unreachable"
        if why:
            raise DataError(
                f"{why}, so {dataset_id} cannot be downloaded; build the offline corpus with "
                f"`{_OFFLINE_HINT}` or pass --source PATH to a local copy"
            )
    split_spec = f"{split}[:{rows}]" if rows else split
    try:
        return datasets.load_dataset(dataset_id, split=split_spec)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(
            f"could not load {dataset_id} split {split_spec!r}: {msg}; for an offline corpus use `{_OFFLINE_HINT}`"
        ) from None


def load_local(path, rows: int | None = None):
    """A local `save_to_disk` directory, or parquet / JSONL file(s) or a directory of them, as a Dataset."""
    import datasets

    datasets.disable_progress_bars()  # local reads are quick; keep stderr to the one-line error on failure
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist; pass a save_to_disk directory, parquet/JSONL files, or text files")
    json_lines = []
    try:
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            state = p / "state.json"
            if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
                raise DataError(f"dataset {p} is empty (0 rows); check the path, split and --rows")
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if "train" not in ds:
                    raise DataError(f"{p} holds splits {list(ds)} but no 'train' split")
                ds = ds["train"]
        else:
            files = sorted(p.rglob("*")) if p.is_dir() else [p]
            kinds = {
                "parquet": [f for f in files if f.suffix == ".parquet"],
                "json": [f for f in files if f.suffix in (".jsonl", ".json")],
            }
            kind = next((k for k, v in kinds.items() if v), None)
            json_lines = [f for f in kinds["json"] if f.suffix == ".jsonl"] if kind == "json" else []
            if kind is None:
                raise DataError(f"{p} has no parquet or JSONL files and is not a save_to_disk directory")
            if kind == "json" and not any(_has_text(f) for f in kinds[kind]):
                raise DataError(f"{p} holds no rows (its JSON files are empty); check the path")
            verbosity = datasets.logging.get_verbosity()
            datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # the one-line error below says it all
            try:
                ds = datasets.load_dataset(kind, data_files=[str(f) for f in kinds[kind]], split="train")
            finally:
                datasets.logging.set_verbosity(verbosity)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many unrelated types for unreadable input
        bad_line = _first_bad_json_line(json_lines)
        if bad_line:
            raise DataError(f"could not read {p} as a dataset: {bad_line}") from None
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"could not read {p} as a dataset: {e.__class__.__name__} {msg}".rstrip()) from None
    if rows:
        ds = ds.select(range(min(rows, len(ds))))
    return ds


def _has_text(path: Path) -> bool:
    with open(path, "rb") as f:
        return any(line.strip() for line in f)


def _first_bad_json_line(files) -> str | None:
    """Where a JSON Lines file stops being one JSON object per line, to name it when `datasets` cannot read it."""
    for path in files:
        try:
            with open(path, "rb") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        return f"{path} line {n} is not JSON ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
                    if not isinstance(row, dict):
                        return f"{path} line {n} is not a JSON object"
        except OSError as e:
            return f"{path} cannot be read ({e.strerror})"
    return None


def dataset_chunks(ds, *, seq_len: int, batch_rows: int = 1024) -> Iterable[np.ndarray]:
    """The `input_ids` rows of a Dataset as (rows, seq_len) blocks, checking row lengths.

    The id range is checked by write_store, which sees every chunk anyway; `labels` is ignored
    because upstream's labels equal input_ids (the shift happens in the loss).
    """
    if "input_ids" not in ds.column_names:
        raise DataError(f"dataset has columns {ds.column_names}, expected 'input_ids' (pre-tokenized rows)")
    if len(ds) == 0:
        raise DataError("dataset is empty (0 rows); check the path, split and --rows")
    ds = ds.with_format("numpy", columns=["input_ids"])
    for start in range(0, len(ds), batch_rows):
        block = ds[start : start + batch_rows]["input_ids"]
        if block.ndim != 2 or block.shape[1] != seq_len:  # ragged blocks come back as an object array
            for i, row in enumerate(block):
                if len(row) != seq_len:
                    raise DataError(
                        f"row {start + i} has {len(row)} tokens, expected {seq_len}; pass --seq-len {len(row)} "
                        "if the whole dataset uses that length"
                    )
        yield block
