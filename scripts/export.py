"""Export a trained model: a Hugging Face transformers folder, upstream's state_dict as safetensors, or upstream's
model.pt.

    python scripts/export.py --run smoke-jax --format hf --out exports/smoke-jax
    python scripts/export.py --state-dict model.pt --format hf --out exports/model
    python scripts/export.py --run smoke-jax --format safetensors --out exports/smoke-sd
    python scripts/export.py --run 8M-jax --format upstream --out exports/8M      # upstream's model.pt

`hf` needs the `hf` extra (transformers, safetensors). The folder loads offline with
`AutoModelForCausalLM.from_pretrained(DIR)` and back here with `--model-dir DIR` or `--init-from DIR`.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs.errors import UserError  # noqa: E402
from jax_nano.core.cli import add_weight_flags, run_main  # noqa: E402
from jax_nano.core.safe_paths import check_path_arg, run_folder  # noqa: E402


class ExportArgsError(UserError):
    """Flags that do not describe an export; one line with the fix."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    add_weight_flags(p, model_dir=False, fresh=False)
    p.add_argument("--format", default=None, help="hf (a transformers folder), safetensors (upstream's names) or "
                                                   "upstream (model.pt)")
    p.add_argument("--out", default=None, metavar="DIR", help="the folder to write (created)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    p.add_argument("--results-dir", default="results", help="where the run's summary RUN.json is")
    return p


def read_summary(results_dir, run: str) -> dict | None:
    path = Path(results_dir) / f"{run}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ExportArgsError(f"{path}: the run's summary is damaged (not JSON); restore it or pass "
                              "--results-dir where an intact one is") from None


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    # Names and paths before the heavy imports: a refusal is immediate.
    if args.run is not None:
        run_folder(args.runs_dir, args.run, "--run")
    if args.out is not None:
        check_path_arg(args.out, "--out")
    from jax_nano.core.extras import require_torch

    require_torch("scripts/export.py")
    from jax_nano.interop import hf_export

    hf_export.check_format(args.format)
    if args.out is None:
        raise ExportArgsError("no --out DIR; name the folder to write")
    if (args.run is None) == (args.state_dict is None):
        raise ExportArgsError("choose the weights: --run NAME or --state-dict PATH (one of them)")
    if args.run is not None and args.model is not None:
        raise ExportArgsError("--model goes with --state-dict; a run's checkpoint names its preset")
    hf_export.check_out(args.out, args.force)
    summary = read_summary(args.results_dir, args.run) if args.run is not None else None
    from jax_nano.interop.weights import load_weights

    weights, cfg = load_weights(run=args.run, state_dict=args.state_dict, preset=args.model, runs_dir=args.runs_dir)
    source = f"run {args.run}" if args.run is not None else str(args.state_dict)
    metrics = {k: summary[k] for k in ("train_loss", "val_loss", "val_accuracy", "val_perplexity")} if summary else {}
    out = hf_export.export(weights, cfg, args.out, args.format, force=args.force, summary=summary, source=source,
                           metrics=metrics, step=(summary or {}).get("steps", 0))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({args.format}, model {cfg.name}, {size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
