"""The report of an ablation (jax_nano/run/ablate.py): per arm the median and spread of its runs' final losses,
throughput and time to a target loss; per variant its difference from the baseline with a 95% interval and
Welch's t-test (jax_nano/core/significance.py); the loss curves' mean and band against tokens and against time.
Markdown, JSON and PNG in results/<name>/ablation.*.
"""

import io
from pathlib import Path

import numpy as np

from configs import variants
from jax_nano.core import report
from jax_nano.core.significance import describe, welch
from jax_nano.run.ablate import curve

# metric -> (what the report calls it, its format)
METRICS = {
    "train_loss": ("final train loss", "{:.4f}"),
    "val_loss": ("final val loss", "{:.4f}"),
    "tokens_per_s": ("tokens/s", "{:,.0f}"),
    "active_time_s": ("Active Training Time, s", "{:.2f}"),
    "steps_to_reach": ("steps to reach {reach}", "{:.1f}"),
    "time_to_reach_s": ("time to reach {reach}, s", "{:.2f}"),
}


def run_metrics(summary: dict, records: list, reach: float | None) -> dict:
    m = {k: summary[k] for k in ("train_loss", "val_loss", "tokens_per_s", "active_time_s")}
    if reach is not None:
        hit = next((r for r in records if r["loss"] <= reach), None)
        m["steps_to_reach"] = hit["step"] + 1 if hit else None
        m["time_to_reach_s"] = hit["active_time_s"] if hit else None
    return m


def analyse(result: dict, folder: Path) -> dict:
    """Per-run metrics, per-arm statistics and the comparisons against the baseline (the first arm)."""
    plan = result["plan"]
    reach, seeds = plan["reach"], plan["seeds"]
    metrics = [k for k in METRICS if reach is not None or "reach" not in k]
    arms = {}
    for arm in plan["arms"]:
        slug = arm["slug"]
        runs = {}
        for seed in seeds:
            key = f"{slug}-seed{seed}"
            if key in result["runs"]:
                runs[key] = run_metrics(result["runs"][key], curve(folder, key), reach)
        arms[arm["label"]] = {
            "flags": arm["flags"], "variants": variants.describe_values(arm["variants"]), "runs": runs,
            "failed": {k: v for k, v in result["failed"].items() if k.startswith(f"{slug}-seed")},
            "stats": {m: describe([r[m] for r in runs.values()]) for m in metrics},
            "reached": sum(r.get("steps_to_reach") is not None for r in runs.values()) if reach is not None else None,
        }
    base, *others = list(arms)
    comparisons = {label: {m: welch([r[m] for r in arms[label]["runs"].values()],
                                    [r[m] for r in arms[base]["runs"].values()]) for m in metrics}
                   for label in others}
    first = next(iter(result["runs"].values()), {})
    return {"name": plan["name"], "track": first.get("track"), "device": first.get("device"),
            "date": first.get("date"), "commit": first.get("commit"), "seeds": seeds, "reach": reach,
            "baseline": base, "metrics": metrics, "arms": arms, "comparisons": comparisons,
            "failed": result["failed"], "interrupted": result["interrupted"]}


def _name(metric: str, reach) -> str:
    return METRICS[metric][0].format(reach=f"{reach:g}" if reach is not None else "")


def _fmt(metric: str, value) -> str:
    return "n/a" if value is None else METRICS[metric][1].format(value)


def _cell(metric: str, stats: dict | None) -> str:
    if stats is None:
        return "n/a"
    spread = f" [{_fmt(metric, stats['min'])}..{_fmt(metric, stats['max'])}]" if stats["n"] > 1 else ""
    sd = f", sd {_fmt(metric, stats['stdev'])}" if stats["stdev"] is not None else ""
    return f"{_fmt(metric, stats['median'])}{spread}{sd}"


