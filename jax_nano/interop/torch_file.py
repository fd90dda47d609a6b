"""A file written by `torch.save` (a state_dict, or upstream's trainer's `model.pt`) read as untrusted data.

The file is a zip archive: `<dir>/data.pkl` (a pickle of the object) and `<dir>/data/<key>` (the raw bytes of
each storage the pickle names). `torch.load` is not used: it trusts the sizes a file declares and allocates them
before it looks at the bytes, and its pickle rebuilds whatever the file names. Here, before anything is allocated:
- the archive has at most MAX_ENTRIES entries, stored uncompressed (as torch.save writes them), and its pickle is
  at most MAX_PICKLE_BYTES: a pickle builds at most a few objects per byte, so this bounds the memory it takes;
- every storage the pickle declares is compared with the bytes its entry holds (element count times element
  size, exactly), and every tensor's shape, strides and offset must lie inside its storage with no more elements
  than it holds, so no tensor is larger than the bytes of the file;
- the pickle may name only tensor rebuilders, storage types, dtypes, sizes and ordered dicts; any other class
  or function becomes an inert `Opaque` record of its pickled arguments and state, and nothing is imported or run;
- the object read is walked once without recursion: at most MAX_DEPTH levels and MAX_NODES values (a container
  reached twice counts twice, so a structure of shared lists cannot grow when it is turned into plain values),
  and a container that contains itself is refused.
Every refusal is a `TorchFileError`, one line naming the problem.
"""

import io
import pickle
import zipfile
from collections import OrderedDict

import torch

from configs.errors import UserError

MAX_PICKLE_BYTES = 1 << 20  # a 151M model's state_dict pickles to ~40 KB; upstream's model.pt adds a small config
MAX_ENTRIES = 1 << 16
MAX_DEPTH = 32
MAX_NODES = 200_000
MAX_DIMS = 8
# Weight dtypes the project reads (numpy holds them; bfloat16 through ml_dtypes).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class TorchFileError(UserError, ValueError):
    """A torch.save file refused as unsafe or damaged; one line (the caller adds the file's name)."""


def check_dtypes(tensors: dict) -> None:
    """One line naming the first tensor whose dtype the project cannot read (a float8 or integer weight)."""
    for name, t in tensors.items():
        if t.dtype not in SUPPORTED_DTYPES:
            kinds = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
            raise TorchFileError(f"tensor {name} has dtype {str(t.dtype).removeprefix('torch.')}, which this "
                                 f"project does not read (supported: {kinds}); convert the weights to one of them")


class Opaque:
    """A pickled object of a class this reader does not trust: its recorded arguments and state, no code."""

    origin = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"Opaque({self.origin})"


class _Storage:
    """A storage the pickle declared, its bytes checked against the archive: a flat tensor of its dtype."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


def _index(x, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or x < 0:
        raise TorchFileError(f"a tensor's {what} is {type(x).__name__} {x!r:.40}, not a whole number >= 0")
    return x


def _rebuild(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor(_v2): the view of a checked storage, refused unless it lies inside it."""
    if not isinstance(storage, _Storage):
        raise TorchFileError("a tensor is built from something that is not one of the file's storages")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride) or (
            len(size) > MAX_DIMS):
        raise TorchFileError("a tensor has a malformed shape or strides (not tuples of one length, at most "
                             f"{MAX_DIMS} dimensions)")
    offset, size = _index(offset, "offset"), tuple(_index(s, "size") for s in size)
    stride = tuple(_index(s, "stride") for s in stride)
    held, numel = storage.flat.numel(), 1
    for s in size:
        numel *= s
    last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if numel else offset
    if numel > held or (numel and last >= held):
        raise TorchFileError(f"a tensor of shape {list(size)} (strides {list(stride)}, offset {offset}) claims more "
                             f"than its storage of {held} elements holds")
    return torch.as_strided(storage.flat, size, stride, offset)


