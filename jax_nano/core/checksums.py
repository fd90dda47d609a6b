"""Checksums of stored files and weights: what lets a checkpoint, a summary or a leaderboard row be trusted.

A manifest (`checksums.json`) lists files relative to a root, each with its size and sha256, and carries the
sha256 of that list, so a damaged manifest is told apart from a damaged file. `problem` says in one line what
is wrong (naming the file) or returns None when every listed file is intact. Framework-neutral on purpose:
the JAX (jax_nano/checkpoint.py) and PyTorch (torch_ref/checkpoint.py) checkpoints share it.

A manifest is read as untrusted data (a checkpoint may come from anyone): at most MAX_MANIFEST_BYTES, at most
MAX_ENTRIES entries, each a normalised relative path inside the checkpoint's folder mapped to
{"bytes": whole number, "sha256": 64 hex digits}; each listed file must be a regular file reached through no
symlink. Anything else makes the checkpoint damaged, and the fall-back rules of jax_nano/core/checkpoints.py apply.
"""

import hashlib
import json
import os
import stat
from pathlib import Path, PurePosixPath

import numpy as np

from jax_nano.core.report import write_json_atomic

FORMAT = "jax-nano-checksums/1"
_CHUNK = 1 << 24
MAX_MANIFEST_BYTES = 16 << 20
MAX_ENTRIES = 100_000
MAX_FILE_BYTES = 1 << 42  # 4 TiB: far above any checkpoint file, small enough to refuse nonsense
_HEX = frozenset("0123456789abcdef")


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
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None, f"{path} is missing (a checkpoint written before checksums, or one cut short)"
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror})"
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
        return None, f"{path} is damaged (not a regular file of at most {MAX_MANIFEST_BYTES:,} bytes)"
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror})"
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return None, f"{path} is damaged (not JSON: {type(e).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT or manifest.get("sha256") != _digest(files):
        return None, f"{path} is damaged (its own sha256 does not match, or it is not a {FORMAT} manifest)"
    if len(files) > MAX_ENTRIES:
        return None, f"{path} is damaged (it lists {len(files):,} files, more than {MAX_ENTRIES:,})"
    for name, entry in files.items():
        if not _inside(name):
            return None, (f"{path} is damaged (entry {name!r:.100} is not a normalised relative path inside the "
                          "checkpoint)")
        if not _entry_ok(entry):
            return None, (f"{path} is damaged (entry {name!r:.100} is not {{\"bytes\": 0..{MAX_FILE_BYTES}, "
                          "\"sha256\": 64 hex digits})")
    return files, None


def _inside(name) -> bool:
    """A relative path that stays inside the folder it is relative to, written the one normal way."""
    if not isinstance(name, str) or not name or len(name) > 4096 or "\\" in name or "\0" in name:
        return False
    parts = PurePosixPath(name).parts
    return not name.startswith("/") and "/".join(parts) == name and not {".", ".."} & set(parts)


def _entry_ok(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    size, digest = entry.get("bytes"), entry.get("sha256")
    return (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_FILE_BYTES
            and isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX)


def _listed_problem(root: Path, name: str, entry: dict) -> str | None:
    """What is wrong with one listed file: not a regular file reached without a symlink, another size, another
    sha256. Opened without following a symlink; at most the listed number of bytes is read."""
    path, top = root / name, root.resolve()
    try:
        folder = path.parent.resolve()
        if folder != top and top not in folder.parents:
            return f"{path} lies outside the checkpoint (reached through a symlink)"
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as e:
        return f"{path} cannot be read ({e.strerror}; a symlink is not followed)"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return f"{path} is not a regular file (a device, pipe or folder); the checkpoint is damaged"
        if info.st_size != entry["bytes"]:
            return f"{path} is truncated or overwritten ({info.st_size} bytes, written with {entry['bytes']})"
        sha, left = hashlib.sha256(), info.st_size
        while left > 0 and (block := f.read(min(_CHUNK, left))):
            sha.update(block)
            left -= len(block)
    if sha.hexdigest() != entry["sha256"]:
        return f"{path} is damaged (its sha256 differs from the one written with it)"
    return None


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
        try:
            wrong = _listed_problem(root, name, entry)
        except OSError as e:
            wrong = f"{root / name} cannot be read ({e.strerror})"
        if wrong:
            return wrong
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
