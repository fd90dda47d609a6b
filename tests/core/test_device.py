"""Never train on the CPU by accident: the device check on faked machines (no GPU is needed to run these)."""

import os
import subprocess
import sys

import pytest

from jax_nano.core import device
from jax_nano.core.cli import run_main
from jax_nano.core.device import DeviceError, Probe, check_device
from tests.script_modules import load_script

CUDA12_DRIVER, CUDA13_DRIVER = "550.54.15", "580.82.07"
JAX_CPU_ONLY = Probe(False, "CPU-only jaxlib 0.10.2 (no CUDA plugin)")
TORCH_CU130 = Probe(False, "torch 2.13.0 (CUDA 13.0 build)")


def never_called():
    raise AssertionError("this probe must not run here")


@pytest.fixture
def machine(monkeypatch):
    """fake(driver, jax=Probe, torch=Probe): a machine with that driver (None: no NVIDIA GPU); a probe left out
    must not be asked. The environment and JAX's platform setting that "cpu" changes are restored after."""
    for var in ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    jax = sys.modules.get("jax")
    platforms = jax.config.jax_platforms if jax is not None else None

    def fake(driver, jax=None, torch=None):
        monkeypatch.setattr(device, "driver_version", lambda: driver)
        monkeypatch.setattr(device, "jax_gpu_usable", (lambda: jax) if jax is not None else never_called)
        monkeypatch.setattr(device, "torch_gpu_usable", (lambda: torch) if torch is not None else never_called)

    yield fake
    if jax is not None:
        jax.config.update("jax_platforms", platforms)


@pytest.mark.parametrize("driver, extra", [(CUDA12_DRIVER, "cuda12"), (CUDA13_DRIVER, "cuda13")])
def test_gpu_present_and_jax_unusable_names_jax_the_driver_build_and_extra(machine, driver, extra):
    machine(driver, jax=JAX_CPU_ONLY, torch=Probe(True, "torch 2.13.0+cu126"))
    for asked in ("auto", "gpu"):
        with pytest.raises(DeviceError) as info:
            check_device(asked, ("jax", "torch"))
        message = str(info.value)
        assert message.startswith("JAX cannot use the NVIDIA GPU") and "\n" not in message, message
        assert f"driver {driver}" in message and "CPU-only jaxlib 0.10.2" in message, message
        assert f'pip install -e ".[{extra}]"' in message and "--device cpu" in message, message


def test_gpu_present_and_torch_unusable_names_torch_and_its_cuda12_index(machine):
    machine(CUDA12_DRIVER, jax=Probe(True, "jaxlib 0.10.2 with jax-cuda12-plugin 0.10.2"), torch=TORCH_CU130)
    with pytest.raises(DeviceError) as info:
        check_device("auto", ("jax", "torch"))
    message = str(info.value)
    assert message.startswith("PyTorch cannot use the NVIDIA GPU") and "\n" not in message, message
    assert f"driver {CUDA12_DRIVER}" in message and "torch 2.13.0 (CUDA 13.0 build)" in message, message
    assert "+cu126" in message and "--index-url https://download.pytorch.org/whl/cu126" in message, message
    # A JAX-only run does not ask PyTorch at all.
    machine(CUDA12_DRIVER, jax=Probe(True, "jaxlib 0.10.2 with jax-cuda12-plugin 0.10.2"))
    check_device("auto", ("jax",))


def test_both_frameworks_usable_pass(machine):
    machine(CUDA13_DRIVER, jax=Probe(True, "jaxlib"), torch=Probe(True, "torch"))
    check_device("auto", ("jax", "torch"))
    check_device("gpu", ("jax", "torch"))


def test_no_gpu_auto_passes_and_gpu_is_a_one_line_error(machine):
    machine(None)
    check_device("auto", ("jax", "torch"))
    with pytest.raises(DeviceError, match="^--device gpu: this machine has no NVIDIA GPU.*--device cpu$"):
        check_device("gpu", ("jax",))


def test_cpu_passes_with_an_unusable_gpu_present_and_hides_it(machine):
    machine(CUDA12_DRIVER)
    check_device("cpu", ("jax", "torch"))
    assert os.environ["JAX_PLATFORMS"] == "cpu" and os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_driver_version_from_proc_when_nvidia_smi_is_missing(monkeypatch, tmp_path):
    def no_nvidia_smi(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", no_nvidia_smi)
    assert device.driver_version(tmp_path) is None
    (tmp_path / "gpus" / "0000:01:00.0").mkdir(parents=True)
    (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.82.07  "
                                      "Release Build  (dvs-builder@U16-I3-B03-4-3)  Wed Aug 27 2025\n")
    assert device.driver_version(tmp_path) == "580.82.07"
    (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 2024\n")
    assert device.driver_version(tmp_path) == "550.54.15"


@pytest.mark.parametrize("script, argv, fake, expected", [
    ("speedrun", ["--track", "smoke"], dict(driver=CUDA12_DRIVER, jax=JAX_CPU_ONLY), "error: JAX cannot use"),
    ("speedrun", ["--track", "smoke", "--framework", "torch"], dict(driver=CUDA12_DRIVER, torch=TORCH_CU130),
     "error: PyTorch cannot use"),
    ("speedrun", ["--track", "smoke", "--device", "gpu"], dict(driver=None), "error: --device gpu: this machine"),
    ("compare", ["--track", "8M", "--steps", "2"], dict(driver=CUDA13_DRIVER, jax=Probe(True, "jaxlib"),
                                                       torch=TORCH_CU130), "error: PyTorch cannot use"),
])
def test_cli_stops_before_any_work_with_one_line(machine, capsys, monkeypatch, tmp_path, script, argv, fake,
                                                 expected):
    machine(**fake)
    monkeypatch.chdir(tmp_path)
    assert run_main(load_script(script).main, [*argv, "--no-bar"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not any(tmp_path.iterdir()), "nothing is written before the check"
