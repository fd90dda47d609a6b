"""Checksums of stored files and weights: what lets a checkpoint, a summary or a leaderboard row be trusted.

A manifest (`checksums.json`) lists files relative to a root, each with its size and sha256, and carries the
sha256 of that list, so a damaged manifest is told apart from a damaged file. `problem` says in one line what
is wrong (naming the file) or returns None when every listed file is intact. Framework-neutral on purpose:
the JAX (jax_nano/checkpoint.py) and PyTorch (torch_ref/checkpoint.py) checkpoints share it.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from jax_nano.core.report import write_json_atomic

FORMAT = "jax-nano-checksums/1"
_CHUNK = 1 << 24


def sha256_file(path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            sha.update(block)
    return sha.hexdigest()


def _digest(entries: dict) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def write_manifest(out, files: dict) -> None:
    """Checksums of `files` ({name the manifest lists: path to read now}) into the manifest `out`, atomically.

    The names are relative to the directory a later `problem` checks; a file may be read under another name
    (a temp file about to be renamed into place)."""
    entries = {}
    for name in sorted(files):
        path = Path(files[name])
        entries[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    write_json_atomic(out, {"format": FORMAT, "files": entries, "sha256": _digest(entries)})


def _read_manifest(path: Path) -> tuple[dict | None, str | None]:
    """(the listed files, None) or (None, what is wrong with the manifest)."""
    if not path.is_file():
        return None, f"{path} is missing (a checkpoint written before checksums, or one cut short)"
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror})"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path} is damaged (not JSON: {type(e).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT or manifest.get("sha256") != _digest(files):
        return None, f"{path} is damaged (its own sha256 does not match, or it is not a {FORMAT} manifest)"
    return files, None


def problem(root, manifest, present=None) -> str | None:
    """What is wrong with the files under `root` that `manifest` lists, in one line; None if all are intact.

    `present`: files found under root that must all be listed (a file no save wrote is a problem too).
    """
    root, manifest = Path(root), Path(manifest)
    files, wrong = _read_manifest(manifest)
    if wrong:
        return wrong
    listed = {root / name for name in files}
    for extra in sorted(set(map(Path, present or ())) - listed - {manifest}):
        return f"{extra} was not written with the checkpoint (it is not in {manifest.name})"
    for name, entry in sorted(files.items()):
        path = root / name
        try:
            size = path.stat().st_size
            if size != entry["bytes"]:
                return f"{path} is truncated or overwritten ({size} bytes, written with {entry['bytes']})"
            if sha256_file(path) != entry["sha256"]:
                return f"{path} is damaged (its sha256 differs from the one written with it)"
        except FileNotFoundError:
            return f"{path} is missing"
        except OSError as e:
            return f"{path} cannot be read ({e.strerror})"
    return None


def weights_sha256(state_dict: dict) -> str:
    """sha256 over weights (name -> numpy array): every array in name order, as name, dtype, shape and raw bytes.

    Both trainers export the same names and dtypes (upstream's layout), so the same weights give the same
    hash whichever framework trained them.
    """
    sha = hashlib.sha256()
    for name in sorted(state_dict):
        a = np.ascontiguousarray(state_dict[name])
        sha.update(f"{name}|{a.dtype.name}|{list(a.shape)}|".encode())
        sha.update(a.tobytes())
    return sha.hexdigest()
