"""The base install is the JAX stack: whatever needs PyTorch says, in one line, which extra brings it."""

import pytest

from jax_nano.core import extras
from tests.test_architecture import TORCH, run_without

# Each command line runs in a fresh interpreter where `import torch` fails, as after `pip install -e .`.
SCRIPT = """
import runpy
sys.argv = {argv!r}
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    sys.exit(e.code)
"""


def test_require_torch_passes_where_torch_is_installed():
    assert extras.has_torch()  # the [dev] extra, which the tests need, includes [torch]
    extras.require_torch("--framework torch")


@pytest.mark.parametrize("argv", [
    ["scripts/speedrun.py", "--track", "smoke", "--framework", "torch", "--no-bar"],
    ["scripts/generate.py", "--model", "tiny", "--framework", "torch", "--prompt", "Hi"],
    ["scripts/generate.py", "--state-dict", "model.pt", "--prompt", "Hi"],
    ["scripts/compare.py", "--track", "smoke", "--device", "cpu"],
    ["scripts/export.py", "--run", "smoke-jax", "--format", "hf", "--out", "x"],
], ids=lambda a: " ".join(a[:3]))
def test_pytorch_commands_without_pytorch_name_the_extra(argv, tmp_path):
    from tests.test_architecture import ROOT

    proc = run_without(TORCH, SCRIPT.format(argv=argv, script=str(ROOT / argv[0])), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and "needs PyTorch" in lines[0] and '".[torch]"' in lines[0], lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()
