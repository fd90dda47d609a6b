"""A bundle for a CPU stand-in of the preset target, built, installed with the network off and run: a clean
Python 3.12 venv holding only part of the preset's packages (CPU wheels, no PyTorch: PyPI's Linux torch wheels for
Python 3.12 are CUDA builds of several GB, so the stand-in runs JAX alone), `run.sh smoke` trains there and
writes its summary under the output folder.

Long (a Python 3.12 venv, about 250 MB of downloads): marked `long`, so only README's third test command runs it.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jax_nano.bundle.targets import PRESETS

ROOT = Path(__file__).resolve().parents[2]
PRESET = PRESETS["cuda13-py312"]
# GPU builds a CPU machine cannot stand in for.
GPU_ONLY = {"jax-cuda13-plugin", "jax-cuda13-pjrt", "torch", "triton"}
# Left out of the stand-in on purpose: matplotlib (and its dependencies) so that the bundle must carry wheels,
# binary ones among them; transformers and safetensors, which the project does not import, to save time.
LEFT_OUT = {"matplotlib", "transformers", "safetensors"}


def python312() -> str | None:
    """A Python 3.12 that runs (a pyenv shim on PATH may only say the version is not selected)."""
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    for candidate in [shutil.which("python3.12"), *pyenv]:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


pytestmark = [
    pytest.mark.long,
    pytest.mark.skipif(python312() is None, reason="no Python 3.12 (python3.12 on PATH or under ~/.pyenv/versions)"),
]


def offline(cmd: list) -> list:
    """`cmd` in a network namespace of its own (no network at all) where this machine allows one."""
    probe = shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    return ["unshare", "-n", *cmd] if probe else cmd


def offline_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "JAX_", "XLA_", "PYTHON"))}
    # No index and no local wheel folder of this machine's pip configuration: only the bundle's wheels.
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """(the stand-in's python, its `pip freeze` file)."""
    home = tmp_path_factory.mktemp("standin")
    subprocess.run([python312(), "-m", "venv", str(home / "venv")], check=True)
    python = str(home / "venv" / "bin" / "python")
    wanted = [f"{name}=={version}" for name, version in PRESET.packages.items() if name not in GPU_ONLY | LEFT_OUT]
    subprocess.run([python, "-m", "pip", "install", "--quiet", *wanted], check=True)
    freeze = home / "freeze.txt"
    freeze.write_text(subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True,
                                     check=True).stdout)
    return python, freeze


@pytest.fixture(scope="module")
def bundle(standin, tmp_path_factory):
    python, freeze = standin
    out = tmp_path_factory.mktemp("b") / "bundle"
    proc = subprocess.run([sys.executable, "scripts/bundle.py", "--out", str(out), "--preinstalled", str(freeze),
                           "--python", "3.12", "--frameworks", "jax", "--max-mb", "80"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_the_bundle_carries_what_the_stand_in_lacks_for_its_python(bundle, standin):
    out, report = bundle
    names = {p.name.split("-")[0].lower() for p in (out / "wheels").glob("*.whl")}
    assert "matplotlib" in names and "pillow" in names, names
    assert not names & {"jax", "jaxlib", "numpy", "torch", "datasets", "gguf"}, names
    assert all("cp312" in p.name or "abi3" in p.name or "none-any" in p.name for p in (out / "wheels").glob("*.whl"))
    assert "torch" in report and "this bundle runs jax only" in report
    assert not (out / "src" / "tests").exists() and (out / "tokenizer" / "tokenizer.json").is_file()


def test_run_sh_smoke_installs_offline_and_trains_into_the_output_folder(bundle, standin, tmp_path):
    out, _ = bundle
    python, _ = standin
    results = tmp_path / "out"
    proc = subprocess.run(offline([str(out / "run.sh"), "smoke", "--max-steps", "4", "--no-bar", "--out",
                                   str(results)]), env=offline_env(PYTHON=python), capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((results / "results" / "smoke-jax.json").read_text())
    assert summary["steps"] == 4 and summary["framework"] == "jax"
    assert (out / "site" / ".installed").is_file() and (out / "site" / "matplotlib").is_dir()
    logs = sorted((results / "logs").glob("smoke-*.json"))
    record = json.loads(logs[-1].read_text())
    assert record["commands"][0]["exit"] == 0 and record["frameworks"] == ["jax"]
    assert "train loss" in (results / "logs" / logs[-1].with_suffix(".log").name).read_text()
    # the wheels went into the bundle, not into the target's own Python
    assert subprocess.run([python, "-c", "import matplotlib"], capture_output=True).returncode != 0


def test_a_gpu_jax_cannot_use_is_one_line_before_any_work(bundle, standin, tmp_path):
    out, _ = bundle
    python, _ = standin
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 580.95.05\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = offline_env(PYTHON=python, PATH=f"{fake}:{os.environ['PATH']}")
    proc = subprocess.run(offline([str(out / "run.sh"), "smoke", "--out", str(tmp_path / "o")]), env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("error: JAX cannot use the NVIDIA GPU (driver 580.95.05"), line
    assert not (tmp_path / "o" / "results").exists()


def test_a_python_without_wheels_is_one_line(standin, tmp_path):
    _, freeze = standin
    proc = subprocess.run([sys.executable, "scripts/bundle.py", "--out", str(tmp_path / "b"), "--preinstalled",
                           str(freeze), "--python", "3.99", "--frameworks", "jax"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no wheel of "), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
