"""Checkpoint manifests from a hostile user: entries naming files outside the checkpoint, devices, symlinks or
values of the wrong type make the checkpoint damaged (one line), and the fall-back rules of a resume apply."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jax_nano.core import checksums
from jax_nano.core.checkpoints import ASIDE, FALLBACK_FLAG, CheckpointError
from torch_ref import checkpoint as torch_ckpt

ROOT = Path(__file__).resolve().parents[2]


def forge(manifest: Path, files: dict) -> None:
    """Rewrite `manifest` to list `files` ({name: entry}), its own sha256 redone, as a forger would."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    manifest.write_text(json.dumps({"format": checksums.FORMAT, "files": files, "sha256": digest}))


def entry(path: Path) -> dict:
    """The true size and sha256 of `path`: a forged entry that would verify if its name were followed."""
    return {"bytes": path.stat().st_size, "sha256": checksums.sha256_file(path)}


@pytest.fixture
def checkpoint(tmp_path):
    """(root, manifest, the secret outside it): a folder whose honest manifest lists one file."""
    root = tmp_path / "ckpt" / "7"
    root.mkdir(parents=True)
    (root / "state.bin").write_bytes(b"weights")
    secret = tmp_path / "secret.txt"
    secret.write_text("a file outside the checkpoint\n")
    checksums.write_manifest(root / "checksums.json", {"state.bin": root / "state.bin"})
    assert checksums.problem(root, root / "checksums.json") is None
    return root, root / "checksums.json", secret


def one_line(wrong, *phrases) -> None:
    assert wrong is not None and "\n" not in wrong, wrong
    for phrase in phrases:
        assert phrase in wrong, wrong


@pytest.mark.parametrize("name", ["../../secret.txt", "ABSOLUTE", "./state.bin", "sub/../state.bin", "a//b", ""])
def test_an_entry_outside_the_folder_or_not_normalised_is_damage(checkpoint, name):
    root, manifest, secret = checkpoint
    name = str(secret) if name == "ABSOLUTE" else name
    forge(manifest, {"state.bin": entry(root / "state.bin"), name: entry(secret)})
    one_line(checksums.problem(root, manifest), "is damaged", "not a normalised relative path inside the checkpoint")


@pytest.mark.parametrize("value", [5, "x", None, [1], {"bytes": -1, "sha256": "0" * 64},
                                   {"bytes": True, "sha256": "0" * 64}, {"bytes": 7, "sha256": "zz"},
                                   {"bytes": 1 << 60, "sha256": "0" * 64}])
def test_an_entry_of_the_wrong_type_is_damage(checkpoint, value):
    root, manifest, _ = checkpoint
    forge(manifest, {"state.bin": value})
    one_line(checksums.problem(root, manifest), "is damaged", "entry 'state.bin' is not {\"bytes\"")


def test_a_device_or_a_symlink_is_not_read(checkpoint, tmp_path):
    """A symlink to /dev/zero would be hashed forever; one to a file outside would verify."""
    root, manifest, secret = checkpoint
    (root / "zero").symlink_to("/dev/zero")
    forge(manifest, {"state.bin": entry(root / "state.bin"), "zero": {"bytes": 0, "sha256": "0" * 64}})
    one_line(checksums.problem(root, manifest), str(root / "zero"), "a symlink is not followed")
    (root / "zero").unlink()
    (root / "link").symlink_to(secret)
    forge(manifest, {"state.bin": entry(root / "state.bin"), "link": entry(secret)})
    one_line(checksums.problem(root, manifest), str(root / "link"), "a symlink is not followed")
    (root / "link").unlink()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(secret, outside / "s.txt")
    (root / "sub").symlink_to(outside)
    forge(manifest, {"state.bin": entry(root / "state.bin"), "sub/s.txt": entry(secret)})
    one_line(checksums.problem(root, manifest), "lies outside the checkpoint")


def test_a_manifest_too_large_or_not_a_file_is_damage(checkpoint):
    root, manifest, _ = checkpoint
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    one_line(checksums.problem(root, manifest), "is damaged (not a regular file")


def test_the_fall_back_rules_apply_to_a_forged_torch_checkpoint(tmp_path, checkpoint):
    """A PyTorch run's newest checkpoint whose manifest names a file outside (and no longer its own .pt): refused
    naming it, or set aside with --resume-from-good, the older one resumed."""
    _, _, secret = checkpoint
    folder = tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        torch_ckpt.save(folder, step, {"step": step, "w": torch.zeros(3)}, keep=2)
    forge(folder / "2.checksums.json", {"../../secret.txt": entry(secret)})
    with pytest.raises(CheckpointError) as info:
        torch_ckpt.choose_step(folder)
    one_line(str(info.value), "checkpoint of step 2 fails verification", "not a normalised relative path",
             FALLBACK_FLAG)
    forge(folder / "2.checksums.json", {})  # lists nothing: the checkpoint itself is unverified
    one_line(torch_ckpt.problem(folder, 2), "2.pt was not written with the checkpoint")
    assert torch_ckpt.choose_step(folder, fallback=True) == 1
    assert (folder.parent / ASIDE / "2.pt").is_file() and (folder / "1.pt").is_file()


def test_generate_refuses_a_run_whose_manifest_names_a_file_outside(smoke_cli_run, tmp_path):
    """The real command on the smoke run's checkpoint, its manifest forged to list a file outside the run."""
    folder, out = smoke_cli_run
    assert out.returncode == 0, out.stderr[-2000:]
    runs = tmp_path / "runs"
    shutil.copytree(folder / "runs", runs, symlinks=True)
    (run,) = [p for p in runs.iterdir() if (p / "checkpoints").is_dir()]
    step = max((p for p in (run / "checkpoints").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    files = json.loads((step / "checksums.json").read_text())["files"]
    secret = tmp_path / "secret.txt"
    secret.write_text("outside\n")
    forge(step / "checksums.json", {**files, "../../../../secret.txt": entry(secret)})
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), "--run", run.name, "--runs-dir",
                           str(runs), "--prompt", "Hello", "--max-new-tokens", "1"], capture_output=True, text=True,
                          env=env, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    one_line(err[0], f"step {step.name}) fails verification", "not a normalised relative path")
