"""Token ids outside the vocabulary: refused when a store is written and when one (its checksum valid) is opened,
in one line naming the file, the id and the vocabulary, before either trainer indexes an embedding with it."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from jax_nano.core.cli import run_main
from jax_nano.data.token_store import DataError, open_store, write_store
from tests.data.stores import make_store
from tests.script_modules import load_script


def forge(store: Path, position: int, token: int, keep_max_id: bool = False) -> None:
    """Put `token` at `position` of tokens.bin and redo the header's sha256, as a forger would (and drop max_id,
    as a store of an older version has none, unless `keep_max_id`)."""
    tokens = np.fromfile(store / "tokens.bin", dtype="<u2")
    tokens[position] = token
    tokens.tofile(store / "tokens.bin")
    header = json.loads((store / "header.json").read_text())
    header["sha256"] = hashlib.sha256(tokens.tobytes()).hexdigest()
    if not keep_max_id:
        header.pop("max_id")
    (store / "header.json").write_text(json.dumps(header))


def test_a_store_records_its_largest_id_and_an_old_store_without_it_opens(tmp_path):
    rows = make_store(tmp_path / "s", vocab=1000)
    assert open_store(tmp_path / "s").header["max_id"] == int(rows.max())
    forge(tmp_path / "s", 0, int(rows.max()))  # an in-range id, the header as older versions wrote it
    assert "max_id" not in open_store(tmp_path / "s").header


def test_an_id_outside_the_vocabulary_is_refused_when_writing(tmp_path):
    with pytest.raises(DataError, match=r"token id 1000 is outside the vocabulary \[0, 1000\)"):
        write_store(tmp_path / "s", np.array([1, 2, 1000, 3]), seq_len=2, vocab_size=1000, source="t", tokenizer="t")
    assert not (tmp_path / "s").exists()


def test_a_forged_store_with_an_id_outside_the_vocabulary_is_refused_when_opened(tmp_path):
    make_store(tmp_path / "s", vocab=1000)
    forge(tmp_path / "s", 77, 60000)
    with pytest.raises(DataError) as info:
        open_store(tmp_path / "s")
    message = str(info.value)
    assert message.startswith(str(tmp_path / "s" / "tokens.bin")) and "\n" not in message
    assert "token id 60000 (at token 77), outside the vocabulary [0, 1000)" in message


def test_a_header_whose_max_id_lies_is_refused(tmp_path):
    make_store(tmp_path / "s", vocab=1000)
    forge(tmp_path / "s", 5, 999, keep_max_id=True)
    header = json.loads((tmp_path / "s" / "header.json").read_text())
    assert header["max_id"] < 999
    with pytest.raises(DataError, match=f"records max_id {header['max_id']}, tokens.bin holds ids up to 999"):
        open_store(tmp_path / "s")
    header["max_id"] = 5000
    (tmp_path / "s" / "header.json").write_text(json.dumps(header))
    with pytest.raises(DataError, match=r"damaged max_id \(5000\)"):
        open_store(tmp_path / "s")


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_both_trainers_refuse_the_store_in_one_line(tmp_path, capsys, framework):
    """The speedrun command of either framework stops before setup, blaming the data, not the loss."""
    module = load_script("speedrun")
    store = tmp_path / "store"
    make_store(store, n_rows=40, seq_len=64, vocab=512)  # the tiny model's vocabulary
    forge(store, 3, 600)
    argv = ["--no-bar", "--model", "tiny", "--framework", framework, "--data", str(store), "--seq-len", "64",
            "--batch-size", "2", "--eval-batches", "1", "--tokens", "256", "--results-dir", str(tmp_path / "r"),
            "--runs-dir", str(tmp_path / "runs")]
    assert run_main(module.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {store / 'tokens.bin'} holds token id 600") and "\n" not in err, err
    assert "vocabulary [0, 512)" in err


def test_a_header_too_large_to_be_one_is_not_read(tmp_path):
    make_store(tmp_path / "s", vocab=1000)
    header = json.loads((tmp_path / "s" / "header.json").read_text())
    header["note"] = "x" * (2 << 20)
    (tmp_path / "s" / "header.json").write_text(json.dumps(header))
    with pytest.raises(DataError, match="not a header"):
        open_store(tmp_path / "s")
