"""One process per run folder: a live holder is named and refused at once; a dead one's lock does not block."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jax_nano.core.runlock import RunInUse, RunLock

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    (tmp_path / "run").mkdir()  # a run folder that exists already keeps its lock file
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from jax_nano.core.runlock import RunLock
        with RunLock({str(tmp_path / "run")!r}, "run"):
            print("held", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=rf"run 'run' is in use by process {holder.pid} \(it holds "):
            with RunLock(tmp_path / "run", "run"):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(holder.pid)  # the dead holder's pid stays
    with RunLock(tmp_path / "run", "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip() != str(holder.pid)


def test_the_lock_is_held_only_inside_the_block_and_leaves_no_folder_it_alone_made(tmp_path):
    with RunLock(tmp_path / "r", "r"):
        with pytest.raises(RunInUse):
            RunLock(tmp_path / "r", "r").__enter__()
    assert not (tmp_path / "r").exists()
    with RunLock(tmp_path / "r", "r"):
        (tmp_path / "r" / "checkpoints").mkdir()
    assert (tmp_path / "r" / ".lock").is_file()
