"""`scripts/speedrun.py --record --repeats N`: N runs, one row of their mean and spread, and the claim's p-value
against the fastest row already there for the same device. `--record` refuses the tiny model (its rules and band
are tested in tests/run/test_record_rules.py), so the row and the claim are made from the repeated runs' summaries
as scripts/speedrun.py makes them."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from jax_nano.core.leaderboard import append_row, read_rows, row_from_summaries
from jax_nano.run import records

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.long  # two runs through the command line; the rows and the claim are unit-tested in the quick suite
def test_repeated_runs_record_one_row_and_print_the_claims_p_value(toy_store, tmp_path):
    device = platform.processor() or "CPU"  # what the JAX trainer reports for a CPU
    board = tmp_path / "LEADERBOARD.md"
    board.write_text((ROOT / "LEADERBOARD.md").read_text())
    earlier = [{"date": "2026-12-01", "framework": "torch", "device": device, "active_time_s": t, "steps": 3,
                "tokens": 1536, "train_loss": 6.0, "val_loss": 6.1, "setup_time_s": 1.0, "params": 1,
                "commit": "old1234", "tokens_per_s": 1536 / t, "mfu": None} for t in (1000.0, 1010.0, 990.0)]
    append_row(board, "8M", row_from_summaries(earlier))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "speedrun.py"), "--no-bar", "--track", "8M", "--model", "tiny",
         "--data", toy_store, "--seq-len", "64", "--batch-size", "8", "--tokens", str(8 * 64 * 3), "--precision",
         "float32", "--eval-batches", "2", "--warmup-steps", "1", "--repeats", "2"], cwd=tmp_path,
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 runs: Active Training Time" in out.stdout
    runs = [json.loads((tmp_path / "results" / f"8M-jax-{i}of2.json").read_text()) for i in (1, 2)]
    claim = records.claim(board, "8M", runs)
    assert claim.startswith("record claim:"), claim
    assert f"the fastest 8M row on {device} (2026-12-01, torch, old1234, 3 run(s)): faster by" in claim, claim
    assert float(claim.split("p = ")[1].split()[0]) < 1e-3, claim
    append_row(board, "8M", row_from_summaries(runs))
    rows = read_rows(board)["8M"]
    assert len(rows) == 2 and rows[1]["runs"] == "2" and " ± " in rows[1]["active training time"]
    assert rows[1] == row_from_summaries(runs)
