"""Ablate: a baseline against one or more variants of it, N seeds each, interleaved, with statistics.

    python scripts/ablate.py --track smoke --seeds 3 --variant unet-skips --variant muon-drop=0.1
    python scripts/ablate.py --track 8M --seeds 5 --variant "--muon-lr 0.03" --reach 5.0
    python scripts/ablate.py --track smoke --steps 20 --seeds 2 --variant unet-skips      # a quick look
    python scripts/ablate.py ... --resume                                   # continue an interrupted ablation

A variant is a registered name (unet-skips, muon-drop=P; docs/variants.md) or any track flags of
scripts/speedrun.py, quoted (a single flag alone as --variant=--unet-skips). Flags given outside --variant apply
to every arm, the baseline included.
The report (Markdown, JSON, PNG) is results/NAME/ablation.*, each run's files beside it.
"""

import argparse
import shlex
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs.model import ConfigError  # noqa: E402
from configs.tracks import TRACKS  # noqa: E402
from jax_nano import xla_flags  # noqa: E402
from jax_nano.core.cli import OVERRIDES, add_track_flags, run_main, track_from_args, use_compilation_cache  # noqa: E402
from jax_nano.core.device import DEVICES, check_device  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--track", default="smoke", help=f"one of {', '.join(TRACKS)} (default smoke)")
    p.add_argument("--variant", dest="arms", action="append", default=None, metavar="SPEC", required=True,
                   help="an arm against the baseline (repeatable): a variant's name (unet-skips, muon-drop=0.1)\n"
                        "or track flags, quoted: \"--muon-lr 0.03 --unet-skips\" (one flag: --variant=--unet-skips)")
    p.add_argument("--seeds", type=int, default=3, help="runs per arm, seeds SEED..SEED+N-1 (default 3)")
    p.add_argument("--steps", type=int, default=None, help="a quick look: every run stops after N steps")
    p.add_argument("--reach", type=float, default=None,
                   help="report steps and time to this train loss (default: a loss track's target)")
    p.add_argument("--t-test", action="store_true",
                   help="require Welch's t-test against the baseline (done whenever --seeds >= 2)")
    p.add_argument("--name", default=None, help="names results/NAME/ and runs/NAME/ (default ablate-TRACK)")
    p.add_argument("--resume", action="store_true", help="continue the ablation NAME: finished runs are kept")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--no-bar", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto, gpu or cpu, as scripts/speedrun.py")
    add_track_flags(p, skip=("variant",))
    p.set_defaults(variant=None)
    return p


def arm_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_track_flags(p)
    return p


def arm_track(base_args, spec: str):
    """The track of the arm `spec` (a variant's name or track flags) on top of the flags every arm shares."""
    flags = shlex.split(spec) if spec.strip().startswith("--") else ["--variant", spec.strip()]
    try:
        own, unknown = arm_parser().parse_known_args(flags)
    except argparse.ArgumentError as e:
        raise ConfigError(f"--variant {spec!r}: {e}") from None
    if unknown:
        raise ConfigError(f"--variant {spec!r}: {' '.join(unknown)} is not a track flag of scripts/speedrun.py "
                          "(see --help); an arm changes the track only")
    merged = argparse.Namespace(**vars(base_args))
    for flag in OVERRIDES:
        if getattr(own, flag) is not None:
            setattr(merged, flag, getattr(own, flag))
    merged.variant = (base_args.variant or []) + (own.variant or [])
    return track_from_args(merged), tuple(flags)


def main(argv=None) -> int:
    xla_flags.apply_default_flags()
    args = parser().parse_args(argv)
    args.init_from, resume = None, args.resume
    args.resume = False  # track_from_args reads it as speedrun's
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: an ablation needs at least 1 seed per arm")
    if args.t_test and args.seeds < 2:
        raise ConfigError(f"--t-test needs at least 2 seeds per arm, got --seeds {args.seeds}; pass --seeds 2 or more")
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps {args.steps}: must be >= 1")
        args.max_steps = args.steps
    from jax_nano.run import ablate, ablate_report

    baseline = track_from_args(args)
    arms = [ablate.Arm("baseline", (), baseline)]
    for spec in args.arms:
        track, flags = arm_track(args, spec)
        arms.append(ablate.Arm(spec.strip(), flags, track))
    if len({a.slug for a in arms}) != len(arms):
        raise ConfigError("two arms have the same name; give each --variant once")
    reach = args.reach if args.reach is not None else baseline.target_loss
    name = args.name or f"ablate-{baseline.name}"
    check_device(args.device, tuple({a.track.framework for a in arms}))
    use_compilation_cache()
    result = ablate.run(name, arms, ablate.seeds_of(baseline, args.seeds), reach=reach, results_dir=args.results_dir,
                        runs_dir=args.runs_dir, resume=resume, show_bar=not args.no_bar)
    analysis = ablate_report.write(result, args.results_dir, name)
    print(analysis["markdown"])
    print("report: " + ", ".join(analysis["files"].values()))
    if result["interrupted"]:
        again = shlex.join(["python", "scripts/ablate.py", *(sys.argv[1:] if argv is None else argv)])
        print(f"{result['interrupted']}: stopped; continue with: {again}"
              + ("" if "--resume" in again else " --resume"), file=sys.stderr)
        known = result["interrupted"] in signal.Signals.__members__
        return 128 + signal.Signals[result["interrupted"]].value if known else 1
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
