"""JAX vs PyTorch head to head on one speedrun track: both frameworks, same data, model, batch, hyper-parameters
and initial weights, interleaved (JAX, PyTorch, PyTorch eager, JAX, ...), one report (Markdown + JSON + PNG).
PyTorch is compiled wherever torch.compile works (--torch-compile auto); eager PyTorch is an extra row.

    python scripts/compare.py --track 8M --data processed_data/offline
    python scripts/compare.py --track 4.5loss --repeats 5
    python scripts/compare.py --track 8M --steps 50 --repeats 2       # quick throughput-only comparison
    python scripts/compare.py --track 8M --steps 50 --profile traces/8M
    python scripts/compare.py --track smoke --steps 20 --repeats 3 --device cpu      # the CPU race, smoke case

Every speedrun override flag of scripts/speedrun.py works here too (--model, --batch-size, --precision, ...).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs.tracks import FRAMEWORKS, TRACKS  # noqa: E402
from jax_nano.core.cli import OVERRIDES, add_flag, run_main, track_from_args  # noqa: E402
from jax_nano.core.device import DEVICES, check_device  # noqa: E402
from jax_nano.core.safe_paths import check_path_arg  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--track", default="8M", help=f"one of {', '.join(TRACKS)} (default 8M)")
    p.add_argument("--repeats", type=int, default=3, help="runs per framework, interleaved (default 3; >= 3 adds "
                   "Welch's t-test on Active Training Time)")
    p.add_argument("--steps", type=int, default=None, help="throughput-only: stop after N steps, whatever the "
                   "track's stop rule (a loss track keeps its target check, with a target it cannot reach)")
    for flag, (_, kind, text) in OVERRIDES.items():
        if flag == "framework":
            continue  # both, always
        if flag == "tokens":
            text = "stop after N tokens, whatever the track's stop rule (throughput-only for a loss track)"
        add_flag(p, flag, kind, text)
    p.add_argument("--no-eager", action="store_true",
                   help="no eager PyTorch row beside the compiled one (it runs only when PyTorch may compile)")
    p.add_argument("--split-steps", type=int, default=3, metavar="N",
                   help="after the runs, time N steps of each form in two halves, forward+backward and optimizer\n"
                        "(default 3; 0: no split)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after the comparison, save a JAX profiler trace of 5 steps here (untimed)")
    p.add_argument("--output", default=None, metavar="STEM",
                   help="report path without suffix (default results/compare-DEVICE-TRACK)")
    p.add_argument("--results-dir", default="results", help="where the report and each run's files go")
    p.add_argument("--baseline", default=None, metavar="JSON",
                   help="a one-device comparison JSON: scaling efficiency of a multi-device run against it")
    p.add_argument("--mesh", default=None, metavar="SPEC",
                   help="the JAX runs' device mesh, as scripts/speedrun.py --mesh (PyTorch uses one device)")
    p.add_argument("--keep-work", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-bar", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto (default): the NVIDIA GPU when there is one, and an error if JAX or PyTorch cannot\n"
                        "use it; gpu: an error without one; cpu: both frameworks on the CPU on purpose")
    # What speedrun's track_from_args also reads; a comparison never resumes and always sets its own init.
    p.set_defaults(framework=None, resume=False, init_from=None)
    return p


def main(argv=None) -> int:
    from jax_nano.bench import compare

    args = parser().parse_args(argv)
    for flag, path in (("--output", args.output), ("--profile", args.profile)):
        if path is not None:
            check_path_arg(path, flag)
    if args.repeats < 1:
        raise compare.CompareError(f"--repeats {args.repeats}: must be >= 1 (3 or more for a significance test)")
    if args.steps is not None and args.tokens is not None:
        raise compare.CompareError("--steps and --tokens conflict: pass only one budget")
    if args.split_steps < 0:
        raise compare.CompareError(f"--split-steps {args.split_steps}: must be >= 0 (0: no split)")
    if (args.steps is not None or args.tokens is not None) and args.target_loss is not None:
        raise compare.CompareError("--steps/--tokens and --target-loss conflict: a run stops on one rule")
    tokens, args.tokens = args.tokens, None  # applied below by stop_rule, which keeps a loss track a loss track
    track = track_from_args(args)
    throughput_only = args.steps is not None or tokens is not None
    track = compare.stop_rule(track, steps=args.steps, tokens=tokens)
    check_device(args.device, FRAMEWORKS)  # the workers inherit what "cpu" sets in the environment
    result = compare.compare(track, repeats=args.repeats, results_dir=args.results_dir, output=args.output,
                             show_bar=not args.no_bar, profile_dir=args.profile, baseline=args.baseline,
                             throughput_only=throughput_only, keep_work=args.keep_work, mesh=args.mesh,
                             eager=not args.no_eager, split_steps=args.split_steps)
    print(Path(result["files"]["md"]).read_text())
    print("report: " + ", ".join(result["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
