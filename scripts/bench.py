"""Measure everything on one GPU in one command: JAX vs PyTorch (compiled, and eager as an extra row) on the 151M
4.5loss and 88M 8M steps, then each JAX lever against the default, on random tokens; writes
results/bench-<device>.{md,json,png}. On the CPU, the race of the smoke step and the 88M at 4 x 256.

    python scripts/bench.py                          # the full suite on one GPU (about 8 minutes on an H100)
    python scripts/bench.py --profile                # + where each JAX step's device time goes
    python scripts/bench.py --levers remat-full,unrolled --repeats 3
    python scripts/bench.py --device cpu             # the CPU race: smoke and 88M 4x256, 3 forms, step split
    python scripts/bench.py --smoke                  # the same suite on the tiny model, on the CPU

The suite is jax_nano/bench/bench.py; every figure comes from the runs themselves, with the device they ran on.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs.tracks import FRAMEWORKS  # noqa: E402
from jax_nano.bench.compare_report import FORMS  # noqa: E402
from jax_nano.core.cli import run_main  # noqa: E402
from jax_nano.core.safe_paths import check_path_arg  # noqa: E402

# Defaults by mode: (GPU suite, --smoke, the CPU race).
MODES = ("gpu", "smoke", "cpu")
DEFAULTS = {"steps": (30, 3, 10), "warmup": (None, 1, 1), "repeats": (2, 1, 2), "profile_steps": (5, 2, 2),
            "budget_min": (8.0, 2.0, 30.0), "levers": ("all", "all", "none"), "split_steps": (0, 0, 3)}


def parser() -> argparse.ArgumentParser:
    from jax_nano.bench.bench import CPU_LEVERS, LEVERS

    levers = "\n".join(f"  {lever.name}: {lever.about}" for lever in LEVERS)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog=f"levers:\n{levers}")
    p.add_argument("--smoke", action="store_true", help="the suite on the tiny model (on the CPU unless --device gpu)")
    p.add_argument("--device", default=None, choices=("gpu", "cpu"),
                   help="gpu (default; an error on a machine without a usable NVIDIA GPU) or cpu: the CPU race\n"
                        "(the smoke step and the 88M at 4 x 256), or the smoke suite with --smoke")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; smoke 3; CPU race 10)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed warm-up steps (default the track's, 3; smoke and CPU race 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per form and case, interleaved (default 2, at least 2; smoke 1)")
    p.add_argument("--frameworks", default=",".join(FORMS),
                   help=f"head-to-head forms (default {','.join(FORMS)}: torch is PyTorch as it runs by default,\n"
                        "compiled wherever torch.compile works; torch-eager the eager extra row; jax alone: a\n"
                        "levers-only run)")
    p.add_argument("--levers", default=None,
                   help="comma-separated lever names, 'all' (default; CPU race: none), 'cpu' (the CPU levers:\n"
                        f"{', '.join(CPU_LEVERS)}) or 'none'")
    p.add_argument("--split-steps", type=int, default=None, metavar="N",
                   help="time N steps of each form and case in two halves, forward+backward and optimizer\n"
                        "(default 0; CPU race 3)")
    p.add_argument("--lever-repeats", type=int, default=1, help="runs per lever (default 1)")
    p.add_argument("--profile", action="store_true", help="also profile a few JAX steps of each case")
    p.add_argument("--profile-steps", type=int, default=None, help="steps traced per profile (default 5; smoke 2)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="time budget in minutes: a run that would not fit is skipped (default 8; smoke 2; CPU race 30)")
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
    mode = MODES.index("smoke" if args.smoke else "cpu" if device == "cpu" else "gpu")
    pick = {key: getattr(args, key) if getattr(args, key) is not None else values[mode]
            for key, values in DEFAULTS.items()}
    plan = bench.Plan(smoke=args.smoke, cpu=MODES[mode] == "cpu",
                      frameworks=tuple(f.strip() for f in args.frameworks.split(",")),
                      steps=pick["steps"], warmup=pick["warmup"], repeats=pick["repeats"],
                      levers=bench.parse_levers(pick["levers"]), lever_repeats=args.lever_repeats,
                      profile_steps=pick["profile_steps"] if args.profile else 0, split_steps=pick["split_steps"],
                      budget_s=pick["budget_min"] * 60)
    plan.check()
    # Before any JAX work; the workers inherit what "cpu" sets.
    check_device(device, FRAMEWORKS, cpu_fix="pass --device cpu")
    result = bench.bench(plan, device=device, results_dir=args.results_dir, output=args.output,
                         show_bar=not args.no_bar, keep_work=args.keep_work)
    print(Path(result["files"]["md"]).read_text())
    print("report: " + ", ".join(result["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
