"""The speedrun trainers: they learn, stop at the right step, resume exactly and agree with each other."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jax_nano.checkpoint import Checkpoints
from jax_nano.core.guard import Diverged
from jax_nano.run.speedrun import RunError, speedrun

ROOT = Path(__file__).resolve().parents[2]


def run(track, tmp_path, **kw):
    return speedrun(track, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs", show_bar=False, **kw)


def losses(tmp_path, run_name):
    lines = (tmp_path / "results" / f"{run_name}.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def test_jax_training_lowers_the_loss_without_recompiling(toy_track, tmp_path):
    summary = run(toy_track(), tmp_path)
    curve = losses(tmp_path, summary["run"])
    assert len(curve) == summary["steps"] == 30
    assert np.mean(curve[-5:]) < curve[0] - 1.0, f"loss did not fall: {curve[0]:.3f} -> {curve[-5:]}"
    assert summary["compiles_during_run"] == 0
    assert (tmp_path / "results" / f"{summary['run']}.png").stat().st_size > 0
    assert summary["val_loss"] < curve[0]


def test_loss_track_stops_at_the_true_first_step_under_target(toy_track, tmp_path):
    reference = run(toy_track(), tmp_path, run_name="ref", export_to=tmp_path / "ref.pt")
    curve = losses(tmp_path, "ref")
    # A target first met at step k, with k well inside the run and after the loss has already fallen.
    k = next(i for i in range(5, len(curve)) if curve[i] < min(curve[:i]) - 1e-3)
    target = curve[k]
    summary = run(toy_track(target_tokens=None, target_loss=target, max_steps=len(curve)), tmp_path,
                  run_name="loss-track", export_to=tmp_path / "stop.pt")
    assert summary["reached_target"] and summary["steps"] == k + 1, (k, summary["steps"])
    assert summary["tokens"] == (k + 1) * 8 * 64
    assert losses(tmp_path, "loss-track") == curve[: k + 1]
    # The weights are those after step k, not after the step dispatched while step k's loss was read.
    exact = run(toy_track(max_steps=k + 1), tmp_path, run_name="k-steps", export_to=tmp_path / "exact.pt")
    assert exact["steps"] == k + 1 and reference["steps"] > k + 1
    stopped, expected = torch.load(tmp_path / "stop.pt"), torch.load(tmp_path / "exact.pt")
    assert all(torch.equal(stopped[n], expected[n]) for n in expected)


def hlo_count(hlo: str, *opcodes: str) -> int:
    """Instructions with one of these opcodes in optimized HLO text (`%copy.3 = f32[64]{0} copy(%p)`)."""
    return sum(len(re.findall(rf"[ )]{re.escape(op)}\(", hlo)) for op in opcodes)


def test_loss_track_step_has_no_conditional_and_no_extra_copies(toy_track):
    """The target check costs the compiled loss-track step nothing: no conditional (XLA's GPU runtime waits on
    the host for its predicate every step) and no more copies than the token-track step (a no-op branch made XLA
    copy the whole state every step: 172 copies against 99 on this model before)."""
    from configs.model import get_model_config
    from jax_nano.train import JaxTrainer

    hlo = {}
    for name, track in (("token", toy_track()), ("loss", toy_track(target_tokens=None, target_loss=3.0, max_steps=30))):
        hlo[name] = JaxTrainer(track, get_model_config(track.model)).compile_step().as_text()
    copies = {name: hlo_count(text, "copy", "copy-start") for name, text in hlo.items()}
    assert hlo_count(hlo["token"], "while") > 0 and copies["token"] > 0, "the counter finds nothing: HLO text changed?"
    assert hlo_count(hlo["loss"], "conditional") == 0
    assert copies["loss"] <= copies["token"], copies


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_killed_and_resumed_run_equals_uninterrupted_run(toy_track, tmp_path, framework):
    track = toy_track(framework=framework, checkpoint_every=4, target_tokens=8 * 64 * 14)
    whole = run(track, tmp_path, run_name="whole")
    first = run(track, tmp_path, run_name="split", stop_after=9)
    assert not first["finished"] and first["next_step"] == 9
    resumed = run(track, tmp_path, run_name="split", resume=True)
    # Bit-identical on CPU float32: same data position, optimizer state and weights.
    assert losses(tmp_path, "split") == losses(tmp_path, "whole")
    assert resumed["val_loss"] == whole["val_loss"] and resumed["steps"] == whole["steps"] == 14


def test_jax_and_torch_trainers_give_the_same_loss_curve(toy_track, tmp_path):
    """Same initial weights (exported from JAX), same batches, float32: curves within 1e-4 for 30 steps."""
    init = run(toy_track(max_steps=1, optim=toy_track().optim.replace(muon_lr=0.0, adamw_lr=0.0)), tmp_path,
               run_name="init", export_to=tmp_path / "init.pt")
    assert init["steps"] == 1
    for framework in ("jax", "torch"):
        run(toy_track(framework=framework), tmp_path, run_name=framework, init_from=tmp_path / "init.pt")
    jax_curve, torch_curve = np.array(losses(tmp_path, "jax")), np.array(losses(tmp_path, "torch"))
    worst = int(np.argmax(np.abs(jax_curve - torch_curve)))
    assert len(jax_curve) == len(torch_curve) == 30
    assert abs(jax_curve[worst] - torch_curve[worst]) <= 1e-4, (
        f"step {worst}: jax {jax_curve[worst]:.6f} torch {torch_curve[worst]:.6f}")


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(toy_track, tmp_path):
    blowup = toy_track(checkpoint_every=1, optim=toy_track().optim.replace(adamw_lr=1e38))
    with pytest.raises(Diverged, match=r"non-finite train loss .* at step (\d+)") as info:
        run(blowup, tmp_path, run_name="nan")
    kept = sorted(int(p.name) for p in (tmp_path / "runs" / "nan" / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and max(kept) <= info.value.step, (kept, info.value.step)
    assert f"kept the checkpoint of step {max(kept)}, the newest that verifies" in str(info.value), str(info.value)
    assert Checkpoints(tmp_path / "runs" / "nan", 2).problem(max(kept)) is None


def test_resume_errors_are_one_line(toy_track, tmp_path):
    with pytest.raises(RunError, match="has no checkpoint"):
        run(toy_track(), tmp_path, run_name="never", resume=True)
    run(toy_track(max_steps=4, checkpoint_every=2), tmp_path, run_name="taken")
    with pytest.raises(RunError, match="already has checkpoints"):
        run(toy_track(max_steps=4), tmp_path, run_name="taken")


def cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "speedrun.py"), "--no-bar", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def cli_together(arg_lists, cwd) -> list[tuple[int, str]]:
    """(exit code, stderr) of each command line, all started at once: each spends its seconds importing."""
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "speedrun.py"), "--no-bar", *args], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for args in arg_lists]
    return [(proc.returncode, err) for proc, (_, err) in ((p, p.communicate(timeout=300)) for p in procs)]


def test_cli_bad_input_is_a_one_line_error_and_overwrites_nothing(toy_store, tmp_path):
    base = ["--model", "tiny", "--data", toy_store, "--seq-len", "64", "--warmup-steps", "1", "--eval-batches", "2"]
    cases = {
        ("--track", "nope"): "unknown track 'nope'",
        ("--tokens", "100", "--target-loss", "3"): "--tokens and --target-loss conflict",
        ("--resume",): "has no checkpoint",
        ("--record",): "has no leaderboard",
        ("--data", str(tmp_path / "missing")): "does not exist",
        ("--muon-lr", "-1"): "muon_lr=-1.0 is negative",
        # Refused before the run, not after it.
        ("--track", "8M", "--record", "--leaderboard", str(tmp_path / "notes.md")): "has no table for track '8M'",
    }
    (tmp_path / "notes.md").write_text("# notes\n")
    for (extra, message), (code, err) in zip(cases.items(), cli_together([[*base, *e] for e in cases], tmp_path)):
        assert code == 2, (extra, err[-500:])
        assert message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1, err
    # A checkpoint of another model, then a corrupted one: refused, and left where it was.
    assert cli(*base, "--max-steps", "2", "--run-name", "r", cwd=tmp_path).returncode == 0
    before = sorted(p.name for p in (tmp_path / "runs" / "r" / "checkpoints").iterdir())
    foreign = cli(*base, "--max-steps", "2", "--run-name", "r", "--resume", "--batch-size", "4", cwd=tmp_path)
    assert foreign.returncode == 2 and "batch_size: checkpoint 8, now 4" in foreign.stderr, foreign.stderr[-800:]
    for f in (tmp_path / "runs" / "r" / "checkpoints").rglob("*"):
        if f.is_file() and f.suffix != ".json":
            f.write_bytes(b"garbage")
    broken = cli(*base, "--max-steps", "2", "--run-name", "r", "--resume", cwd=tmp_path)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr, broken.stderr[-800:]
    assert "checkpoint of step 2 fails verification" in broken.stderr, broken.stderr[-800:]
    assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "r" / "checkpoints").iterdir()) == before


def test_smoke_command_runs_from_the_cli(smoke_cli_run):
    folder, out = smoke_cli_run
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Active Training Time" in out.stdout and (folder / "results" / "smoke-jax.json").is_file()
    assert json.loads((folder / "results" / "smoke-jax.json").read_text())["steps"] == 8


def test_a_runs_summary_becomes_a_row_of_its_track_table(toy_store, tmp_path):
    """The row `--record` appends, from a real run's summary; the tiny model itself is refused by `--record`
    (tests/run/test_record_rules.py), so the row is appended here as scripts/speedrun.py appends it."""
    from jax_nano.core.leaderboard import append_row, read_rows, row_from_summary
    from jax_nano.run.eligibility import summary_refusal

    board = tmp_path / "LEADERBOARD.md"
    board.write_text((ROOT / "LEADERBOARD.md").read_text())
    out = cli("--track", "8M", "--model", "tiny", "--data", toy_store, "--seq-len", "64", "--batch-size", "8",
              "--tokens", str(8 * 64 * 3), "--precision", "float32", "--eval-batches", "2", "--warmup-steps", "1",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    finished = json.loads((tmp_path / "results" / "8M-jax.json").read_text())
    assert "is not eligible: 156,032 parameters" in summary_refusal(finished)
    append_row(board, "8M", row_from_summary(finished))
    rows = read_rows(board)
    assert [len(rows[t]) for t in ("8M", "4.5loss", "1B")] == [1, 0, 0]
    summary = json.loads((tmp_path / "results" / "8M-jax.json").read_text())
    assert rows["8M"][0]["framework"] == "jax" and rows["8M"][0]["steps"] == "3"
    assert rows["8M"][0]["active training time"] == summary["active_time"]
