"""Weights files crafted by a hostile user (tests/interop/hostile_files.py): each refused in one line naming the
file, quickly and without allocating what the file claims, and nothing of the file's code is run."""

import json
import resource
import time

import numpy as np
import pytest
import torch

from configs.model import get_model_config
from jax_nano.interop.hf import FAMILIES, INDEX, HFError, hf_config, read_folder, to_hf
from jax_nano.interop.weights import WeightsError, load_weights, read_checkpoint
from tests.interop import hostile_files
from torch_ref.model import MinimalLLM
from torch_ref.tensors import numpy_state_dict

TINY = get_model_config("tiny")


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(0)
    sd = MinimalLLM(TINY).state_dict()
    return {k: v for k, v in sd.items() if k != "lm_head.weight"}


def refused(path, *phrases, reader=load_weights) -> str:
    with pytest.raises(WeightsError) as info:
        reader(state_dict=path) if reader is load_weights else reader(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_a_crafted_archive_of_honest_tensors_loads(tmp_path, tiny_sd):
    """The crafted layout is torch.save's own: honest tensors in it load as the model they are."""
    hostile_files.state_dict_archive(tmp_path / "honest.pt", tiny_sd)
    weights, cfg = load_weights(state_dict=tmp_path / "honest.pt")
    assert cfg.name == "tiny"
    np.testing.assert_array_equal(weights["norm.weight"], tiny_sd["norm.weight"].numpy())


@pytest.mark.parametrize("claimed", [4 << 50, 2 << 30], ids=["4PiB", "2GiB"])
def test_a_tensor_claiming_more_than_its_storage_is_refused_before_allocating(tmp_path, tiny_sd, claimed):
    path = tmp_path / "claim.pt"
    hostile_files.state_dict_archive(path, tiny_sd, widened="token_embedding.weight", claimed_bytes=claimed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(path, "claims more than its storage of 64 elements")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 << 10, f"peak resident memory grew by {grown_kib} KiB"


def test_a_storage_record_larger_than_its_bytes_is_refused(tmp_path):
    path = tmp_path / "record.pt"
    hostile_files.storage_claim(path, (4 << 50) // 4, 4096)
    refused(path, "storage 0 claims 4,503,599,627,370,496 bytes, the file holds 4,096")


def test_a_config_that_contains_itself_is_refused(tmp_path, tiny_sd):
    path = tmp_path / "model.pt"
    hostile_files.self_containing_config(path, tiny_sd)
    refused(path, "contains itself", reader=read_checkpoint)


def test_nested_shared_containers_are_refused(tmp_path):
    hostile_files.nested_shared_lists(tmp_path / "deep.pt", 40)
    refused(tmp_path / "deep.pt", "nested deeper than 32 levels", reader=read_checkpoint)
    hostile_files.nested_shared_lists(tmp_path / "wide.pt", 3, width=200)  # 200**3 values in 3 KB
    refused(tmp_path / "wide.pt", "expand to more than 200,000 values", reader=read_checkpoint)


def test_a_29_mb_pickle_of_nested_shared_pairs_is_refused_at_once(tmp_path):
    path = tmp_path / "nested.pt"
    hostile_files.nested_shared_pairs(path, 29_000_000)
    start = time.perf_counter()
    refused(path, "its pickle is 29,000,018 bytes, more than the 1,048,576", reader=read_checkpoint)
    assert time.perf_counter() - start < 5


def _float8_tensors(tiny_sd) -> dict:
    return {**tiny_sd, "norm.weight": tiny_sd["norm.weight"].to(torch.float8_e4m3fn)}


def test_float8_weights_are_one_line_errors(tmp_path, tiny_sd):
    from safetensors.torch import save_file

    save_file(_float8_tensors(tiny_sd), tmp_path / "f8.safetensors")
    refused(tmp_path / "f8.safetensors", "tensor norm.weight has dtype float8_e4m3fn", "supported: float32")
    torch.save(_float8_tensors(tiny_sd), tmp_path / "f8.pt")
    refused(tmp_path / "f8.pt", "tensor norm.weight has dtype float8_e4m3fn")


def test_export_of_a_hostile_file_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_sd, capsys):
    from safetensors.torch import save_file

    from jax_nano.core.cli import run_main
    from tests.script_modules import load_script

    save_file(_float8_tensors(tiny_sd), tmp_path / "f8.safetensors")
    hostile_files.state_dict_archive(tmp_path / "claim.pt", tiny_sd, widened="token_embedding.weight",
                                     claimed_bytes=4 << 50)
    main = load_script("export").main
    for source, phrase in (("f8.safetensors", "dtype float8_e4m3fn"), ("claim.pt", "claims more than")):
        out = tmp_path / f"out-{source}"
        assert run_main(main, ["--state-dict", str(tmp_path / source), "--format", "safetensors",
                               "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and phrase in err and "\n" not in err, err
        assert not out.exists()


def hf_folder(folder, tiny_sd, weight_map=None):
    """A transformers folder of the tiny model, its weights in one shard named by an index."""
    from safetensors.torch import save_file

    folder.mkdir()
    family = FAMILIES[TINY.mlp]
    config = {"architectures": [family.architecture], "model_type": family.model_type, **hf_config(TINY)}
    (folder / "config.json").write_text(json.dumps(config))
    hf = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_hf(numpy_state_dict(tiny_sd), TINY).items()}
    save_file(hf, folder / "shard-1.safetensors")
    weight_map = weight_map if weight_map is not None else {k: "shard-1.safetensors" for k in hf}
    (folder / INDEX).write_text(json.dumps({"weight_map": weight_map}))
    return folder


def hf_refused(folder, phrase) -> None:
    with pytest.raises(HFError) as info:
        read_folder(folder)
    message = str(info.value)
    assert message.startswith(str(folder)) and phrase in message and "\n" not in message, message


def test_a_shard_index_may_name_only_files_of_its_folder(tmp_path, tiny_sd):
    good = hf_folder(tmp_path / "good", tiny_sd)
    assert read_folder(good)[1].d_model == TINY.d_model
    for i, target in enumerate(["../good/shard-1.safetensors", str(good / "shard-1.safetensors"), ".."]):
        hf_folder(tmp_path / f"bad{i}", tiny_sd, {"model.norm.weight": target})
        hf_refused(tmp_path / f"bad{i}", "not a file of the folder itself")
    for i, weight_map in enumerate([["shard-1.safetensors"], {"model.norm.weight": 3}, "x"]):
        hf_folder(tmp_path / f"typed{i}", tiny_sd, weight_map)
        hf_refused(tmp_path / f"typed{i}", "weight_map is not a mapping of tensor names to file names")


def test_a_shard_that_is_a_symlink_is_not_followed(tmp_path, tiny_sd):
    good = hf_folder(tmp_path / "good", tiny_sd)
    linked = hf_folder(tmp_path / "linked", tiny_sd)
    (linked / "shard-1.safetensors").unlink()
    (linked / "shard-1.safetensors").symlink_to(good / "shard-1.safetensors")
    hf_refused(linked, "it is a symlink, which is not followed")


def test_a_float8_shard_is_a_one_line_error(tmp_path, tiny_sd):
    from safetensors.torch import load_file, save_file

    folder = hf_folder(tmp_path / "f8", tiny_sd)
    tensors = load_file(folder / "shard-1.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.float8_e5m2)
    save_file(tensors, folder / "shard-1.safetensors")
    hf_refused(folder, "tensor model.norm.weight has dtype float8_e5m2")


def test_a_config_that_is_a_device_or_too_deep_is_not_read(tmp_path, tiny_sd):
    folder = hf_folder(tmp_path / "zero", tiny_sd)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to("/dev/zero")  # read whole, it would never end
    hf_refused(folder, "config.json is not a regular file of at most 16,777,216 bytes")
    folder = hf_folder(tmp_path / "deep", tiny_sd)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    hf_refused(folder, "config.json is not readable JSON (RecursionError)")
