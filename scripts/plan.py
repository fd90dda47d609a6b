"""Plan a run on a card (or TPU slice) this machine lacks: the real train and eval steps compiled for it, memory
and kernels read from the compiler (jax_nano/plan/).

    python scripts/plan.py --gpu rtx4090 --track 4.5loss
    python scripts/plan.py --gpu h100 --track 8M --attention xla --remat full
    python scripts/plan.py --tpu v5e-1 --track 8M
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs.model import get_model_config  # noqa: E402
from configs.tracks import TRACKS  # noqa: E402
from jax_nano import xla_flags  # noqa: E402
from jax_nano.core.cli import add_track_flags, run_main, track_from_args  # noqa: E402
from jax_nano.core.safe_paths import check_name, result_files  # noqa: E402
from jax_nano.plan.targets import GPUS, TPUS, get_gpu, get_tpu  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpu", default="rtx4090", help=f"the card: {', '.join(GPUS)} (default rtx4090)")
    p.add_argument("--target-file", default=None, help="a card of your own: JSON with the fields of GpuTarget")
    p.add_argument("--tpu", default=None, help=f"a TPU slice instead of a card: {', '.join(TPUS)}")
    p.add_argument("--track", default="4.5loss", help=f"one of {', '.join(TRACKS)} (default 4.5loss)")
    add_track_flags(p, skip=("framework",))
    p.add_argument("--results-dir", default="results")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.framework, args.resume, args.init_from = "jax", False, None
    if args.target_file and not args.tpu:
        check_name(Path(args.target_file).stem, "--target-file's name (it names results/plan-NAME-TRACK.*)")
    target = get_tpu(args.tpu) if args.tpu else get_gpu(args.gpu, args.target_file)
    target_key = args.tpu or (Path(args.target_file).stem if args.target_file else args.gpu)
    track = track_from_args(args)
    result_files(args.results_dir, f"plan-{target_key}-{track.name}", (".md", ".json"))
    os.environ["JAX_PLATFORMS"] = "cpu"  # the target is compiled for, never used: no accelerator backend starts
    xla_flags.apply_default_flags()

    from jax_nano.plan import planner

    result = planner.plan(track, get_model_config(track.model), target)
    result["target_key"] = target_key
    files = planner.write(result, args.results_dir)
    print(planner.render_markdown(result))
    print(f"written: {', '.join(files.values())}")
    if result["fits_with"] is None:
        raise planner.PlanError(f"{track.name} does not fit {target.name} with any lever tried "
                                f"({', '.join(lv['lever'] for lv in result['levers'])}); see {files['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
