"""Fault injection: every file of a checkpoint truncated, flipped or deleted, a run killed -9 in the middle of a
save, and a run sent SIGTERM or SIGINT (once, or twice), for both frameworks. Each case either resumes
bit-identically from a checkpoint that verifies or stops with a one-line error that names the step and the file;
none trains on damaged weights.

One short run per framework is trained once; each case damages a copy of its checkpoints and needs only a
restore and two steps of the already compiled trainer.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from configs.model import get_model_config
from jax_nano.core import checksums
from jax_nano.core.checkpoints import FALLBACK_FLAG, CheckpointError
from jax_nano.data.loader import TrainLoader
from jax_nano.data.token_store import open_store
from jax_nano.run import speedrun
from tests import toy
from torch_ref.tensors import numpy_state_dict

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 6, 2  # checkpoints at steps 4 and 6 are kept (keep_checkpoints 2); the run's last is 6


def fault_track(store: str, framework: str):
    return toy.toy_track(store, steps=STEPS, checkpoint_every=EVERY, framework=framework)


def cli_flags(store: str, framework: str, every: int = EVERY) -> list:
    """The flags of scripts/speedrun.py that give fault_track (with checkpoints every `every` steps)."""
    return ["--model", "tiny", "--data", store, "--batch-size", "8", "--seq-len", "64", "--tokens",
            str(8 * 64 * STEPS), "--precision", "float32", "--eval-every", "0", "--eval-batches", "2",
            "--warmup-steps", "1", "--muon-lr", "0.02", "--adamw-lr", "0.006", "--ortho-dtype", "float32",
            "--checkpoint-every", str(every), "--framework", framework, "--torch-compile", "off", "--no-bar"]


@pytest.fixture(scope="module", params=["jax", "torch"])
def trained(request, toy_store, tmp_path_factory):
    """An uninterrupted run: its checkpoints, its final weights, and its trainer (set up, compiled) for reuse."""
    framework = request.param
    tmp = tmp_path_factory.mktemp(f"trained-{framework}")
    made, make = [], speedrun.make_trainer

    def keep(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(speedrun, "make_trainer", keep)
        summary = speedrun.speedrun(fault_track(toy_store, framework), run_name="run", results_dir=tmp / "results",
                                    runs_dir=tmp / "runs", show_bar=False, export_to=tmp / "final.pt")
    return {"framework": framework, "tmp": tmp, "run": tmp / "runs" / "run", "summary": summary,
            "final": numpy_state_dict(torch.load(tmp / "final.pt")), "trainer": made[0], "store": toy_store}


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path: Path):
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    for i in range(max(0, mid - 32), min(len(raw), mid + 32)):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def delete(path: Path):
    path.unlink()


FAULTS = {"truncated": truncate, "flipped": flip, "deleted": delete}


def same_weights(weights: dict, expected: dict) -> bool:
    return weights.keys() == expected.keys() and all(
        weights[k].dtype == expected[k].dtype and np.array_equal(weights[k], expected[k]) for k in expected)


def resume_and_finish(trainer, run_dir: Path, store: str, fallback: bool):
    """Restore as `--resume` does and train to the end of the run; the final weights."""
    trainer.close()
    trainer.run_dir = run_dir
    progress = trainer.restore(trainer.resume_step(fallback))
    loader = TrainLoader(open_store(store, seq_len=64), 8, trainer.track.seed, prefetch=0)
    for step in range(progress.next_step, STEPS):
        trainer.read(trainer.step(loader.batch(step)))
    return progress.next_step, trainer.export()


def test_every_damaged_checkpoint_file_is_refused_or_resumed_exactly(trained, tmp_path):
    trainer, store = trained["trainer"], trained["store"]
    folder = trained["run"] / "checkpoints"
    newest = folder / "6" if trained["framework"] == "jax" else folder
    files = sorted(p for p in newest.rglob("*") if p.is_file() and (newest != folder or p.name.startswith("6.")))
    assert len(files) >= (10 if trained["framework"] == "jax" else 2), files
    for i, target in enumerate(files):
        for fault, damage in FAULTS.items():
            case = tmp_path / f"{i}-{fault}"
            shutil.copytree(trained["run"], case)
            damaged = case / target.relative_to(trained["run"])
            damage(damaged)
            before = snapshot(case)
            what = f"{target.relative_to(trained['run'])} {fault}"
            try:
                resumed_from, weights = resume_and_finish(trainer, case, store, fallback=False)
            except CheckpointError as e:
                message = str(e)
                assert "\n" not in message and "of step 6 fails verification" in message, (what, message)
                assert str(damaged) in message, (what, message)
                assert f"step 4 verifies: pass {FALLBACK_FLAG}" in message, (what, message)
                assert snapshot(case) == before, f"{what}: a refused resume changed the run's files"
                resumed_from, weights = resume_and_finish(trainer, case, store, fallback=True)
                assert resumed_from == 4, what
                assert any((case / "damaged-checkpoints").iterdir()), f"{what}: the failing checkpoint was not kept"
            else:
                if damaged.name == "6.pt" and fault == "deleted":  # no checkpoint of step 6 any more
                    assert resumed_from == 4, what
                else:  # orbax writes these after the checksums; they hold no state
                    assert damaged.name in ("_CHECKPOINT_METADATA", "commit_success.txt"), what
                    assert damaged.parent.name == "6" and resumed_from == 6, what
            assert same_weights(weights, trained["final"]), f"{what}: weights differ from the uninterrupted run"


def test_a_damaged_checkpoint_is_refused_before_setup_and_compilation(trained, tmp_path, monkeypatch):
    case = tmp_path / "runs" / "run"
    shutil.copytree(trained["run"], case)
    newest = case / "checkpoints" / ("6" if trained["framework"] == "jax" else "6.pt")
    flip(max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size) if newest.is_dir()
         else newest)

    make = speedrun.make_trainer

    def trainer_without_setup(*args, **kwargs):
        trainer = make(*args, **kwargs)

        def no_setup(*args, **kwargs):
            raise AssertionError("the trainer was set up (and compiled) before the checkpoint was verified")

        trainer.setup = no_setup
        return trainer

    monkeypatch.setattr(speedrun, "make_trainer", trainer_without_setup)
    with pytest.raises(CheckpointError, match=f"of step 6 fails verification.*step 4 verifies: pass {FALLBACK_FLAG}"):
        speedrun.speedrun(fault_track(trained["store"], trained["framework"]), run_name="run", resume=True,
                          results_dir=tmp_path / "results", runs_dir=tmp_path / "runs", show_bar=False)


def test_checkpoints_without_checksums_are_refused(trained, tmp_path):
    """Checkpoints written before checksums existed: refused, none verifies, nothing is moved or deleted."""
    case = tmp_path / "old"
    shutil.copytree(trained["run"], case)
    for manifest in case.rglob("*checksums.json"):
        manifest.unlink()
    before = snapshot(case)
    for fallback in (False, True):
        with pytest.raises(CheckpointError, match=r"of step 6 fails verification: .*checksums.json is missing.*"
                                                  r"no older checkpoint verifies"):
            resume_and_finish(trained["trainer"], case, trained["store"], fallback=fallback)
    assert snapshot(case) == before


def test_summary_records_the_weights_and_data_checksums(trained):
    summary = trained["summary"]
    assert summary["weights_sha256"] == checksums.weights_sha256(trained["final"])
    store = open_store(trained["store"])
    assert summary["data_sha256"] == store.header["sha256"]
    assert summary["data_header_sha256"] == hashlib.sha256(Path(trained["store"], "header.json").read_bytes()
                                                           ).hexdigest()
    # The same weights hash the same in either framework: a torch model loaded with these weights exports them.
    from torch_ref.train import TorchTrainer

    torch_trainer = TorchTrainer(fault_track(trained["store"], "torch"), get_model_config("tiny"),
                                 init_weights=trained["final"])
    torch_trainer.setup([], None)
    assert checksums.weights_sha256(torch_trainer.export()) == summary["weights_sha256"]
    changed = {name: a.copy() for name, a in trained["final"].items()}
    next(iter(changed.values())).reshape(-1)[0] += 1
    assert checksums.weights_sha256(changed) != summary["weights_sha256"]


def test_run_killed_inside_a_checkpoint_save_resumes_exactly(trained, tmp_path):
    framework, store = trained["framework"], trained["store"]
    env = {**os.environ, "STALL_STEP": "4", "STALL_MARKER": str(tmp_path / "stalled"),
           "PYTHONPATH": str(ROOT)}
    flags = cli_flags(store, framework) + ["--run-name", "killed"]
    runner = ROOT / "tests" / "run" / "fault_runner.py"
    proc = subprocess.Popen([sys.executable, str(runner), *flags], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "stalled").exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never reached the save of step 4"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    folder = tmp_path / "runs" / "killed" / "checkpoints"
    # The kill landed inside the save of step 4: its files are there, unfinished; step 2 is the last finished one.
    names = sorted(p.name for p in folder.iterdir())
    if framework == "jax":
        assert "4.orbax-checkpoint-tmp" in names and "4" not in names and "2" in names, names
        assert any((folder / "4.orbax-checkpoint-tmp" / "state").rglob("*")), "the save had not begun writing"
    else:
        assert "4.pt.tmp" in names and "4.pt" not in names and "2.pt" in names, names
    if framework == "jax":  # from the command line: it compiles from the cache the killed run filled
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "speedrun.py"), *flags, "--resume"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "fails verification" not in out.stderr, out.stderr
        summary = json.loads((tmp_path / "results" / "killed.json").read_text())
    else:
        summary = speedrun.speedrun(fault_track(store, framework), run_name="killed", resume=True, show_bar=False,
                                    results_dir=tmp_path / "results", runs_dir=tmp_path / "runs")
    assert summary["steps"] == STEPS
    assert summary["weights_sha256"] == trained["summary"]["weights_sha256"]


def start_runner(tmp_path: Path, flags: list, **faults) -> subprocess.Popen:
    """tests/run/fault_runner.py with `flags` and the faults it reads from the environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           **{k: str(v) for k, v in faults.items()}}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "run" / "fault_runner.py"), *flags], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the run never wrote {marker.name}"
        time.sleep(0.05)


