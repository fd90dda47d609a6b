"""Storage faults as one line: the cause named from an errno or from orbax's text, the path, the fix."""

import errno
import os

import pytest

from jax_nano.core import report, storage
from jax_nano.core.storage import StorageError, cause_of, require_room, writing


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied"), (errno.EDQUOT, "disk quota exceeded")])
def test_an_os_error_becomes_one_line_naming_path_and_cause(code, cause, tmp_path):
    target = tmp_path / "results" / "run.json"
    with pytest.raises(StorageError) as info, writing(target):
        raise OSError(code, os.strerror(code), str(target))
    message = str(info.value)
    assert message.startswith(f"cannot write {target}: {cause};") and "\n" not in message, message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_orbax_text_errors_are_recognised_and_others_pass_unchanged(tmp_path):
    wrapped = ValueError("RESOURCE_EXHAUSTED: Error writing local file \"/x/ocdbt.process_0/d/abc\": "
                         "[OS error: No space left on device]")
    assert cause_of(RuntimeError("save failed").with_traceback(None)) is None
    try:
        try:
            raise wrapped
        except ValueError as inner:
            raise RuntimeError("async save failed") from inner
    except RuntimeError as outer:
        assert cause_of(outer) == "disk full"
    with pytest.raises(KeyError), writing(tmp_path / "x"):
        raise KeyError("not a storage fault")


def test_require_room_refuses_a_folder_without_room_for_a_checkpoint(tmp_path):
    require_room(tmp_path / "new" / "folder", 1)
    assert not (tmp_path / "new").exists() and not any(tmp_path.iterdir())  # checked, nothing left behind
    with pytest.raises(StorageError, match=r"cannot write .*: disk full \(.* MiB free, a checkpoint of this run "
                                           r"needs about .* MiB\)"):
        require_room(tmp_path, 2**60)


def test_a_metrics_log_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    log = report.MetricsLog(tmp_path / "run.jsonl")
    log.write({"step": 0, "loss": 1.0})

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    log._file = Full()
    with pytest.raises(StorageError, match=rf"cannot write {tmp_path / 'run.jsonl'}: disk full"):
        log.write({"step": 1, "loss": 0.5})
    assert storage.cause_of(OSError(errno.ENOSPC, "x")) == "disk full"


def test_a_resumed_metrics_log_drops_the_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "run.jsonl"
    with report.MetricsLog(path) as log:
        for step in range(6):
            log.write({"step": step, "loss": 6.0 - step})
        log.write({"step": 3, "val_loss": 2.5})
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # a line cut short by a kill
    with report.MetricsLog(path, append=True, before_step=4) as log:
        log.write({"step": 4, "loss": 1.5})
    steps = [(r["step"], "loss" in r) for r in report.read_metrics(path)]
    assert steps == [(0, True), (1, True), (2, True), (3, True), (3, False), (4, True)]
