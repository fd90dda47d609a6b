"""The benchmark's report (jax_nano/bench/bench.py): its figures from the runs' summaries, as Markdown, JSON and PNG.

Every figure is named with the device the runs themselves report (the JAX runs' device name; a CPU is
"N-core CPU"), never with what the bench was asked for.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

from configs.tracks import FRAMEWORKS
from jax_nano.bench import predicted
from jax_nano.bench.compare_report import LABEL, device_slug, fmt, fmt_stats, form_label, split_lines
from jax_nano.bench.load import describe as load_lines
from jax_nano.bench.stats import ratio, spread
from jax_nano.core.peak import measured_note

CATEGORY_LABELS = {"matmul": "matmuls", "attention": "attention", "muon": "Muon (Polar Express)", "rest": "the rest",
                   "gaps": "gaps"}


def device_label(records: list[dict], device: str) -> str:
    for record in records:
        result = record.get("result")
        if result and result.get("device"):
            if result.get("backend") == "cpu":
                name = result["device"]
                return f"{os.cpu_count()}-core CPU" + (f" ({name})" if name not in ("", "CPU") else "")
            return result["device"]
    return f"{device.upper()} (no run finished)"


def _status(records: list[dict]) -> str:
    if any("result" in r for r in records):
        failed = sum("error" in r for r in records)
        return "ok" if not failed else f"ok ({failed} run(s) failed)"
    if not records:
        return "not run"
    last = records[-1]
    return f"failed: {last['error']}" if "error" in last else f"skipped: {last.get('skipped', 'not run')}"


def _metrics(records: list[dict]) -> dict:
    done = [r for r in records if "result" in r]
    res = [r["result"] for r in done]
    return {
        "tokens_per_s": spread(s["tokens_per_s"] for s in res),
        "mfu": spread(s.get("mfu") for s in res),
        "peak_memory_bytes": spread(s.get("peak_memory_bytes") for s in res),
        "setup_cold_s": spread(r["result"]["setup_time_s"] for r in done if r["cold"]),
        "setup_warm_s": spread(r["result"]["setup_time_s"] for r in done if not r["cold"]),
    }


def _median(stats: dict | None):
    return stats["median"] if stats else None


def assemble(records: list[dict], plan, cases: tuple, *, device: str, elapsed_s: float,
             load: dict | None = None) -> dict:
    """The report of `records` (the runs so far), one section per case of `cases` (the suite's `CASES`)."""
    label = device_label(records, device)
    forms = list(plan.frameworks)
    sections = []
    for case in cases:
        runs = {fw: [r for r in records if r["kind"] == "head-to-head" and r["case"] == case.name
                     and r["framework"] == fw] for fw in forms}
        frameworks = {}
        for fw in forms:
            done = [r["result"] for r in runs[fw] if "result" in r]
            frameworks[fw] = {"label": form_label(fw, done), "n_runs": len(done), "status": _status(runs[fw]),
                              "compile": done[0].get("compile") if done else None,
                              "device": done[0].get("device") if done else None,
                              "versions": done[0].get("versions") if done else None, "metrics": _metrics(runs[fw])}
        pairs = {}
        for fw in forms:
            for r in runs[fw]:
                if "result" in r:
                    pairs.setdefault(r["repeat"], {})[fw] = r["result"]["tokens_per_s"]
        paired = [p["jax"] / p["torch"] for p in pairs.values() if p.get("jax") and p.get("torch")]
        paired_eager = [p["jax"] / p["torch-eager"] for p in pairs.values() if p.get("jax") and p.get("torch-eager")]
        split = {r["framework"]: r.get("result") or ({"error": r["error"]} if r.get("error") else
                                                     {"skipped": r.get("skipped", "not run")})
                 for r in records if r["kind"] == "split" and r["case"] == case.name}
        median = {fw: _median(frameworks[fw]["metrics"]["tokens_per_s"]) for fw in forms}
        any_result = next((r["result"] for fw in forms for r in runs[fw] if "result" in r), None)
        config = (any_result or {}).get("track_config") or {}
        sections.append({
            "case": case.name, "track": case.track,
            "config": {k: config.get(k) for k in ("model", "batch_size", "seq_len", "precision", "target_loss",
                                                   "target_tokens", "max_steps")},
            "frameworks": frameworks,
            "ratio_tokens_per_s": ratio(median.get("jax"), median.get("torch")),
            "ratio_paired": spread(paired),
            "ratio_eager_tokens_per_s": ratio(median.get("jax"), median.get("torch-eager")),
            "ratio_eager_paired": spread(paired_eager),
            "split": split or None,
        })
    lever_case = cases[-1 if plan.cpu else 0].name  # as bench.plan_runs chooses it
    base = [r for r in records if r["kind"] == "head-to-head" and r["case"] == lever_case and r["framework"] == "jax"]
    default = _metrics(base)
    levers = [{"lever": "default", "about": "the track as it runs (attention auto, layers scanned, remat none, "
               "no loss chunk, the default XLA flags, orthogonalization dtype auto)", "track": {}, "env": {},
               "metrics": default,
               "vs_default": 1.0 if default["tokens_per_s"] else None, "status": _status(base)}]
    for lever in plan.lever_list():
        mine = [r for r in records if r["kind"] == "lever" and r["lever"] == lever.name]
        metrics = _metrics(mine)
        levers.append({"lever": lever.name, "about": lever.about, "track": {**lever.track, **lever.optim},
                       "env": lever.env,
                       "metrics": metrics, "status": _status(mine),
                       "vs_default": ratio(_median(metrics["tokens_per_s"]), _median(default["tokens_per_s"]))})
    profiles = []
    for case in cases if plan.profile_steps else ():
        mine = [r for r in records if r["kind"] == "profile" and r["case"] == case.name]
        profiles.append({"case": case.name, "status": _status(mine),
                         "breakdown": next((r["result"] for r in mine if "result" in r), None)})
    return {
        "device": label, "device_slug": device_slug(label), "asked_device": device, "smoke": plan.smoke,
        "commit": next((r["result"].get("commit") for r in records if r.get("result")), "unknown"),
        "date": datetime.date.today().isoformat(), "elapsed_s": elapsed_s,
        "lever_case": lever_case, "plan": dataclasses.asdict(plan), "forms": forms, "cases": sections,
        "levers": levers, "profiles": profiles,
        "notes": notes_for(records, plan), "load": load,
        "runs": [{k: r.get(k) for k in ("label", "kind", "case", "framework", "lever", "cold", "repeat", "wall_s",
                                        "backend", "error", "skipped")}
                 | {k: (r.get("result") or {}).get(k) for k in ("device", "tokens_per_s", "setup_time_s", "steps",
                                                                 "reached_target", "peak_memory_bytes", "mfu",
                                                                 "compiles_during_run")}
                 for r in records],
    }


def notes_for(records: list[dict], plan) -> list[str]:
    notes = ["Random tokens (no dataset on the machine): these are throughput figures; the losses mean nothing.",
             "Setup & Compilation Time: the runs of this invocation share fresh, empty compilation caches: a "
             "program's first run is cold, its repeats warm."]
    if not getattr(plan, "cpu", False):
        notes.insert(1, "The 4.5loss step keeps its per-step target check, with a target no run reaches (-inf), for "
                        "the steps asked (`compare.stop_rule`).")
    if os.environ.get("XLA_FLAGS") or os.environ.get("JAX_NANO_XLA_FLAGS") == "0":
        notes.append("XLA_FLAGS or JAX_NANO_XLA_FLAGS=0 was set when the bench started: the default runs did not "
                     "use the project's default XLA flags, so the xla-flags-off lever changes nothing.")
    done = [r["result"] for r in records if "result" in r and r["kind"] in ("head-to-head", "lever")]
    if any(s.get("mfu") is None for s in done):
        notes.append("MFU is n/a where the device has neither a published peak nor a measured one.")
    measured = next((s for s in done if s.get("mfu_basis") == "measured"), None)
    if measured is not None:
        notes.append(measured_note(measured["peak_flops"], measured.get("peak")))
    compiled = {s.get("compile") for s in done if s.get("framework") == "torch" and s.get("compile")}
    notes += [f"PyTorch: {note}." for note in sorted(compiled)]
    if any(s.get("backend") == "cpu" and s.get("framework") == "torch" for s in done):
        notes.append("PyTorch on the CPU reports no peak memory.")
    if any(s.get("compiles_during_run") for s in done):
        notes.append("WARNING: a run compiled during its timed loop (compiles_during_run > 0).")
    return notes


def _config_text(config: dict) -> str:
    check = "target check on" if config.get("target_loss") is not None else "no target"
    return (f"`{config.get('model')}`, {config.get('batch_size')} x {config.get('seq_len')}, "
            f"`{config.get('precision')}`, {check}")


def _ratio_text(r, paired) -> str:
    text = "n/a" if r is None else f"{r:.3f}"
    if paired and paired["n"] > 1:
        text += f" [{paired['min']:.3f} – {paired['max']:.3f}]"
    return text


def render_markdown(result: dict) -> str:
    plan = result["plan"]
    lines = [f"# Benchmark on {result['device']}", "",
             f"- device: **{result['device']}** (every figure below was measured on it, in this invocation); "
             f"commit `{result['commit']}`; date {result['date']}",
             f"- {plan['steps']} timed steps per run after the warm-up; {plan['repeats']} run(s) per framework and "
             f"case, interleaved; every run a fresh process; {result['elapsed_s']:.0f} s in all"
             + (" (smoke: the tiny model)" if result["smoke"] else "")]
    forms = result.get("forms") or list(FRAMEWORKS)
    first = result["cases"][0]["frameworks"]
    versions = {k: v for fw in forms for k, v in (first[fw]["versions"] or {}).items()}
    if versions:
        lines.append("- versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()))
    lines += [f"- {line}" for line in load_lines(result.get("load"))]
    lines += [f"- {note}" for note in result["notes"]]
    lines += ["", "## JAX vs PyTorch", "",
              "Median [min – max] ±stdev over the runs; the ratio is JAX / PyTorch tokens/s (medians; in brackets "
              "the range of the ratios of paired runs).", "",
              "| case | form | tokens/s | MFU | peak device memory | setup, cold | setup, warm | status |",
              "|---|---|---|---|---|---|---|---|"]
    for case in result["cases"]:
        for fw in forms:
            f = case["frameworks"][fw]
            m = f["metrics"]
            lines.append(f"| {case['case']} ({_config_text(case['config'])}) | {f.get('label', LABEL[fw])} | "
                         f"{fmt_stats(m['tokens_per_s'], 'rate')} | {fmt_stats(m['mfu'], 'percent')} | "
                         f"{fmt_stats(m['peak_memory_bytes'], 'bytes')} | {fmt_stats(m['setup_cold_s'], 'duration')}"
                         f" | {fmt_stats(m['setup_warm_s'], 'duration')} | {f['status']} |")
    eager = "torch-eager" in forms
    lines += ["", "| case | JAX / PyTorch tokens/s |" + (" JAX / PyTorch eager tokens/s |" if eager else ""),
              "|---|---|" + ("---|" if eager else "")]
    for case in result["cases"]:
        cells = [_ratio_text(case["ratio_tokens_per_s"], case["ratio_paired"])]
        if eager:
            cells.append(_ratio_text(case.get("ratio_eager_tokens_per_s"), case.get("ratio_eager_paired")))
        lines.append(f"| {case['case']} | " + " | ".join(cells) + " |")
    for case in result["cases"]:
        if case.get("split"):
            labels = {fw: case["frameworks"][fw].get("label", LABEL[fw]) if fw in case["frameworks"] else LABEL[fw]
                      for fw in case["split"]}
            lines += ["", f"**{case['case']}**"] + split_lines(case["split"], labels)
    lines += ["", f"## JAX levers, one at a time ({result.get('lever_case', result['cases'][0]['case'])})", "",
              "| lever | what changes | tokens/s | vs default | MFU | peak device memory | setup, cold | status |",
              "|---|---|---|---|---|---|---|---|"]
    for row in result["levers"]:
        m = row["metrics"]
        vs = "n/a" if row["vs_default"] is None else f"{row['vs_default']:.3f}"
        lines.append(f"| {row['lever']} | {row['about']} | {fmt_stats(m['tokens_per_s'], 'rate')} | {vs} | "
                     f"{fmt_stats(m['mfu'], 'percent')} | {fmt_stats(m['peak_memory_bytes'], 'bytes')} | "
                     f"{fmt_stats(m['setup_cold_s'], 'duration')} | {row['status']} |")
    if result["profiles"]:
        lines += ["", "## Where the JAX step's device time goes (profile; rules in jax_nano/bench/profile.py)", "",
                  "| case | step time | " + " | ".join(CATEGORY_LABELS.values()) + " | kernels (no HLO name) | "
                  "status |", "|---|---|" + "---|" * len(CATEGORY_LABELS) + "---|---|"]
        for prof in result["profiles"]:
            b = prof["breakdown"]
            cells = ["n/a"] * (2 + len(CATEGORY_LABELS))
            if b:
                cells = ([f"{b['step_time_s'] * 1e3:.1f} ms"] + [f"{b['shares'][k]:.1%}" for k in CATEGORY_LABELS]
                         + [f"{b['kernels']:,} ({b['kernels_without_hlo']:,})"])
            lines.append(f"| {prof['case']} | " + " | ".join(cells) + f" | {prof['status']} |")
        lines += predicted.render(result["profiles"])
    lines += ["", "## Runs", "", "| # | run | cache | wall | tokens/s | setup | status |",
              "|---|---|---|---|---|---|---|"]
    for i, run in enumerate(result["runs"], 1):
        status = (f"failed: {run['error']}" if run.get("error") else f"skipped: {run['skipped']}"
                  if run.get("skipped") else "ok")
        lines.append(f"| {i} | {run['label']} | {'cold' if run['cold'] else 'warm'} | "
                     f"{fmt(run.get('wall_s'), 'duration')} | {fmt(run.get('tokens_per_s'), 'rate')} | "
                     f"{fmt(run.get('setup_time_s'), 'duration')} | {status} |")
    if result.get("files", {}).get("png"):
        lines += ["", f"![tokens/s per configuration]({Path(result['files']['png']).name})"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    """Tokens/s: JAX vs PyTorch per case, and each lever against the default."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    forms = result.get("forms") or list(FRAMEWORKS)
    width = 0.8 / len(forms)
    for k, fw in enumerate(forms):
        values = [_median(c["frameworks"][fw]["metrics"]["tokens_per_s"]) or 0.0 for c in result["cases"]]
        label = result["cases"][0]["frameworks"][fw].get("label", LABEL[fw])
        left.bar([i + (k - (len(forms) - 1) / 2) * width for i in range(len(values))], values, width, label=label)
    left.set_xticks(range(len(result["cases"])), [c["case"] for c in result["cases"]])
    left.set_ylabel("tokens/s (median)")
    left.set_title("JAX vs PyTorch")
    left.legend()
    rows = result["levers"]
    right.barh(range(len(rows)), [_median(r["metrics"]["tokens_per_s"]) or 0.0 for r in rows], color="tab:blue")
    right.set_yticks(range(len(rows)), [r["lever"] for r in rows])
    right.invert_yaxis()
    right.set_xlabel("JAX tokens/s (median)")
    right.set_title(f"levers, {result.get('lever_case', result['cases'][0]['case'])}")
    fig.suptitle(f"Benchmark on {result['device']}")
    fig.tight_layout()
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def write(result: dict, stem) -> dict:
    """`stem`.md, .json and .png (written atomically; `stem` may hold dots of its own)."""
    from jax_nano.core import report

    files = {kind: f"{stem}.{kind}" for kind in ("md", "json", "png")}
    result["files"] = files
    Path(files["png"]).parent.mkdir(parents=True, exist_ok=True)
    plot(result, files["png"])
    report.write_json_atomic(files["json"], result)
    report.write_text_atomic(files["md"], render_markdown(result))
    return files
