"""The jobs `run.sh` runs on a bundle's target, each a command line of scripts/, run in the output folder (the
working directory `run.sh` sets) after one device check for every framework the job uses; everything the
commands print is also written to logs/JOB-TIME.log there, and logs/JOB-TIME.json says what ran and how long.

    python -m jax_nano.bundle.job smoke                # what run.sh calls; ARGS go to the job's script
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from configs.tracks import FRAMEWORKS
from jax_nano.bundle.targets import BundleError
from jax_nano.core.cli import run_main
from jax_nano.core.device import check_device
from jax_nano.core.report import write_json_atomic

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# job -> what it runs, for the usage line
JOBS = {
    "smoke": "the smoke track in each installed framework (scripts/speedrun.py --track smoke)",
    "track": "NAME: the track in JAX, then in PyTorch (scripts/speedrun.py; --framework F for one)",
    "compare": "JAX vs PyTorch (scripts/compare.py)",
    "bench": "the benchmark suite (scripts/bench.py)",
    "plan": "a run planned for a card (scripts/plan.py; uses no device)",
}


def flag(args: list, name: str) -> str | None:
    """The value of `name` in `args` ("--device gpu" or "--device=gpu"), the last one given, else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def torch_installed() -> bool:
    return find_spec("torch") is not None


def commands(job: str, args: list, have_torch: bool) -> tuple[list, str, tuple, str]:
    """(script argvs, device, frameworks to check, the flag that trains on the CPU instead) for `job`."""
    if job not in JOBS:
        raise BundleError(f"unknown job {job!r}; choose one of {', '.join(JOBS)}")
    device = flag(args, "--device") or "auto"
    if job == "smoke":
        frameworks = FRAMEWORKS if have_torch else ("jax",)
        argvs = [["speedrun.py", "--track", "smoke", "--framework", f, *args] for f in frameworks]
        return argvs, device, frameworks, "pass --device cpu"
    if job == "track":
        if not args or args[0].startswith("-"):
            raise BundleError("track needs a track name: run.sh track NAME [ARGS], e.g. run.sh track 8M")
        name, rest = args[0], args[1:]
        frameworks = (flag(rest, "--framework"),) if flag(rest, "--framework") else FRAMEWORKS
        argvs = [["speedrun.py", "--track", name, *([] if flag(rest, "--framework") else ["--framework", f]),
                  "--leaderboard", "LEADERBOARD.md", *rest] for f in frameworks]
        return argvs, device, frameworks, "pass --device cpu"
    if job == "plan":
        return [["plan.py", *args]], "none", (), ""
    frameworks = tuple((flag(args, "--frameworks") or ",".join(FRAMEWORKS)).split(",")) if job == "bench" \
        else FRAMEWORKS
    if job == "bench":
        device = flag(args, "--device") or ("cpu" if "--smoke" in args else "gpu")
        return [["bench.py", *args]], device, frameworks, "add --smoke"
    return [["compare.py", *args]], device, frameworks, "pass --device cpu"


def tee(argv: list, log) -> int:
    """Run `argv`, its output to this terminal and to `log` as it comes (progress bars included)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while chunk := os.read(proc.stdout.fileno(), 65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        log.write(chunk)
        log.flush()
    return proc.wait()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise BundleError(f"no job given; choose one of {', '.join(JOBS)}")
    job, args = argv[0], argv[1:]
    have_torch = torch_installed()
    argvs, device, frameworks, cpu_fix = commands(job, args, have_torch)
    if "torch" in frameworks and not have_torch:
        raise BundleError(f"{job} runs PyTorch, which is not installed on this machine; install it or run "
                          "JAX alone (--framework jax for track, --frameworks jax for bench)")
    started = time.time()
    if device != "none":
        check_device(device, frameworks, cpu_fix=cpu_fix)  # the children inherit what "cpu" sets
    checked = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    logs = Path("logs")
    logs.mkdir(exist_ok=True)
    record = {"job": job, "args": args, "python": sys.version.split()[0], "device": device,
              "frameworks": list(frameworks), "started": stamp, "device_check_s": round(checked - started, 2),
              "commands": []}
    code = 0
    with open(logs / f"{job}-{stamp}.log", "ab") as log:
        for script, *rest in argvs:
            t0 = time.time()
            code = tee([sys.executable, str(SCRIPTS / script), *rest], log)
            record["commands"].append({"argv": [script, *rest], "exit": code, "wall_s": round(time.time() - t0, 2)})
            if code:
                break
    write_json_atomic(logs / f"{job}-{stamp}.json", record)
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