def _rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_ignored):
    """torch._utils._rebuild_tensor_v3: a view of an untyped (byte) storage as `dtype`, the newer dtypes' layout."""
    if not isinstance(storage, _Storage) or not isinstance(dtype, torch.dtype):
        raise TorchFileError("a tensor is built from something that is not one of the file's storages")
    flat = storage.flat
    if flat.dtype != dtype:
        size_of = torch.empty((), dtype=dtype).element_size()
        if flat.dtype != torch.uint8 or flat.numel() % size_of:
            raise TorchFileError(f"a {dtype} tensor lies over a storage that does not hold whole elements")
        flat = flat.view(dtype)
    return _rebuild(_Storage(flat), offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _storage_dtypes() -> dict:
    from torch.storage import _get_dtype_from_pickle_storage_type

    found = {}
    for name in dir(torch):
        if name.endswith("Storage") and name not in ("UntypedStorage", "TypedStorage"):
            try:
                found[name] = _get_dtype_from_pickle_storage_type(name)
            except KeyError:
                continue
    return found


_STORAGE_DTYPES = _storage_dtypes()


def _trusted_globals() -> dict:
    trusted = {("collections", "OrderedDict"): OrderedDict, ("torch", "Size"): torch.Size,
               ("torch", "device"): torch.device}
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
        trusted[("torch._utils", name)] = _rebuild
    trusted[("torch._utils", "_rebuild_tensor_v3")] = _rebuild_v3
    for name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        trusted[("torch._utils", name)] = _rebuild_parameter
    trusted[("torch.nn.parameter", "Parameter")] = _rebuild_parameter
    for name in dir(torch):
        if isinstance(getattr(torch, name), torch.dtype):
            trusted[("torch", name)] = getattr(torch, name)
    trusted.update({("torch", name): _StorageKind(dtype) for name, dtype in _STORAGE_DTYPES.items()})
    trusted[("torch", "UntypedStorage")] = trusted[("torch.storage", "UntypedStorage")] = _StorageKind(torch.uint8)
    return trusted


class _StorageKind:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_TRUSTED = _trusted_globals()
_OPAQUE: dict = {}  # one inert class per (module, name), however often a file names it


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, folder: str):
        super().__init__(file)
        self.archive, self.folder, self.storages = archive, folder, {}

    def find_class(self, module, name):
        key = (str(module)[:200], str(name)[:200])
        if key in _TRUSTED:
            return _TRUSTED[key]
        if key not in _OPAQUE:
            if len(_OPAQUE) > MAX_ENTRIES:
                raise TorchFileError("the pickle names too many classes")
            _OPAQUE[key] = type(key[1], (Opaque,), {"origin": f"{key[0]}.{key[1]}"})
        return _OPAQUE[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise TorchFileError("the pickle names an external object that is not a storage")
        _, kind, key, _location, numel = pid
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        if not isinstance(key, str) or not isinstance(kind, _StorageKind):
            raise TorchFileError(f"storage {key!r:.40} has no known storage type")
        numel = _index(numel, "storage size")
        if key not in self.storages:
            self.storages[key] = self._load(key, kind.dtype, numel)
        return self.storages[key]

    def _load(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        name = f"{self.folder}/data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise TorchFileError(f"storage {key!r:.40} has no data in the archive") from None
        claimed = numel * torch.empty((), dtype=dtype).element_size()
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size or (
                claimed != info.file_size):
            raise TorchFileError(f"storage {key} claims {claimed:,} bytes, the file holds {info.compress_size:,} for "
                                 "it")
        raw = bytearray(self.archive.read(info))
        if len(raw) != claimed:
            raise TorchFileError(f"storage {key} holds {len(raw):,} bytes, not the {claimed:,} it claims")
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return _Storage(flat)


def _bounded(obj) -> None:
    """Refuse a structure deeper than MAX_DEPTH, larger than MAX_NODES (shared parts counted each time they are
    reached) or containing itself; iterative, so no structure can exhaust Python's stack."""
    stack, nodes = [(obj, 0, ())], 1
    while stack:
        value, depth, path = stack.pop()
        children = _children(value)
        if not children:
            continue
        nodes += len(children)
        if nodes > MAX_NODES:
            raise TorchFileError(f"its pickled objects expand to more than {MAX_NODES:,} values (nested shared "
                                 "containers)")
        if id(value) in path:
            raise TorchFileError("a pickled object contains itself")
        if depth >= MAX_DEPTH:
            raise TorchFileError(f"its pickled objects are nested deeper than {MAX_DEPTH} levels")
        inner = path + (id(value),)
        stack.extend((child, depth + 1, inner) for child in children)


def _children(value) -> list:
    if isinstance(value, Opaque):
        return [value.args, value.state]
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return []


def plain(obj):
    """Opaque records turned into dicts (their pickled state), recursively: what a config or metrics held. Only
    for a structure `load` returned (bounded in depth and size, no cycles)."""
    if isinstance(obj, Opaque):
        return plain(obj.state) if isinstance(obj.state, dict) else {"args": plain(list(obj.args))}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def load(path):
    """The object a torch.save zip archive at `path` holds, its tensors on the CPU; TorchFileError otherwise."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise TorchFileError("is not a PyTorch checkpoint (not a torch.save zip archive, or one cut short)") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ENTRIES:
            raise TorchFileError(f"its archive has {len(entries):,} entries, more than {MAX_ENTRIES:,}")
        pickles = [e for e in entries if e.filename.count("/") == 1 and e.filename.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchFileError("its archive has no single <name>/data.pkl, as torch.save writes")
        info = pickles[0]
        if info.file_size > MAX_PICKLE_BYTES:
            raise TorchFileError(f"its pickle is {info.file_size:,} bytes, more than the {MAX_PICKLE_BYTES:,} a "
                                 "model's state_dict needs")
        folder = info.filename.split("/")[0]
        order = f"{folder}/byteorder"
        if order in archive.namelist() and archive.read(order).strip() not in (b"little", b""):
            raise TorchFileError("its tensors are stored big-endian; save them on a little-endian machine")
        with archive.open(info) as f:
            data = f.read(MAX_PICKLE_BYTES + 1)
        if len(data) > MAX_PICKLE_BYTES:
            raise TorchFileError(f"its pickle is more than {MAX_PICKLE_BYTES:,} bytes")
        try:
            obj = _Unpickler(io.BytesIO(data), archive, folder).load()
        except TorchFileError:
            raise
        except RecursionError:
            raise TorchFileError(f"its pickled objects are nested deeper than {MAX_DEPTH} levels") from None
        except MemoryError:
            raise TorchFileError("its pickled objects do not fit in memory") from None
        except Exception as e:  # pickle and the trusted constructors raise many types for a damaged file
            text = (str(e).strip().splitlines() or [""])[0][:120]
            raise TorchFileError(f"its pickle is damaged ({type(e).__name__}: {text})") from None
    _bounded(obj)
    return obj
