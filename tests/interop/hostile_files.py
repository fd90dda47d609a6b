"""Crafted files of the kinds a hostile user hands in, written byte by byte the way torch.save lays them out:
a zip archive `archive/data.pkl` + `archive/data/<key>`, with pickles no honest torch.save would write."""

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import torch


class _StorageRef:
    """Pickles as torch.save's persistent id of a storage: ("storage", <torch.XStorage>, key, "cpu", numel)."""

    def __init__(self, kind, key: str, numel: int):
        self.pid = ("storage", kind, key, "cpu", numel)


class _Tensor:
    """Pickles as torch.save's call that rebuilds a tensor: any shape, strides and offset over a storage."""

    def __init__(self, storage: _StorageRef, size, stride, offset=0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _StorageRef) else None


def write_archive(path, data_pkl: bytes, storages: dict | None = None) -> None:
    """A torch.save-shaped zip at `path`: the pickle and raw storage bytes ({key: bytes}), stored uncompressed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")


def pickled(obj) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def storage_claim(path, claimed_elements: int, held_bytes: int) -> None:
    """A state_dict whose one float32 storage declares `claimed_elements`, its entry holding `held_bytes`."""
    ref = _StorageRef(torch.FloatStorage, "0", claimed_elements)
    side = max(1, int(claimed_elements ** 0.5))
    obj = {"token_embedding.weight": _Tensor(ref, (side, claimed_elements // side), (claimed_elements // side, 1))}
    write_archive(path, pickled(obj), {"0": bytes(held_bytes)})


def state_dict_archive(path, state_dict: dict, *, widened: str | None = None, claimed_bytes: int = 0) -> None:
    """`state_dict` (name -> float32 tensor) as torch.save lays it out, each tensor over a storage of its own; the
    tensor `widened` (a matrix) viewed instead with a row stride of 0 as a matrix of `claimed_bytes`, over a
    storage of one row (a few KB of file claiming any size)."""
    objs, raws = {}, {}
    for i, (name, t) in enumerate(state_dict.items()):
        t = t.detach().float().contiguous()
        key = str(i)
        if name == widened:
            cols = t.shape[1]
            rows = max(1, claimed_bytes // (4 * cols))
            objs[name] = _Tensor(_StorageRef(torch.FloatStorage, key, cols), (rows, cols), (0, 1))
            raws[key] = t[0].numpy().tobytes()
        else:
            objs[name] = _Tensor(_StorageRef(torch.FloatStorage, key, t.numel()), t.shape, t.stride())
            raws[key] = t.numpy().tobytes()
    write_archive(path, pickled(objs), raws)


def nested_shared_lists(path, levels: int, width: int = 2) -> None:
    """A pickle of lists each holding the previous one `width` times: `levels` levels of `width`**levels leaves,
    written as memo references (a few bytes a level)."""
    parts = [pickle.EMPTY_LIST, pickle.LONG_BINPUT + struct.pack("<I", 0)]
    for i in range(1, levels + 1):
        get = pickle.LONG_BINGET + struct.pack("<I", i - 1)
        parts += [pickle.POP, pickle.MARK, get * width, pickle.LIST, pickle.LONG_BINPUT + struct.pack("<I", i)]
    _write_config(path, b"".join(parts))


def nested_shared_pairs(path, size: int) -> None:
    """A pickle of about `size` bytes: pairs each holding the previous one twice (DUP, TUPLE2: two bytes a
    level), as deep as the file is long."""
    _write_config(path, pickle.EMPTY_LIST + (pickle.DUP + pickle.TUPLE2) * (size // 2))


def _write_config(path, value: bytes) -> None:
    head = pickle.EMPTY_DICT + pickle.MARK + pickle.BINUNICODE + struct.pack("<I", 6) + b"config"
    write_archive(path, pickle.PROTO + b"\x02" + head + value + pickle.SETITEMS + pickle.STOP)


def self_containing_config(path, state_dict: dict) -> None:
    """Upstream's layout whose config holds itself (pickle's memo makes the cycle)."""
    config = {"d_model": 64}
    config["self"] = config
    buf = io.BytesIO()
    torch.save({"model_state_dict": state_dict, "config": config, "metrics": {}, "step": 1}, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
