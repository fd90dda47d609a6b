"""Benchmark scores of a model through lm-evaluation-harness, written as results/eval-<name>.{md,json}.

The harness does the scoring (`lm_eval.simple_evaluate` over `jax_nano.evaluate.lm_eval_model.JaxNanoLM`); this module
picks the tasks, turns the harness's answer into the project's report, and names the report in the run's
summary JSON.
"""

import datetime
import json
import math
import time
from pathlib import Path

from configs.errors import UserError
from jax_nano.core import report
from jax_nano.core.safe_paths import check_name

DEFAULT_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "lambada_openai")


class HarnessError(UserError):
    """Tasks that cannot be found or downloaded; the message is one line."""


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise HarnessError("lm-eval is not installed; install the eval extra: pip install -e '.[eval]'") from None


def load_tasks(tasks, include_path=None):
    """(task manager, built tasks): the harness's tasks by name, their data downloaded, before any model work, so
    a misspelt name or an unreachable Hub fails at once. Tasks all found under `include_path` skip indexing the
    harness's own thousands of tasks (seconds)."""
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise HarnessError(f"--include-path {include_path}: no such directory of task YAML files")
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
    if manager is None or not all(t in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        raise HarnessError(f"unknown task {unknown[0]!r}; `lm_eval ls tasks` lists the harness's tasks, "
                           "--include-path DIR adds your own YAML tasks")
    built = []
    try:
        for name in tasks:
            loaded = manager.load([name])
            # a group keeps its structure (its scores are aggregated); a tag is the tasks it names
            built += [loaded["groups"][name]] if name in loaded["groups"] else list(loaded["tasks"].values())
    except ConnectionError as e:  # what `datasets` raises when the Hub cannot be reached
        raise HarnessError(f"cannot download the data of task {name!r}, the Hugging Face Hub is unreachable ({e}); "
                           "run where the Hub is reachable (or its datasets are cached), or use local tasks "
                           "(--include-path)") from None
    return manager, built


def run_tasks(lm, tasks, *, manager, limit=None, num_fewshot=None) -> dict:
    """`lm_eval.simple_evaluate` of `lm` on `tasks` (built by `load_tasks`), reduced to the report's figures."""
    import lm_eval

    t0 = time.perf_counter()
    model_s0, compile_s0 = lm.model_time_s, lm.compile_time_s
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, log_samples=False)
    return summarize(out, lm, wall_s=time.perf_counter() - t0, model_s=lm.model_time_s - model_s0,
                     compile_s=lm.compile_time_s - compile_s0, limit=limit, num_fewshot=num_fewshot)


def _metrics(task_result: dict) -> dict:
    """{"acc,none": x, "acc_stderr,none": s, ...} -> {"acc": x, "acc_stderr": s, ...}; a filter other than the
    default keeps its name ("exact_match,flexible-extract" -> "exact_match/flexible-extract")."""
    out = {}
    for key, value in task_result.items():
        if "," not in key or not isinstance(value, int | float):
            continue
        metric, filter_name = key.split(",", 1)
        out[metric if filter_name == "none" else f"{metric}/{filter_name}"] = float(value)
    return out


def summarize(out: dict, lm, *, wall_s: float, model_s: float, compile_s: float, limit=None,
              num_fewshot=None) -> dict:
    """items/s counts the seconds the model spent answering, compilation excluded."""
    n_samples = out.get("n-samples", {})
    tasks = {}
    for name, result in out["results"].items():
        tasks[name] = {"n": n_samples.get(name, {}).get("effective"), **_metrics(result)}
    n_items = sum(t["n"] or 0 for t in tasks.values())
    cfg = lm.model_config
    return {
        "model": cfg.name, "framework": lm.framework, "device": lm.device_name(),
        "date": datetime.date.today().isoformat(), "lm_eval_version": out.get("lm_eval_version"),
        "limit": limit, "num_fewshot": num_fewshot, "batch_size": lm.batch_size,
        "n_items": n_items, "wall_time_s": wall_s, "model_time_s": model_s, "compile_time_s": compile_s,
        "items_per_s": n_items / (model_s - compile_s) if model_s > compile_s else None,
        "tasks": tasks,
    }


def _cell(metrics: dict, name: str) -> str:
    if name not in metrics:
        return "-"
    stderr = metrics.get(f"{name}_stderr")
    return f"{metrics[name]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None and math.isfinite(stderr) else "")


def to_markdown(name: str, scores: dict) -> str:
    speed = f"{scores['items_per_s']:.2f} items/s" if scores["items_per_s"] else "n/a"
    lines = [
        f"# Benchmark scores: {name}",
        "",
        f"Model `{scores['model']}`, framework {scores['framework']}, device {scores['device']}, "
        f"lm-eval {scores['lm_eval_version']}, {scores['date']}.",
        f"{scores['n_items']} items"
        + (f" (--limit {scores['limit']})" if scores["limit"] is not None else "")
        + f", scored at {speed} ({scores['model_time_s'] - scores['compile_time_s']:.1f} s in the model, "
        f"{scores['compile_time_s']:.1f} s compiling, {scores['wall_time_s']:.1f} s in all).",
        "",
        "| task | items | acc | acc_norm | other metrics |",
        "|---|---|---|---|---|",
    ]
    for task, metrics in scores["tasks"].items():
        shown = {"n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
        others = ", ".join(f"{k} {_cell(metrics, k)}" for k in metrics
                           if k not in shown and not k.endswith("_stderr"))
        lines.append(f"| {task} | {metrics['n'] if metrics['n'] is not None else '-'} | {_cell(metrics, 'acc')} | "
                     f"{_cell(metrics, 'acc_norm')} | {others or '-'} |")
    return "\n".join(lines) + "\n"


def write(results_dir, name: str, scores: dict) -> tuple[Path, Path]:
    """results/eval-<name>.md and .json, each written whole or not at all."""
    results_dir = Path(results_dir)
    check_name(name, "the report's name")
    md, js = results_dir / f"eval-{name}.md", results_dir / f"eval-{name}.json"
    report.write_json_atomic(js, {"name": name, **scores})
    report.write_text_atomic(md, to_markdown(name, scores))
    return md, js


def link_summary(results_dir, run: str, eval_json: Path) -> Path | None:
    """Name the scores in the run's summary (results/<run>.json, key "eval_results"); None when the run has no
    summary (not finished, or trained elsewhere)."""
    summary_path = Path(results_dir) / f"{run}.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["eval_results"] = str(eval_json)
    report.write_json_atomic(summary_path, summary)
    return summary_path
