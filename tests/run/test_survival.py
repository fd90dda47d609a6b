"""Runs against the real world: full and read-only disks, two processes on one run, a longer budget on resume, and
a run that diverges without a NaN. Every fault ends in one line naming what failed, before compilation where it can
be seen before."""

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs.model import get_model_config
from jax_nano.core import guard
from jax_nano.core.guard import Diverged
from jax_nano.core.runlock import RunInUse, RunLock
from jax_nano.core.storage import StorageError
from jax_nano.run import speedrun
from tests.run.test_faults import cli_flags
from torch_ref import checkpoint as torch_ckpt

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def tmpfs(path: Path, size: int, readonly: bool = False):
    """A small file system of its own at `path` (needs root); the test is skipped where it cannot be mounted."""
    path.mkdir(parents=True)
    options = f"size={size}" + (",ro" if readonly else "")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def unwritable(path: Path):
    """A folder this process cannot write: read-only for a user, a read-only mount for root (root ignores modes)."""
    if os.geteuid() != 0:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
    else:
        with tmpfs(path, 1 << 20, readonly=True):
            yield path


def run(track, tmp_path, **kw):
    kw = {"results_dir": tmp_path / "results", "runs_dir": tmp_path / "runs", **kw}
    return speedrun.speedrun(track, show_bar=False, **kw)


def no_setup(monkeypatch):
    """Fail the test if a trainer is set up (compiled): the fault must be found before."""
    make = speedrun.make_trainer

    def trainer_without_setup(*args, **kwargs):
        trainer = make(*args, **kwargs)
        trainer.setup = lambda *a, **k: pytest.fail("the trainer was set up before the fault was found")
        return trainer

    monkeypatch.setattr(speedrun, "make_trainer", trainer_without_setup)


@pytest.mark.parametrize("where", ["results", "runs"])
def test_an_unwritable_folder_is_refused_before_compilation(where, toy_track, tmp_path, monkeypatch):
    no_setup(monkeypatch)
    with unwritable(tmp_path / where) as folder:
        cause = "permission denied" if os.geteuid() != 0 else "read-only file system"
        with pytest.raises(StorageError, match=rf"cannot write {folder}.*: {cause}; "):
            run(toy_track(), tmp_path)


def test_a_disk_without_room_for_a_checkpoint_is_refused_before_compilation(toy_track, tmp_path, monkeypatch):
    no_setup(monkeypatch)
    need = speedrun.checkpoint_bytes(get_model_config("tiny"), "float32")
    with tmpfs(tmp_path / "runs", need // 2):
        with pytest.raises(StorageError, match=r"cannot write .*runs/toy: disk full \(.* MiB free, a checkpoint "
                                               r"of this run needs about 2 MiB\)"):
            run(toy_track(), tmp_path, run_name="toy")


def test_a_disk_that_fills_during_the_run_stops_it_in_one_line(toy_store, tmp_path):
    """JAX saves in the background: the failure is reported at the next step, not at the next save."""
    need = speedrun.checkpoint_bytes(get_model_config("tiny"), "float32")
    with tmpfs(tmp_path / "runs", need + (64 << 10)):  # room for one checkpoint (1.4 MiB), not two
        flags = cli_flags(toy_store, "jax", every=2) + ["--run-name", "full"]
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "speedrun.py"), *flags], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-3000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: cannot write {tmp_path}/runs/full/checkpoints/4: disk full"), out.stderr
        assert "Traceback" not in out.stderr, out.stderr[-5000:]
        kept = sorted(p.name for p in (tmp_path / "runs" / "full" / "checkpoints").iterdir() if p.name.isdigit())
        assert kept == ["2"], kept


