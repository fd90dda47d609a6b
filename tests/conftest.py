"""Fixtures shared by the training tests: a small learnable token store, tracks that run in seconds, and one smoke
run from the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from jax_nano.core.cli import use_compilation_cache
from jax_nano.data.token_store import write_store
from tests import toy
from tests.toy import SEQ, VOCAB


def session_folder(tmp_path_factory) -> Path:
    """This test session's folder, shared by its pytest-xdist workers (each has its own below it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the session, its workers and the commands its tests start (they read
    JAX_NANO_CACHE): most tests train the same toy step, and each program is then compiled once. A test that
    needs a cold cache sets its own."""
    path = session_folder(tmp_path_factory) / "xla-cache"
    path.mkdir(exist_ok=True)
    os.environ["JAX_NANO_CACHE"] = str(path)
    use_compilation_cache(path)


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> str:
    """Rows of arithmetic progressions mod 512 (random start and stride): a tiny model learns them in steps."""
    rng = np.random.default_rng(0)
    n_rows = 400
    start = rng.integers(0, VOCAB, (n_rows, 1))
    stride = rng.integers(1, 8, (n_rows, 1))
    rows = (start + stride * np.arange(SEQ)[None, :]) % VOCAB
    path = tmp_path_factory.mktemp("store") / "toy"
    write_store(path, rows.astype(np.uint16).reshape(-1), seq_len=SEQ, vocab_size=VOCAB, source="test",
                     tokenizer="none")
    return str(path)


@pytest.fixture
def toy_track(toy_store):
    """A float32 token track of the tiny model on the toy store; tests change what they need."""
    return lambda **changes: toy.toy_track(toy_store, **changes)


@pytest.fixture(scope="session")
def smoke_cli_run(tmp_path_factory):
    """`scripts/speedrun.py --track smoke` cut to 8 steps, run once for every test that needs a real-vocabulary
    model trained from the command line: (its folder, the finished process); the weights are in smoke.pt. Under
    pytest-xdist the workers share one run: the first makes it in the session's common folder, under a lock."""
    root = session_folder(tmp_path_factory)
    folder = root / "smoke-cli"
    with FileLock(str(root / "smoke-cli.lock")):
        if not (folder / "done.json").is_file():
            folder.mkdir(exist_ok=True)
            script = Path(__file__).resolve().parents[1] / "scripts" / "speedrun.py"
            out = subprocess.run([sys.executable, str(script), "--no-bar", "--track", "smoke", "--max-steps", "8",
                                  "--export-torch", "smoke.pt"], cwd=folder, capture_output=True, text=True,
                                 timeout=600)
            (folder / "done.json").write_text(json.dumps({"returncode": out.returncode, "stdout": out.stdout,
                                                          "stderr": out.stderr}))
    return folder, subprocess.CompletedProcess([], **json.loads((folder / "done.json").read_text()))
