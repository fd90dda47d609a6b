"""Measure everything on one GPU in one command: JAX vs PyTorch on the 151M 4.5loss and 88M 8M steps, then each
JAX lever against the default, on random tokens; writes results/bench-<device>.{md,json,png}.

    python scripts/bench.py                          # the full suite on one GPU (about 8 minutes on an H100)
    python scripts/bench.py --profile                # + where each JAX step's device time goes
    python scripts/bench.py --levers remat-full,unrolled --repeats 3
    python scripts/bench.py --smoke                  # the same suite on the tiny model, on the CPU

The suite is jax_nano/bench/bench.py; every figure comes from the runs themselves, with the device they ran on.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs.tracks import FRAMEWORKS  # noqa: E402
from jax_nano.core.cli import run_main  # noqa: E402
from jax_nano.core.safe_paths import check_path_arg  # noqa: E402

# Defaults that differ in smoke mode: (full suite, --smoke).
DEFAULTS = {"steps": (30, 3), "warmup": (None, 1), "repeats": (2, 1), "profile_steps": (5, 2),
            "budget_min": (8.0, 2.0)}


def parser() -> argparse.ArgumentParser:
    from jax_nano.bench.bench import LEVERS

    levers = "\n".join(f"  {lever.name}: {lever.about}" for lever in LEVERS)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog=f"levers:\n{levers}")
    p.add_argument("--smoke", action="store_true", help="the suite on the tiny model (on the CPU unless --device gpu)")
    p.add_argument("--device", default=None, choices=("gpu", "cpu"),
                   help="gpu (default; an error on a machine without a usable NVIDIA GPU) or cpu (--smoke only)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default the track's, 3; smoke 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per framework and case, interleaved (default 2, at least 2; smoke 1)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="head-to-head frameworks (default jax,torch; jax alone: a levers-only run)")
    p.add_argument("--levers", default="all", help="comma-separated lever names, 'all' (default) or 'none'")
    p.add_argument("--lever-repeats", type=int, default=1, help="runs per lever (default 1)")
    p.add_argument("--profile", action="store_true", help="also profile a few JAX steps of each case")
    p.add_argument("--profile-steps", type=int, default=None, help="steps traced per profile (default 5; smoke 2)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="time budget in minutes: a run that would not fit is skipped (default 8; smoke 2)")
    p.add_argument("--results-dir", default="results", help="where the report goes")
    p.add_argument("--output", default=None, metavar="STEM", help="report path without suffix "
                   "(default results/bench-DEVICE)")
    p.add_argument("--keep-work", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-bar", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    from jax_nano.bench import bench
    from jax_nano.core.device import check_device

    args = parser().parse_args(argv)
    if args.output is not None:
        check_path_arg(args.output, "--output")
    device = args.device or ("cpu" if args.smoke else "gpu")
    if device == "cpu" and not args.smoke:
        raise bench.BenchError("--device cpu needs --smoke: the full suite (151M and 88M models, 2048 tokens) is "
                               "a GPU benchmark")
    pick = {key: getattr(args, key) if getattr(args, key) is not None else values[args.smoke]
            for key, values in DEFAULTS.items()}
    plan = bench.Plan(smoke=args.smoke, frameworks=tuple(f.strip() for f in args.frameworks.split(",")),
                      steps=pick["steps"], warmup=pick["warmup"], repeats=pick["repeats"],
                      levers=bench.parse_levers(args.levers), lever_repeats=args.lever_repeats,
                      profile_steps=pick["profile_steps"] if args.profile else 0, budget_s=pick["budget_min"] * 60)
    plan.check()
    # Before any JAX work; the workers inherit what "cpu" sets.
    check_device(device, FRAMEWORKS, cpu_fix="add --smoke")
    result = bench.bench(plan, device=device, results_dir=args.results_dir, output=args.output,
                         show_bar=not args.no_bar, keep_work=args.keep_work)
    print(Path(result["files"]["md"]).read_text())
    print("report: " + ", ".join(result["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
