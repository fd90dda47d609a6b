"""Run a Blueberry-Nano speedrun track in JAX (default) or PyTorch.

    python scripts/speedrun.py --track 4.5loss
    python scripts/speedrun.py --track 8M --framework torch --data processed_data/offline --record
    python scripts/speedrun.py --track 4.5loss --mesh data=2,fsdp=4          # 8 local devices
    python scripts/speedrun.py --track smoke --device cpu                    # the CPU, even on a GPU machine
    python scripts/speedrun.py --track 4.5loss --coordinator host0:1234 --num-processes 2 --process-id 0
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
from jax_nano.core import safe_paths  # noqa: E402
from jax_nano.core.cli import add_track_flags, run_main, track_from_args, use_compilation_cache  # noqa: E402
from jax_nano.core.device import DEVICES, check_device  # noqa: E402
from jax_nano.run import records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--track", default="smoke", help=f"one of {', '.join(TRACKS)} (default smoke)")
    add_track_flags(p)
    p.add_argument("--run-name", default=None, help="names results/<run>.* and runs/<run>/ (default TRACK-FRAMEWORK)")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--resume-from-good", action="store_true",
                   help="--resume, but if the latest checkpoint fails its checksums, continue from the newest one\n"
                        "that verifies (the failing ones are moved to runs/<run>/damaged-checkpoints/)")
    p.add_argument("--stop-after", type=int, default=None, help="end this session after N steps, checkpointed")
    p.add_argument("--init-from", default=None,
                   help="weights to start from: a PyTorch state_dict, upstream's model.pt, a .safetensors\n"
                        "or a transformers folder (scripts/export.py)")
    p.add_argument("--export-torch", default=None, help="save the final weights as a PyTorch state_dict here")
    p.add_argument("--export-format", default="plain", choices=("plain", "upstream"),
                   help="--export-torch writes a bare state_dict (plain) or upstream's model.pt layout")
    p.add_argument("--record", action="store_true", help="append the result to LEADERBOARD.md")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the track N times (runs RUN-1ofN ..); --record then writes one row of their mean and\n"
                        "spread and prints the p-value that they beat the fastest row on this device")
    p.add_argument("--leaderboard", default=str(ROOT / "LEADERBOARD.md"), help=argparse.SUPPRESS)
    p.add_argument("--results-dir", default="results")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--no-bar", action="store_true", help="no progress bar (logs still go to results/<run>.jsonl)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto (default): the NVIDIA GPU when there is one, and an error if the framework cannot\n"
                        "use it; gpu: an error without one; cpu: the CPU on purpose")
    g = p.add_argument_group("more than one device (jax)")
    g.add_argument("--mesh", default=None, metavar="SPEC",
                   help="device mesh: data=N (data parallel), fsdp=M (parameters and optimizer state split,\n"
                        "ZeRO-3) or data=N,fsdp=M; default every device on data")
    g.add_argument("--fsdp", action="store_true", help="shorthand for --mesh fsdp=<every device>")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: address of process 0's coordinator (jax.distributed)")
    g.add_argument("--num-processes", type=int, default=None, help="multi-host: how many processes in all")
    g.add_argument("--process-id", type=int, default=None, help="multi-host: this process's id, 0..N-1")
    g.add_argument("--distributed", action="store_true",
                   help="multi-host with jax.distributed.initialize() reading its cluster's environment\n"
                        "(SLURM, Open MPI, TPU pods, JAX_COORDINATOR_ADDRESS ...)")
    return p


def mesh_from_args(args) -> str | None:
    if args.fsdp:
        if args.mesh is not None:
            raise ConfigError("--fsdp and --mesh conflict: --fsdp means --mesh fsdp=<every device>; pass only one")
        return "data=1"
    return args.mesh


def init_distributed(args) -> None:
    """jax.distributed.initialize, before anything touches a device, when the flags ask for more than one process."""
    given = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
    if not any(given) and not args.distributed:
        return
    import jax

    if any(given):
        if not all(given):
            raise ConfigError("--coordinator, --num-processes and --process-id go together; pass all three "
                              "(or --distributed to read them from the cluster's environment)")
        if not 0 <= args.process_id < args.num_processes:
            raise ConfigError(f"--process-id {args.process_id} is outside 0..{args.num_processes - 1}")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    else:
        jax.distributed.initialize()


def main(argv=None) -> int:
    xla_flags.apply_default_flags()  # before JAX starts a backend
    args = parser().parse_args(argv)
    args.resume = args.resume or args.resume_from_good
    if args.repeats < 1:
        raise ConfigError(f"--repeats {args.repeats}: must be >= 1 (the runs one leaderboard row averages)")
    if args.repeats > 1 and args.stop_after is not None:
        raise ConfigError("--repeats and --stop-after conflict: repeated runs each run to the end")
    track = track_from_args(args)
    # Names and paths first: a refusal costs nothing, and nothing is written before it.
    base = args.run_name or f"{track.name}-{track.framework}"
    names = records.repeat_names(base, args.repeats)
    for name in dict.fromkeys([base, *names]):  # the name as given first, so a refusal quotes it
        safe_paths.run_folder(args.runs_dir, name)
        safe_paths.result_files(args.results_dir, name)
    if args.export_torch is not None:
        safe_paths.check_path_arg(args.export_torch, "--export-torch")
    if args.record:
        from jax_nano.core import leaderboard
        from jax_nano.run.eligibility import record_refusal

        if track.leaderboard:
            leaderboard.check_writable(args.leaderboard, track.name)
        why = record_refusal(track)  # before the run, not after it
        if why is not None:
            raise ConfigError(f"--record refused: {why}")

    mesh = mesh_from_args(args)
    if mesh is not None and track.framework != "jax":
        raise ConfigError("--mesh and --fsdp apply to the jax framework only")
    check_device(args.device, (track.framework,))
    init_distributed(args)

    import jax

    from jax_nano.run import speedrun

    use_compilation_cache()
    summaries = []
    for i, name in enumerate(names):
        done = speedrun.finished_summary(args.results_dir, name) if args.resume and len(names) > 1 else None
        resume = args.resume and (len(names) == 1 or speedrun.has_checkpoints(Path(args.runs_dir) / name))
        summary = done or speedrun.speedrun(
            track, run_name=name, results_dir=args.results_dir, runs_dir=args.runs_dir, resume=resume,
            stop_after=args.stop_after, init_from=None if resume else args.init_from,
            export_to=args.export_torch if i == len(names) - 1 else None, export_format=args.export_format,
            show_bar=not args.no_bar, mesh=mesh, fallback=args.resume_from_good)
        summaries.append(summary)
        if not summary["finished"]:
            break
    if jax.process_index() != 0:
        return 0
    if not summary["finished"]:
        again = shlex.join(["python", "scripts/speedrun.py", *resume_args(sys.argv[1:] if argv is None else argv)])
        saved = f"checkpoint {summary['checkpoint']}" if summary["checkpoint"] else "nothing to save yet"
        if summary["interrupted"]:
            print(f"{summary['interrupted']}: stopped at step {summary['next_step']} ({saved}); continue with: "
                  f"{again}" if summary["checkpoint"] else f"{summary['interrupted']}: stopped before the first step; "
                  "nothing was saved", file=sys.stderr)
            return stop_code(summary["interrupted"])
        print(f"stopped at step {summary['next_step']} ({saved}); continue with: {again}")
        return 0
    print(speedrun.describe(summary))
    if len(summaries) > 1:
        print(records.spread_line(summaries))
    if args.record:
        from jax_nano.core.storage import writing
        from jax_nano.run.eligibility import summary_refusal

        why = next(filter(None, map(summary_refusal, summaries)), None)
        if why is not None:
            raise ConfigError(f"--record refused: {why}; LEADERBOARD.md is unchanged")
        print(records.claim(args.leaderboard, track.name, summaries))
        with writing(args.leaderboard):
            leaderboard.append_row(args.leaderboard, track.name, leaderboard.row_from_summaries(summaries))
        print(f"recorded in {args.leaderboard} ({len(summaries)} run{'s' if len(summaries) > 1 else ''})")
    return 0


def resume_args(given: list) -> list:
    """The arguments that continue this run: the same ones with --resume, without --init-from (the checkpoint now
    holds the weights, and the two flags conflict)."""
    kept, skip = [], False
    for arg in given:
        if skip:
            skip = False
        elif arg == "--init-from":
            skip = True
        elif not arg.startswith("--init-from="):
            kept.append(arg)
    return kept if {"--resume", "--resume-from-good"} & set(kept) else [*kept, "--resume"]


def stop_code(signal_name: str) -> int:
    """The shell's exit code of a process ended by that signal (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + signal.Signals[signal_name].value


if __name__ == "__main__":
    sys.exit(run_main(main))
