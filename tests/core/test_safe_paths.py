"""Names are one safe path component, and the run's writers (the lock, the metrics log, the summary and plot) refuse
a symlink in one line, leaving the file it points at untouched."""

import os

import pytest

from jax_nano.core import report
from jax_nano.core.runlock import RunLock
from jax_nano.core.safe_paths import MAX_NAME, UnsafePath, check_name, run_folder


@pytest.mark.parametrize("name", ["smoke-jax", "4.5loss-jax", "8M-torch", "_scratch", "a..b", "r" * MAX_NAME])
def test_ordinary_run_names_are_accepted(name):
    assert check_name(name, "--run-name") == name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "-x", "a/b", "../x", "/tmp/x", "a b", "a\nb", "a\x1bb",
                                  "a|b", "<script>", "caf\u00e9", "r" * (MAX_NAME + 1)])
def test_names_that_are_paths_or_hold_odd_characters_are_refused_in_one_line(name):
    with pytest.raises(UnsafePath, match="is not a safe name") as info:
        check_name(name, "--run-name")
    assert "\n" not in str(info.value)


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text("not yours\n")
    return path


def test_a_symlinked_metrics_log_is_refused_and_its_target_kept(tmp_path, victim):
    log = tmp_path / "results" / "run.jsonl"
    log.parent.mkdir()
    log.symlink_to(victim)
    for append in (False, True):
        with pytest.raises(UnsafePath, match="is a symlink"):
            report.MetricsLog(log, append=append, before_step=0)
    assert victim.read_text() == "not yours\n"


def test_a_symlinked_summary_or_plot_is_refused_and_its_target_kept(tmp_path, victim):
    for name in ("run.json", "run.png"):
        target = tmp_path / name
        target.symlink_to(victim)
        with pytest.raises(UnsafePath, match="is a symlink"):
            report.write_json_atomic(target, {"loss": 1.0})
        assert target.is_symlink()
    assert victim.read_text() == "not yours\n"


def test_the_run_lock_is_never_taken_through_a_symlink(tmp_path, victim):
    (tmp_path / "runs").mkdir()
    linked = tmp_path / "runs" / "linked"
    linked.symlink_to(victim.parent)
    with pytest.raises(UnsafePath, match="run folder .* is a symlink"):
        RunLock(linked, "linked").__enter__()
    real = tmp_path / "runs" / "real"
    real.mkdir()
    (real / ".lock").symlink_to(victim)
    with pytest.raises(UnsafePath, match="is a symlink"):
        RunLock(real, "real").__enter__()
    assert victim.read_text() == "not yours\n" and os.listdir(victim.parent) == ["victim.txt"]


def test_a_symlinked_checkpoints_folder_is_refused(tmp_path, victim):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "checkpoints").symlink_to(victim.parent)
    with pytest.raises(UnsafePath, match="checkpoints folder .* is a symlink"):
        run_folder(tmp_path / "runs", "r")
