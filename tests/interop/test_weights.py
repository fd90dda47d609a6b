"""Weights in and out: upstream's model.pt read safely in every layout, junk refused in one line, and our
upstream-layout export loaded the way upstream's trainer loads it."""

import dataclasses
import logging
import os
import sys
import types

import numpy as np
import pytest
import torch

from configs.model import get_model_config
from jax_nano.core.cli import run_main
from jax_nano.interop.weights import (
    WeightsError,
    fit_state_dict,
    load_model,
    load_weights,
    read_checkpoint,
    read_state_dict,
)
from tests.script_modules import load_script, script_cache
from torch_ref.checkpoint import save_torch
from torch_ref.model import MinimalLLM
from torch_ref.tensors import numpy_state_dict, torch_state_dict


def torch_model(cfg, seed=0):
    torch.manual_seed(seed)
    return MinimalLLM(cfg).eval()


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).numpy()


IDS = np.array([[1, 7, 300, 42, 5, 9, 11, 2]])


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("compiled", [False, True], ids=["plain-keys", "orig_mod-keys"])
def test_upstream_model_pt_loads_in_every_layout(tmp_path, fused, compiled):
    cfg = get_model_config("tiny", fused_qkvo=fused)
    model = torch_model(cfg)
    prefix = "_orig_mod." if compiled else ""
    sd = {prefix + k: v.to(torch.bfloat16 if fused else torch.float32) for k, v in model.state_dict().items()}
    save_torch({"model_state_dict": sd, "config": {"d_model": 64}, "metrics": {"val_loss": 3.5}, "step": 7},
               tmp_path / "model.pt")
    read = read_checkpoint(tmp_path / "model.pt")
    assert read["step"] == 7 and read["metrics"] == {"val_loss": 3.5}
    assert set(read["model_state_dict"]) == set(model.state_dict())
    jax_model, got = load_model(state_dict=tmp_path / "model.pt")
    assert got.name == "tiny" and got.fused_qkvo == fused
    model.load_state_dict({k.removeprefix(prefix): v.float() for k, v in sd.items()})
    np.testing.assert_allclose(np.asarray(jax_model(IDS)), torch_logits(model, IDS), atol=1e-5)
    # The other attention layout takes the same weights, split or fused, exactly.
    other = cfg.replace(fused_qkvo=not fused)
    twin = torch_model(other, seed=1)
    twin.load_state_dict(torch_state_dict(fit_state_dict(read["model_state_dict"], other)), strict=True)
    np.testing.assert_allclose(torch_logits(twin, IDS), torch_logits(model, IDS), atol=1e-6)


def test_upstream_pickled_config_is_read_without_running_upstream_code(tmp_path, monkeypatch):
    """The config names upstream's module (`configs.llm_config`, absent here) and, to prove nothing is executed,
    a module whose import writes a marker and a call that would create a directory if it ran."""
    marker, made = tmp_path / "imported", tmp_path / "executed"
    probe = tmp_path / "pkg" / "upstream_probe.py"
    probe.parent.mkdir()
    probe.write_text(f"import dataclasses\nopen({str(marker)!r}, 'w').close()\n\n"
                     "@dataclasses.dataclass\nclass Extra:\n    note: str = 'x'\n")
    monkeypatch.syspath_prepend(str(probe.parent))
    import upstream_probe

    fake = types.ModuleType("configs.llm_config")

    @dataclasses.dataclass
    class BlueberryConfig:
        d_model: int = 64
        n_layers: int = 2
        extra: object = None

    BlueberryConfig.__module__, BlueberryConfig.__qualname__ = fake.__name__, "BlueberryConfig"
    fake.BlueberryConfig = BlueberryConfig
    monkeypatch.setitem(sys.modules, fake.__name__, fake)

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(made),)

    sd = torch_model(get_model_config("tiny")).state_dict()
    save_torch({"model_state_dict": sd, "config": BlueberryConfig(extra=upstream_probe.Extra()),
                "metrics": {"payload": Payload()}, "step": 3}, tmp_path / "model.pt")
    monkeypatch.delitem(sys.modules, fake.__name__)
    monkeypatch.delitem(sys.modules, "upstream_probe")
    marker.unlink()
    with pytest.raises(ModuleNotFoundError):  # what a plain torch.load does with upstream's file here
        torch.load(tmp_path / "model.pt", weights_only=False)

    read = read_checkpoint(tmp_path / "model.pt")
    assert not marker.exists() and not made.exists() and "upstream_probe" not in sys.modules
    assert read["config"] == {"d_model": 64, "n_layers": 2, "extra": {"note": "x"}}
    assert all(torch.equal(read["model_state_dict"][k], v) for k, v in sd.items())


def junk_files(tmp_path) -> dict:
    good = tmp_path / "good.pt"
    save_torch(torch_model(get_model_config("tiny")).state_dict(), good)
    raw = good.read_bytes()
    files = {"empty": b"", "4 junk bytes": b"\x00\x01\x02\x03", "text": b"hello, this is not a checkpoint\n",
             "truncated": raw[: len(raw) // 2], "tail cut": raw[:-100]}
    out = {}
    for name, content in files.items():
        out[name] = tmp_path / f"{name.replace(' ', '_')}.pt"
        out[name].write_bytes(content)
    out["no tensors"] = tmp_path / "list.pt"
    save_torch([1, 2, 3], out["no tensors"])
    return out


def test_junk_files_are_one_line_errors_naming_the_file(tmp_path):
    for name, path in junk_files(tmp_path).items():
        with pytest.raises(WeightsError) as info:
            read_state_dict(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message, (name, message)
    with pytest.raises(WeightsError, match="no such file"):
        read_state_dict(tmp_path / "missing.pt")


def test_a_checkpoint_of_another_preset_is_a_one_line_error(tmp_path):
    save_torch(torch_model(get_model_config("tiny")).state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(WeightsError) as info:
        load_model(state_dict=tmp_path / "tiny.pt", preset="small")
    assert str(tmp_path / "tiny.pt") in str(info.value) and "\n" not in str(info.value)
    assert "model 'small'" in str(info.value)
    with pytest.raises(WeightsError, match="no such run"):
        load_model(run="nope", runs_dir=tmp_path)


@pytest.fixture
def speedrun_main(tmp_path, monkeypatch):
    main = load_script("speedrun").main
    with script_cache(tmp_path / "xla"):
        yield main


def test_init_from_junk_is_a_one_line_error(toy_store, tmp_path, capsys, speedrun_main):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01\x02\x03")
    argv = ["--no-bar", "--model", "tiny", "--data", toy_store, "--seq-len", "64", "--eval-batches", "2",
            "--tokens", "1024", "--init-from", str(junk), "--results-dir", str(tmp_path / "r"),
            "--runs-dir", str(tmp_path / "runs")]
    assert run_main(speedrun_main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(junk) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_runs_checkpoint_loads_its_final_weights_without_a_warning(smoke_cli_run, caplog):
    """generate.py --run and evaluate.py --run read the run's checkpoint through orbax's manager, which knows the
    step's metadata: nothing is logged that a user could not act on (orbax used to warn of a missing
    _CHECKPOINT_METADATA inside the `state` item), and the weights are the run's final ones."""
    folder, out = smoke_cli_run
    assert out.returncode == 0, out.stderr[-2000:]
    with caplog.at_level(logging.INFO):
        weights, cfg = load_weights(run="smoke-jax", runs_dir=folder / "runs")
    said = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert not said, said
    exported = numpy_state_dict(read_state_dict(folder / "smoke.pt"))
    assert cfg.name == "small" and set(weights) == set(exported)
    for name, value in exported.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)
