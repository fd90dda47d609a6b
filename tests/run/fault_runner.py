"""scripts/speedrun.py with its arguments, but the run stalls for good inside the save of the checkpoint of step
STALL_STEP: where that checkpoint's checksums are written, after its data files and before it is renamed into
place. It writes STALL_MARKER first, so tests/run/test_faults.py knows when a kill -9 lands in the middle of a save.
"""

import os
import runpy
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jax_nano.core import checksums  # noqa: E402

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
sys.argv = [str(ROOT / "scripts" / "speedrun.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
