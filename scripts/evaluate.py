"""Benchmark scores of a model through lm-evaluation-harness; writes results/eval-<name>.{md,json}.

    python scripts/evaluate.py --run 4.5loss-jax                       # the default suite (needs the Hub)
    python scripts/evaluate.py --run 4.5loss-jax --tasks hellaswag,piqa --limit 200
    python scripts/evaluate.py --state-dict model.pt --framework torch --tasks arc_easy
    python scripts/evaluate.py --model-dir exports/4.5loss-jax --tasks arc_easy         # a transformers folder
    python scripts/evaluate.py --model tiny --include-path my_tasks --tasks my_task   # a fresh model, local task
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs.model import ConfigError  # noqa: E402
from jax_nano.core.cli import add_weight_flags, check_weight_source, run_main, use_compilation_cache  # noqa: E402
from jax_nano.core.safe_paths import check_name, result_files  # noqa: E402


def parser() -> argparse.ArgumentParser:
    from jax_nano.evaluate.task_scores import DEFAULT_TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    add_weight_flags(p)
    p.add_argument("--tasks", default=None, help=f"comma-separated harness tasks (default {','.join(DEFAULT_TASKS)})")
    p.add_argument("--include-path", default=None, metavar="DIR", help="a directory of your own YAML tasks")
    p.add_argument("--limit", type=float, default=None,
                   help="at most N items per task (a fraction of each task when below 1)")
    p.add_argument("--num-fewshot", type=int, default=None, help="examples in each prompt (default: the task's)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences scored at once (default 8)")
    p.add_argument("--framework", default="jax", choices=("jax", "torch"), help="the model's framework (default jax)")
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="matmul dtype (default float32)")
    p.add_argument("--name", default=None,
                   help="names results/eval-<name>.* (default: the run, the state_dict file's stem, or the preset)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--no-bar", action="store_true", help="no progress bar")
    return p


def output_name(args) -> str:
    """The report's name, one safe path component (jax_nano/core/safe_paths.py); one taken from a file's name
    must be one too, else --name gives another."""
    if args.name is not None:
        return check_name(args.name, "--name")
    if args.run:
        name = args.run
    elif args.state_dict:
        name = Path(args.state_dict).stem
    elif args.model_dir:
        name = Path(args.model_dir).name
    else:
        name = f"{args.model}-fresh"
    return check_name(name, "the report's name (from the weights; pass --name NAME)")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    check_weight_source(args)
    name = output_name(args)  # before the evaluation: a refused name costs nothing
    result_files(args.results_dir, f"eval-{name}", (".md", ".json"))
    if args.run is not None:
        result_files(args.results_dir, args.run, (".json",))
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit {args.limit:g} must be positive")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")


    from jax_nano.evaluate import task_scores

    task_scores.require_lm_eval()
    from jax_nano.evaluate.lm_eval_model import JaxNanoLM

    use_compilation_cache()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(task_scores.DEFAULT_TASKS)
    manager, built = task_scores.load_tasks(tasks, args.include_path)
    lm = JaxNanoLM(run=args.run, state_dict=args.state_dict, model_dir=args.model_dir, preset=args.model,
                   framework=args.framework, batch_size=args.batch_size, runs_dir=args.runs_dir,
                   compute_dtype=args.compute_dtype, show_bar=not args.no_bar)
    scores = task_scores.run_tasks(lm, built, manager=manager, limit=limit, num_fewshot=args.num_fewshot)
    md, js = task_scores.write(args.results_dir, name, scores)
    print(task_scores.to_markdown(name, scores))
    print(f"wrote {md} and {js}")
    if args.run is not None:
        summary = task_scores.link_summary(args.results_dir, args.run, js)
        if summary is not None:
            print(f"{summary} names them (eval_results)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
