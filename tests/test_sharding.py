"""Data-parallel, FSDP and multi-process training on fake CPU devices: the same optimization as one device.

The pytest process has one device (jax is initialized), so the multi-device runs happen in subprocesses whose
XLA_FLAGS ask for more (tests/sharding_runner.py prints their results as JSON); the single-device reference and
the 1-device resume run here.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_nano.run.speedrun import speedrun
from tests.toy import toy_track

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "sharding_runner.py"
STEPS, TOL = 20, 1e-5


def fake_devices(n: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}


def run_runner(n_devices: int, spec: dict, timeout: int = 240) -> dict:
    out = subprocess.run([sys.executable, str(RUNNER), json.dumps(spec)], env=fake_devices(n_devices),
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def losses(results_dir: Path, run_name: str) -> list:
    lines = (results_dir / f"{run_name}.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def assert_same_curve(curve, reference, what: str):
    curve, reference = np.asarray(curve), np.asarray(reference[: len(curve)])
    assert len(curve) == len(reference), (what, len(curve), len(reference))
    worst = int(np.argmax(np.abs(curve - reference)))
    assert abs(curve[worst] - reference[worst]) <= TOL, (
        f"{what}: step {worst}: {curve[worst]:.7f} vs single device {reference[worst]:.7f}")


@pytest.fixture(scope="module")
def reference(toy_store, tmp_path_factory) -> list:
    """The single-device loss curve (this process: one device, no mesh)."""
    tmp = tmp_path_factory.mktemp("single")
    summary = speedrun(toy_track(toy_store, STEPS), run_name="single", results_dir=tmp / "results",
                       runs_dir=tmp / "runs", show_bar=False)
    assert summary["n_devices"] == 1 and summary["mesh"] == "single-device"
    return losses(tmp / "results", "single")


@pytest.fixture(scope="module")
def four_devices(toy_store, tmp_path_factory):
    """One 4-device subprocess: data parallel, FSDP over 4, and a data=2,fsdp=2 run stopped after 10 steps
    (checkpointed), plus the shardings of a fresh state on two meshes."""
    tmp = tmp_path_factory.mktemp("four")
    spec = {"store": toy_store, "tmp": str(tmp), "steps": STEPS,
            "runs": [{"name": "dp", "mesh": "data=4"}, {"name": "fsdp", "mesh": "fsdp=4"},
                     {"name": "ck", "mesh": "data=2,fsdp=2", "stop_after": 10}],
            "probe": ["data=4", "fsdp=4", "data=2,fsdp=2"]}
    return tmp, run_runner(4, spec)


def test_data_parallel_and_fsdp_match_one_device_and_are_sharded(four_devices, reference):
    _, result = four_devices
    assert result["device_count"] == 4
    for name, mesh in (("dp", "data=4,fsdp=1"), ("fsdp", "data=1,fsdp=4")):
        run = result["runs"][name]
        assert run["finished"] and run["steps"] == STEPS and run["compiles_during_run"] == 0, run
        assert run["n_devices"] == 4 and run["n_processes"] == 1 and run["mesh"] == mesh
        assert_same_curve(run["losses"], reference, name)
    assert np.mean(reference[-5:]) < reference[0] - 1.0  # it learned: the curves compared are not flat

    dp, fsdp, hybrid = (result["probes"][m] for m in ("data=4", "fsdp=4", "data=2,fsdp=2"))
    # Data parallel: every array whole on each of the 4 devices.
    for name, a in dp.items():
        if name != "opt_state_like_embedding":
            assert a["spec"] == [] and a["shard_shapes"] == [a["shape"]] and a["n_devices"] == 4, (name, a)
    # FSDP over 4: the largest divisible dimension split in 4 (L=2 is not divisible, so never the layer axis).
    assert fsdp["embedding"]["spec"] == ["fsdp", None] and fsdp["embedding"]["shard_shapes"] == [[128, 64]]
    assert fsdp["q_proj"]["spec"] == [None, "fsdp", None] and fsdp["q_proj"]["shard_shapes"] == [[2, 16, 64]]
    assert fsdp["gate_proj"]["spec"] == [None, None, "fsdp"] and fsdp["gate_proj"]["shard_shapes"] == [[2, 64, 64]]
    assert fsdp["norm1"]["shard_shapes"] == [[2, 16]]
    # Adam's moments of the embedding are split like the embedding.
    assert len(fsdp["opt_state_like_embedding"]) >= 2
    assert all(a["shard_shapes"] == [[128, 64]] for a in fsdp["opt_state_like_embedding"])
    # data=2,fsdp=2: stacked block weights split along the layer axis (whole matrices per device for Muon).
    assert hybrid["q_proj"]["spec"] == ["fsdp", None, None] and hybrid["q_proj"]["shard_shapes"] == [[1, 64, 64]]
    assert hybrid["gate_proj"]["shard_shapes"] == [[1, 64, 256]]
    assert hybrid["embedding"]["shard_shapes"] == [[256, 64]]


def test_checkpoint_from_four_devices_resumes_on_two_and_on_one(four_devices, reference, toy_store):
    tmp, result = four_devices
    first = result["runs"]["ck"]
    assert not first["finished"] and first["next_step"] == 10
    assert_same_curve(first["losses"], reference, "4 devices, first 10 steps")
    # Two copies of the run: one continues on 2 devices (another subprocess), one on 1 device (here).
    shutil.copytree(tmp / "runs" / "ck", tmp / "runs" / "ck1")
    shutil.copy(tmp / "results" / "ck.jsonl", tmp / "results" / "ck1.jsonl")
    two = run_runner(2, {"store": toy_store, "tmp": str(tmp), "steps": STEPS,
                         "runs": [{"name": "ck", "mesh": "fsdp=2", "resume": True}]})["runs"]["ck"]
    assert two["finished"] and two["steps"] == STEPS and two["n_devices"] == 2
    assert_same_curve(two["losses"], reference, "resumed on 2 devices")
    one = speedrun(toy_track(toy_store, STEPS), run_name="ck1", results_dir=tmp / "results", runs_dir=tmp / "runs",
                   show_bar=False, resume=True)
    assert one["finished"] and one["steps"] == STEPS and one["n_devices"] == 1
    assert_same_curve(losses(tmp / "results", "ck1"), reference, "resumed on 1 device")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_args(store: str, *extra) -> list:
    return [sys.executable, str(ROOT / "scripts" / "speedrun.py"), "--no-bar", "--model", "tiny", "--data", store,
            "--batch-size", "8", "--seq-len", "64", "--tokens", str(8 * 64 * STEPS), "--precision", "float32",
            "--eval-every", "0", "--eval-batches", "2", "--warmup-steps", "1", "--muon-lr", "0.02",
            "--adamw-lr", "0.006", "--ortho-dtype", "float32", *extra]


def run_two_processes(store: str, tmp_path: Path, *extra) -> list:
    """Both processes of a 2 x 2-device jax.distributed run on localhost: [(returncode, stdout, stderr)]."""
    env = {**fake_devices(2), "JAX_NANO_CACHE": str(tmp_path / "cache")}
    common = ["--run-name", "mp", "--mesh", "data=2,fsdp=2", "--coordinator", f"127.0.0.1:{free_port()}",
              "--num-processes", "2", *extra]
    procs = []
    try:
        for i in range(2):
            procs.append(subprocess.Popen(cli_args(store, *common, "--process-id", str(i)), cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


@pytest.mark.long  # two JAX processes trained from the command line; one process, several devices: quick
def test_two_processes_with_two_devices_each_agree_with_one_process(toy_store, reference, tmp_path):
    steps = 6
    first = run_two_processes(toy_store, tmp_path, "--stop-after", str(steps))
    for rc, _out, err in first:
        assert rc == 0, err[-3000:]
    # Only process 0 reports (gloo's own connection lines aside).
    assert "stopped at step 6" in first[0][1] and "stopped at step" not in first[1][1], first
    assert_same_curve(losses(tmp_path / "results", "mp"), reference, "2 processes x 2 devices")
    assert len(losses(tmp_path / "results", "mp")) == steps
    # The multi-host checkpoint was written (one directory, both processes' shards).
    assert (tmp_path / "runs" / "mp" / "checkpoints" / str(steps)).is_dir()
    # Both processes resume it and finish: final evaluation, summary and end checkpoint, on every process.
    rest = run_two_processes(toy_store, tmp_path, "--resume")
    for rc, _out, err in rest:
        assert rc == 0, err[-3000:]
    assert "Active Training Time" in rest[0][1] and "Active Training Time" not in rest[1][1]
    assert_same_curve(losses(tmp_path / "results", "mp"), reference, "2 processes x 2 devices, resumed")
    assert len(losses(tmp_path / "results", "mp")) == STEPS


@pytest.mark.parametrize("devices,extra,message", [
    (1, ["--mesh", "data=8"], "needs 8 devices but only 1 exist"),
    (4, ["--batch-size", "6"], "batch_size 6 does not divide evenly over the 4 devices"),
    (4, ["--mesh", "data=2,model=2"], "unknown axis 'model'"),
    (2, ["--mesh", "data=2", "--framework", "torch"], "apply to the jax framework only"),
])
def test_bad_mesh_is_a_one_line_error(toy_store, tmp_path, devices, extra, message):
    out = subprocess.run(cli_args(toy_store, *extra), cwd=tmp_path, env=fake_devices(devices), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
