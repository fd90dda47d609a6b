"""The command an interrupted run prints to continue it: its own arguments, with --resume, without --init-from."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("speedrun_cli", ROOT / "scripts" / "speedrun.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_resume_command_keeps_the_runs_arguments_and_drops_init_from(script):
    assert script.resume_args(["--track", "8M", "--init-from", "model.pt", "--no-bar"]) == [
        "--track", "8M", "--no-bar", "--resume"]
    assert script.resume_args(["--init-from=model.pt", "--muon-lr", "0.03"]) == ["--muon-lr", "0.03", "--resume"]
    assert script.resume_args(["--track", "8M", "--resume-from-good"]) == ["--track", "8M", "--resume-from-good"]
    assert script.stop_code("SIGTERM") == 143 and script.stop_code("SIGINT") == 130
