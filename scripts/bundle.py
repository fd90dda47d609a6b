"""Build one folder that runs the project on an offline GPU machine with its own Python stack: the source, the
wheels the machine lacks, token stores, the tokenizer and run.sh (jax_nano/bundle/).

    python scripts/bundle.py --out bundle --data processed_data/offline          # the preset target
    python scripts/bundle.py --out bundle --preinstalled freeze.txt --python 3.12 --max-mb 60
    bundle/run.sh smoke --out results-here                                       # then, on the target
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs.tracks import FRAMEWORKS  # noqa: E402
from jax_nano.bundle.targets import PRESETS, BundleError, get_target  # noqa: E402
from jax_nano.core.cli import run_main  # noqa: E402
from jax_nano.core.safe_paths import check_path_arg  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="the bundle folder to create (must not exist, or be empty)")
    p.add_argument("--preinstalled", default=None, metavar="FILE|PRESET",
                   help=f"the target's packages: a `pip freeze` file of it, or a preset: {', '.join(PRESETS)}\n"
                        f"(default {next(iter(PRESETS))})")
    p.add_argument("--python", default=None, help="the target's Python (needed with a freeze file), e.g. 3.12")
    p.add_argument("--data", action="append", default=[], metavar="STORE",
                   help="a token store to ship (repeatable), e.g. processed_data/offline; the embedded sample\n"
                        "always ships with the source")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="the frameworks the bundle runs (default jax,torch; jax alone carries no PyTorch)")
    p.add_argument("--max-mb", type=float, default=None, help="refuse to write a bundle larger than this (10^6 bytes)")
    return p


def main(argv=None) -> int:
    from jax_nano.bundle import build, wheels

    args = parser().parse_args(argv)
    check_path_arg(args.out, "--out")
    frameworks = tuple(f.strip() for f in args.frameworks.split(","))
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown or not frameworks:
        raise BundleError(f"--frameworks {args.frameworks!r}: choose from {', '.join(FRAMEWORKS)}")
    _, requires_python, _ = wheels.project_metadata(ROOT)
    target = get_target(args.preinstalled, args.python, requires_python)
    manifest = build.build(ROOT, Path(args.out), target, frameworks, data=args.data, max_mb=args.max_mb)
    print(f"bundle for {target.name}: {target.about} (Python {target.python})")
    print("\n".join(f"  {line}" for line in manifest["requirements"]))
    print(build.size_report(manifest["bytes"]))
    print(f"written: {args.out}; on the target: {args.out}/run.sh JOB --out DIR (JOB: {', '.join(manifest['jobs'])})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
