"""Names and paths a user hands in, confined to the folders a command owns; files written there never through a
symlink.

A run or report name becomes one path component: runs/<name>/, results/<name>.json, results/eval-<name>.md. So a
name is 1 to 100 characters from A-Z a-z 0-9 and `.` `_` `-`, starting with a letter, a digit or `_` (no `..`, no
hidden or option-like names); `/` is refused, so nested names (`a/b`) are not allowed either: every run sits
directly in --runs-dir, every report directly in --results-dir. The folders themselves (--runs-dir, --results-dir,
--out's parent) are the user's choice and may be anything, a symlink included; what a command makes inside them
from a name (the run folder, its checkpoints folder, a result file, an export folder) must not be a symlink, and
is refused in one line when it is. Files are written as a temporary file created with O_EXCL in the real folder,
then renamed over the target (jax_nano/core/report.py), or opened with O_NOFOLLOW (append-only logs, locks).
"""

import os
import re
from pathlib import Path

from configs.errors import UserError

MAX_NAME = 100
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
ALLOWED = f"1-{MAX_NAME} characters from A-Z a-z 0-9 . _ -, starting with a letter, a digit or _"


class UnsafePath(UserError):
    """A name that is not one safe path component, or a target that is a symlink; one line with the fix."""


def check_name(name: str, flag: str) -> str:
    """`name` itself when it is a safe path component (module docstring); else UnsafePath naming `flag`."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME_RE.fullmatch(name):
        shown = ascii(name if not isinstance(name, str) or len(name) <= MAX_NAME else name[:MAX_NAME] + "...")
        raise UnsafePath(f"{flag} {shown} is not a safe name: use {ALLOWED} (no '/', no '..', no spaces or "
                         "control characters), e.g. my-run-1")
    return name


def has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_path_arg(path, flag: str) -> Path:
    """A path the user chose for the command to write (an export folder, a report stem): any folder, but no
    control characters in it (they would break every one-line message about it) and not itself a symlink."""
    text = os.fspath(path)
    if not text or has_control(text):
        raise UnsafePath(f"{flag} {ascii(text)} holds control characters or is empty; pass a plain path")
    refuse_symlink(text, flag)
    return Path(text)


def refuse_symlink(path, what: str = "") -> None:
    """UnsafePath when `path` is a symlink (dangling or not): a command never writes through one."""
    if os.path.islink(path):
        label = f"{what} " if what else ""
        raise UnsafePath(f"{label}{ascii(os.fspath(path))} is a symlink (to {ascii(os.readlink(path))}); "
                         "nothing is written through a symlink: remove it or choose another name")


def run_folder(runs_dir, name: str, flag: str = "--run-name") -> Path:
    """runs_dir/<name> for a safe `name`, refused when it or its checkpoints folder is a symlink."""
    run_dir = Path(runs_dir) / check_name(name, flag)
    refuse_symlink(run_dir, "run folder")
    refuse_symlink(run_dir / "checkpoints", "checkpoints folder")
    return run_dir


def result_files(results_dir, stem: str, suffixes=(".json", ".jsonl", ".png")) -> list[Path]:
    """results_dir/<stem><suffix> for each suffix, each refused when it is a symlink."""
    paths = [Path(results_dir) / f"{stem}{suffix}" for suffix in suffixes]
    for path in paths:
        refuse_symlink(path, "result file")
    return paths


def open_nofollow(path, flags: int, mode: int = 0o666) -> int:
    """os.open with O_NOFOLLOW: a symlink at `path` is refused in one line instead of being written through."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as e:
        if os.path.islink(path):
            refuse_symlink(path)
        raise e