def test_a_failed_background_save_is_reported_at_the_next_step(toy_track, toy_store, tmp_path):
    from jax_nano.core.loop import Progress
    from jax_nano.data.loader import TrainLoader
    from jax_nano.data.token_store import open_store
    from jax_nano.train import JaxTrainer

    track = toy_track(checkpoint_every=2)
    with tmpfs(tmp_path / "runs", 4 << 20):
        trainer = JaxTrainer(track, get_model_config("tiny"), run_dir=tmp_path / "runs" / "bg")
        trainer.setup([], None)
        filler = tmp_path / "runs" / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(filler.parent).free - (16 << 10)))
        trainer.save(Progress(next_step=4))  # 16 KiB left: fails in the background
        manager = trainer.checkpoints()._mgr
        deadline = time.monotonic() + 120
        while manager.is_saving_in_progress():
            assert time.monotonic() < deadline, "the save never ended"
            time.sleep(0.01)
        batch = TrainLoader(open_store(toy_store, seq_len=64), 8, track.seed, prefetch=0).batch(0)
        with pytest.raises(StorageError, match=r"checkpoints/4: disk full \(a background checkpoint save failed\)"):
            trainer.step(batch)


def test_a_failed_final_save_keeps_the_summary_and_says_so(toy_track, tmp_path, monkeypatch):
    def full_disk(payload, path, before_rename=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch_ckpt, "save_torch", full_disk)
    track = toy_track(framework="torch", steps=3)
    with pytest.raises(StorageError, match=r"cannot write .*checkpoints/3.pt: disk full.* \(the run's summary is "
                                           r"in .*results/last.json\)"):
        run(track, tmp_path, run_name="last")
    summary = json.loads((tmp_path / "results" / "last.json").read_text())
    assert summary["finished"] and summary["steps"] == 3 and summary["weights_sha256"]
    assert summary["checkpoint"].startswith("not saved: cannot write") and "disk full" in summary["checkpoint"]


def test_a_second_process_on_the_same_run_is_refused_before_any_work(toy_track, tmp_path, monkeypatch):
    no_setup(monkeypatch)
    with RunLock(tmp_path / "runs" / "busy", "busy"):
        with pytest.raises(RunInUse, match=rf"run 'busy' is in use by process {os.getpid()}"):
            run(toy_track(), tmp_path, run_name="busy")
    assert not (tmp_path / "results").exists()


def test_a_longer_budget_on_resume_is_said_and_trains_like_one_run(toy_track, tmp_path, capsys):
    whole = run(toy_track(framework="torch", steps=5), tmp_path, run_name="whole")
    run(toy_track(framework="torch", steps=3), tmp_path, run_name="grown")
    capsys.readouterr()
    grown = run(toy_track(framework="torch", steps=5), tmp_path, run_name="grown", resume=True)
    assert "extending the run's budget from 3 to 5 steps" in capsys.readouterr().err
    assert grown["steps"] == 5 and grown["weights_sha256"] == whole["weights_sha256"]


def test_a_finite_divergence_stops_the_run_and_keeps_an_earlier_checkpoint(toy_track, tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "GUARD_AFTER", 2)
    monkeypatch.setattr(guard, "GUARD_PATIENCE", 3)
    wild = toy_track(framework="torch", steps=20, checkpoint_every=1, keep_checkpoints=20,
                     optim=toy_track().optim.replace(muon_lr=1e6))  # stays finite, at ln(vocab) from step 3 on
    with pytest.raises(Diverged, match=r"diverged: .* for 3 steps in a row .* at step (\d+); stopping \(kept the "
                                       r"checkpoint of step (\d+), the newest that verifies\)") as info:
        run(wild, tmp_path, run_name="wild")
    kept = sorted(int(p.stem) for p in (tmp_path / "runs" / "wild" / "checkpoints").glob("*.pt"))
    assert kept and max(kept) <= info.value.from_step < info.value.step, (kept, info.value.step)
    off = wild.replace(divergence_guard=False, target_tokens=8 * 64 * 8)
    assert run(off, tmp_path, run_name="unguarded")["steps"] == 8
