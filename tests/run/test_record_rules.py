"""`--record` takes only a run that can stand on the leaderboard: the track's own rules and the parameter band are
checked in one line before any training, and a summary that is unfinished, missed its target or is out of band
is refused after it; LEADERBOARD.md is left as it was."""

import subprocess
import sys
from pathlib import Path

import pytest

from configs.model import get_model_config
from jax_nano.model import count_params as jax_count
from jax_nano.run.eligibility import planned_params, summary_refusal

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flags, message", [
    # The run: the `small` model (7.3M parameters) on the 8M track.
    (("--model", "small"), "model small has 7,275,904 parameters, outside the 8M track's band 84.20M..93.06M"),
    # A run that trains and would be recorded without the rules: the tiny model on the toy store, 3 steps.
    (("--model", "tiny", "--seq-len", "64", "--tokens", "1536", "--precision", "float32", "--eval-batches", "1",
      "--warmup-steps", "1"),
     "changes the 8M track's rules: seq-len 64 (the track's: 2048); target-tokens 1536 (the track's: 8000000)"),
    (("--model", "blueberry-151m"), "model blueberry-151m has 151,032,320 parameters, outside the 8M track's band"),
])
def test_an_ineligible_record_is_refused_before_training(flags, message, toy_store, tmp_path):
    board = tmp_path / "LEADERBOARD.md"
    board.write_text((ROOT / "LEADERBOARD.md").read_text())
    before = board.read_bytes()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "speedrun.py"), "--no-bar", "--track", "8M",
                          "--data", toy_store, *flags, "--record", "--leaderboard", str(board)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-1500:]
    assert out.stderr.startswith("error: --record refused: ") and message in out.stderr, out.stderr[-1500:]
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert board.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LEADERBOARD.md"]  # no run folder, no results


def test_the_planned_count_is_what_the_model_builds():
    for fused in (False, True):
        for preset in ("tiny", "small"):  # JAX's own count (equal to PyTorch's: jax_nano/run/eligibility.py)
            cfg = get_model_config(preset, fused_qkvo=fused)
            assert planned_params(cfg) == jax_count(cfg)
        # SPEC section 1's totals
        assert planned_params(get_model_config("blueberry-151m", fused_qkvo=fused)) == 151_032_320
        assert planned_params(get_model_config("blueberry-88m", fused_qkvo=fused)) == 88_630_528


def test_a_summary_that_cannot_stand_is_refused():
    eligible = {"run": "r", "finished": True, "reached_target": None, "eligible": True, "params": 88_630_528}
    assert summary_refusal(eligible) is None
    assert "did not finish" in summary_refusal({**eligible, "finished": False})
    assert "did not reach the track's target loss" in summary_refusal({**eligible, "reached_target": False})
    assert "not eligible" in summary_refusal({**eligible, "eligible": False, "params": 7_275_904})


def test_a_symlinked_leaderboard_is_refused_before_training(tmp_path):
    real = tmp_path / "elsewhere.md"
    real.write_text((ROOT / "LEADERBOARD.md").read_text())
    (tmp_path / "LEADERBOARD.md").symlink_to(real)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "speedrun.py"), "--no-bar", "--track", "8M",
                          "--record", "--leaderboard", str(tmp_path / "LEADERBOARD.md")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "leaderboard" in out.stderr and "is a symlink" in out.stderr, out.stderr[-1500:]
    assert len(out.stderr.strip().splitlines()) == 1
    assert real.read_text() == (ROOT / "LEADERBOARD.md").read_text()
