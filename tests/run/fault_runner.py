"""scripts/speedrun.py with its arguments, and faults placed where tests/run/test_faults.py needs them:

- STALL_STEP: the run stalls for good inside the save of the checkpoint of that step, where its checksums are
  written (after its data files, before it is renamed into place). It writes STALL_MARKER first, so the test
  knows when a kill lands in the middle of a save.
- PAUSE_STEP: once the loss of that step is logged, the run waits until a signal has been received (writing
  PAUSE_MARKER first), so the test's signal lands in the middle of training, not before it or after it.
"""

import os
import runpy
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jax_nano.core import checksums, preemption, report  # noqa: E402

if "STALL_STEP" in os.environ:
    STEP, MARKER = os.environ["STALL_STEP"], Path(os.environ["STALL_MARKER"])
    _write_manifest = checksums.write_manifest

    def stalling_write_manifest(out, files):
        out = Path(out)
        # JAX: checkpoints/<step>.orbax-checkpoint-tmp/checksums.json; PyTorch: checkpoints/<step>.checksums.json.
        if out.name.startswith(f"{STEP}.") or out.parent.name.startswith(f"{STEP}."):
            MARKER.write_text(str(out))
            threading.Event().wait()  # until the test kills this process
        _write_manifest(out, files)

    checksums.write_manifest = stalling_write_manifest

if "PAUSE_STEP" in os.environ:
    PAUSE, PAUSED = int(os.environ["PAUSE_STEP"]), Path(os.environ["PAUSE_MARKER"])
    received = threading.Event()
    _handle, _write = preemption.StopSignals._handle, report.MetricsLog.write

    def noting_handle(self, signum, frame):
        received.set()
        _handle(self, signum, frame)

    def pausing_write(self, record):
        _write(self, record)
        if record.get("step") == PAUSE and "loss" in record:
            PAUSED.write_text("paused")
            received.wait(240)

    preemption.StopSignals._handle = noting_handle
    report.MetricsLog.write = pausing_write

sys.argv = [str(ROOT / "scripts" / "speedrun.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