def logged_steps(path: Path) -> list:
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def resume_in_process(trained, tmp_path: Path, name: str, every: int) -> dict:
    return speedrun.speedrun(fault_track(trained["store"], trained["framework"]).replace(checkpoint_every=every),
                             run_name=name, resume=True, show_bar=False, results_dir=tmp_path / "results",
                             runs_dir=tmp_path / "runs")


def test_a_signal_saves_a_checkpoint_and_the_resume_matches_an_uninterrupted_run(trained, tmp_path):
    """SIGTERM (JAX) and SIGINT (PyTorch), with --checkpoint-every 0: the run finishes its step, saves, says how to
    resume in one line and exits 143 / 130."""
    framework = trained["framework"]
    sig = signal.SIGTERM if framework == "jax" else signal.SIGINT
    flags = cli_flags(trained["store"], framework, every=0) + ["--run-name", "cut"]
    proc = start_runner(tmp_path, flags, PAUSE_STEP=3, PAUSE_MARKER=tmp_path / "paused")
    try:
        wait_for(tmp_path / "paused", proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err
    # The loss of step 3 was read with step 4 dispatched (lag 1): the run stops after step 4, at next step 5.
    saved = Path("runs") / "cut" / "checkpoints" / ("5" if framework == "jax" else "5.pt")
    command = "python scripts/speedrun.py " + " ".join(flags) + " --resume"
    assert err.strip().splitlines()[-1] == f"{sig.name}: stopped at step 5 (checkpoint {saved}); continue with: " \
                                           f"{command}", err
    partial = json.loads((tmp_path / "results" / "cut.json").read_text())
    assert partial["finished"] is False and partial["interrupted"] == sig.name and partial["next_step"] == 5
    summary = resume_in_process(trained, tmp_path, "cut", every=0)
    assert summary["steps"] == STEPS and summary["weights_sha256"] == trained["summary"]["weights_sha256"]
    assert logged_steps(tmp_path / "results" / "cut.jsonl") == list(range(STEPS))


def test_a_second_signal_during_the_save_exits_at_once_and_keeps_the_previous_checkpoint(trained, tmp_path):
    if trained["framework"] != "torch":
        pytest.skip("the second signal's path is the driver's, the same for both frameworks: PyTorch is quicker")
    flags = cli_flags(trained["store"], "torch", every=3) + ["--run-name", "twice"]
    proc = start_runner(tmp_path, flags, PAUSE_STEP=3, PAUSE_MARKER=tmp_path / "paused", STALL_STEP=5,
                        STALL_MARKER=tmp_path / "stalled")
    try:
        wait_for(tmp_path / "paused", proc)
        proc.send_signal(signal.SIGTERM)
        wait_for(tmp_path / "stalled", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("second SIGTERM: exiting now without saving"), err
    folder = tmp_path / "runs" / "twice" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".pt") == ["3.pt"]
    assert logged_steps(tmp_path / "results" / "twice.jsonl") == [0, 1, 2, 3, 4]
    summary = resume_in_process(trained, tmp_path, "twice", every=3)
    assert summary["weights_sha256"] == trained["summary"]["weights_sha256"]
    assert logged_steps(tmp_path / "results" / "twice.jsonl") == list(range(STEPS))  # steps 3, 4 not twice
