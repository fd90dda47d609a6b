"""Every command that takes a name or a path, walked with `..`, absolute, symlinked and control-character inputs as
real processes: each is refused in one line (exit 2, no traceback) and the whole folder tree, the command's own
folders and the one outside them alike, is left exactly as it was."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = "is not a safe name"
LINK = "is a symlink"
CONTROL = "holds control characters"


def snapshot(root: Path) -> dict:
    """Every entry under `root`, links not followed: what it is, its size, its modification time, its target."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            seen[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                 os.readlink(path) if path.is_symlink() else None)
    return seen


@pytest.fixture
def yard(tmp_path, toy_store):
    """(work, outside, cases): `work` is where the commands run (their runs/, results/, exports/ are in it),
    `outside` a folder beside it with a file and an empty folder the symlinks in `work` point at."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    (outside / "empty").mkdir(parents=True)
    victim = outside / "victim.txt"
    victim.write_text("not yours\n")
    (work / "runs").mkdir(parents=True)
    (work / "results").mkdir()
    (work / "runs" / "linked").symlink_to(outside)
    (work / "results" / "logged.jsonl").symlink_to(victim)
    (work / "results" / "eval-scored.json").symlink_to(victim)
    (work / "exports").symlink_to(outside / "empty")
    (work / "card\n.json").write_text("{}")  # a --target-file whose name would name a report
    with open(outside / "prompts.txt", "wb") as f:  # a prompt file far over the bound (sparse: no disk used)
        f.truncate(1 << 30)
    absolute = str(outside / "abs")
    run = ["--no-bar", "--model", "tiny", "--data", toy_store, "--seq-len", "64", "--max-steps", "1",
           "--warmup-steps", "1", "--eval-batches", "1"]
    cases = [
        ("speedrun", [*run, "--run-name", ".."], UNSAFE),
        ("speedrun", [*run, "--run-name", "../../escaped"], UNSAFE),
        ("speedrun", [*run, "--run-name", absolute], UNSAFE),
        ("speedrun", [*run, "--run-name", "x\n# y"], UNSAFE),
        ("speedrun", [*run, "--run-name", "linked"], LINK),
        ("speedrun", [*run, "--run-name", "logged"], LINK),
        ("speedrun", [*run, "--export-torch", "w\r.pt"], CONTROL),
        ("evaluate", ["--model", "tiny", "--name", "../x"], UNSAFE),
        ("evaluate", ["--model", "tiny", "--name", absolute], UNSAFE),
        ("evaluate", ["--model", "tiny", "--name", "scored"], LINK),
        ("evaluate", ["--run", "linked"], LINK),
        ("evaluate", ["--model", "tiny", "--name", "a\x1b[2Jb"], UNSAFE),
        ("export", ["--run", "../../x", "--format", "safetensors", "--out", "o"], UNSAFE),
        ("export", ["--run", absolute, "--format", "safetensors", "--out", "o"], UNSAFE),
        ("export", ["--state-dict", "w.pt", "--format", "safetensors", "--out", "exports"], LINK),
        ("export", ["--state-dict", "w.pt", "--format", "safetensors", "--out", "o\nx"], CONTROL),
        ("generate", ["--run", "..", "--prompt", "hi"], UNSAFE),
        ("generate", ["--run", absolute, "--prompt", "hi"], UNSAFE),
        ("generate", ["--run", "linked", "--prompt", "hi"], LINK),
        ("generate", ["--run", "r\x07", "--prompt", "hi"], UNSAFE),
        ("generate", ["--model", "tiny", "--prompts", str(outside / "prompts.txt")], "more than the 1,048,576"),
        ("compare", ["--track", "../8M"], "unknown track"),
        ("compare", ["--track", absolute], "unknown track"),
        ("compare", ["--output", "exports"], LINK),
        ("compare", ["--output", "c\nd"], CONTROL),
        ("bench", ["--smoke", "--levers", "../x"], "unknown lever"),
        ("bench", ["--smoke", "--output", "exports"], LINK),
        ("bench", ["--smoke", "--output", "b\td"], CONTROL),
        ("plan", ["--gpu", "../h100"], "unknown card"),
        ("plan", ["--tpu", absolute], "unknown TPU"),
        ("plan", ["--target-file", "card\n.json"], UNSAFE),
        ("bundle", ["--out", "exports"], LINK),
        ("bundle", ["--out", "b\nx"], CONTROL),
        ("bundle", ["--out", "b", "--data", "../nowhere"], "does not exist"),
    ]
    return work, outside, cases


def attempt(script: str, args: list, work: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "JAX_PLATFORMS": "cpu",
           "JAX_NANO_CACHE": str(home / "xla"), "MPLCONFIGDIR": str(home / "mpl")}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)


def test_every_command_refuses_escaping_names_and_paths_and_writes_nothing(yard, tmp_path):
    work, outside, cases = yard
    home = tmp_path / "home"
    home.mkdir()
    before = snapshot(tmp_path)
    assert {script for script, _, _ in cases} == {"speedrun", "evaluate", "export", "generate", "compare", "bench",
                                                  "plan", "bundle"}
    with ThreadPoolExecutor(3) as pool:  # the refusals wait mostly on imports
        outs = list(pool.map(lambda case: attempt(case[0], case[1], work, home), cases))
    for (script, args, message), out in zip(cases, outs, strict=True):
        label = f"{script} {args[-4:]!r}"
        assert out.returncode == 2, (label, out.returncode, out.stderr[-800:])
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, (label, out.stderr)
        assert message in out.stderr, (label, out.stderr)
    assert snapshot(tmp_path) == before
    assert (outside / "victim.txt").read_text() == "not yours\n"