def markdown(a: dict, png_name: str) -> str:
    reach = a["reach"]
    lines = [f"# Ablation {a['name']}: track {a['track']} on {a['device']}, {a['date']} (commit {a['commit']})", "",
             f"Seeds {', '.join(map(str, a['seeds']))}; one round per seed, every arm once per round, the arms' "
             "order rotated each round.", "",
             "| arm | flags | variants | runs | " + " | ".join(_name(m, reach) for m in a["metrics"]) + " |",
             "|---|---|---|---|" + "---|" * len(a["metrics"])]
    for label, arm in a["arms"].items():
        runs = f"{len(arm['runs'])}" + (f" ({len(arm['failed'])} failed)" if arm["failed"] else "")
        if arm["reached"] is not None:
            runs += f", {arm['reached']} reached {reach:g}"
        lines.append(f"| {label} | {' '.join(arm['flags']) or '-'} | {arm['variants']} | {runs} | "
                     + " | ".join(_cell(m, arm["stats"][m]) for m in a["metrics"]) + " |")
    lines += ["", "Cells: median [min..max], sd = sample standard deviation over the seeds.", "",
              f"## Against the baseline ({a['baseline']})", "",
              "Difference of means (variant - baseline), its 95% interval and Welch's t-test (two-sided p).", "",
              "| variant | metric | difference | 95% interval | p |", "|---|---|---|---|---|"]
    for label, per_metric in a["comparisons"].items():
        for m, w in per_metric.items():
            if w is None:
                lines.append(f"| {label} | {_name(m, reach)} | n/a | n/a (needs 2+ runs per arm) | n/a |")
            else:
                lines.append(f"| {label} | {_name(m, reach)} | {w['difference']:+.4g} | "
                             f"[{w['low']:+.4g}, {w['high']:+.4g}] | {w['p']:.3g} |")
    if a["failed"]:
        lines += ["", "## Failed runs", ""] + [f"- {k}: {v}" for k, v in a["failed"].items()]
    if a["interrupted"]:
        lines += ["", f"Interrupted ({a['interrupted']}): the remaining runs were not trained; --resume continues."]
    lines += ["", f"![loss curves]({png_name})", ""]
    return "\n".join(lines)


def plot(a: dict, folder: Path, path: Path) -> None:
    """Train loss against tokens and against Active Training Time: each arm's mean over its seeds and a band of
    one standard deviation (runs cut to the shortest of the arm's)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), dpi=100)
    FigureCanvasAgg(fig)
    by_tokens, by_time = fig.subplots(1, 2)
    for label, arm in a["arms"].items():
        curves = [curve(folder, key) for key in arm["runs"]]
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        loss = np.array([[r["loss"] for r in c[:n]] for c in curves])
        tokens = np.array([r["tokens"] for r in curves[0][:n]])
        time = np.mean([[r["active_time_s"] for r in c[:n]] for c in curves], axis=0)
        mean, sd = loss.mean(axis=0), loss.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(n)
        for ax, x in ((by_tokens, tokens), (by_time, time)):
            (line,) = ax.plot(x, mean, linewidth=1.2, label=f"{label} ({len(curves)} runs)")
            ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    for ax, xlabel in ((by_tokens, "tokens"), (by_time, "Active Training Time (s)")):
        if a["reach"] is not None:
            ax.axhline(a["reach"], linestyle="--", color="gray", linewidth=1, label=f"target {a['reach']:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"ablation {a['name']}: {a['track']} on {a['device']}, {a['date']} (mean and 1 sd over seeds)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    report.write_bytes_atomic(path, buf.getvalue())


def write(result: dict, results_dir, name: str) -> dict:
    """Analyse and write results/<name>/ablation.{md,json,png}; the analysis with its `files` and `markdown`."""
    folder = Path(results_dir) / name
    a = analyse(result, folder)
    files = {ext: folder / f"ablation.{ext}" for ext in ("md", "json", "png")}
    a["files"] = {k: str(v) for k, v in files.items()}
    if result["runs"]:
        plot(a, folder, files["png"])
    a["markdown"] = markdown(a, files["png"].name)
    report.write_text_atomic(files["md"], a["markdown"])
    report.write_json_atomic(files["json"], a)
    return a

