"""The head-to-head report (jax_nano/bench/compare.py): the runs' summaries aggregated per framework, with
ratios and Welch's t-test, as Markdown, JSON and a PNG of the loss-vs-Active-Training-Time curves."""

from __future__ import annotations

import re
from pathlib import Path

from configs.errors import UserError
from configs.tracks import FRAMEWORKS
from jax_nano.bench.load import describe as load_lines
from jax_nano.bench.stats import ratio, spread, welch_t_test
from jax_nano.core import report
from jax_nano.core.peak import measured_note

# A form is a framework run one way: the race is JAX against PyTorch as it runs by default (compiled wherever
# torch.compile works), with eager PyTorch as a labelled extra row. A run's summary names its form ("form"; a
# summary without one is its framework's default form).
FORMS = ("jax", "torch", "torch-eager")
LABEL = {"jax": "JAX", "torch": "PyTorch", "torch-eager": "PyTorch eager"}
FORM_TRACK = {"jax": {"framework": "jax"}, "torch": {"framework": "torch"},
              "torch-eager": {"framework": "torch", "torch_compile": "off"}}


def form_of(summary: dict) -> str:
    return summary.get("form") or summary["framework"]


def form_label(form: str, summaries: list[dict]) -> str:
    """"PyTorch (compiled)" where the runs compiled, else "PyTorch (eager)"; "JAX", "PyTorch eager" as they are."""
    if form != "torch":
        return LABEL[form]
    notes = {s.get("compile") or "" for s in summaries}
    if notes and all(n.startswith("torch.compile") for n in notes):
        return "PyTorch (compiled)"
    return "PyTorch (eager)" if notes and not any(n.startswith("torch.compile") for n in notes) else LABEL[form]


class CompareError(UserError):
    """A comparison that cannot run as asked; one line with the fix."""


def device_slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"



# key -> (label, how a value is written, whether higher is better); all come from per-run summaries.
METRICS = {
    "active_time_s": ("Active Training Time", "duration", False),
    "tokens_per_s": ("tokens/s", "rate", True),
    "mfu": ("MFU", "percent", True),
    "setup_cold_s": ("Setup & Compilation Time, cold (first run)", "duration", False),
    "setup_warm_s": ("Setup & Compilation Time, warm cache (later runs)", "duration", False),
    "peak_memory_bytes": ("peak device memory", "bytes", False),
    "train_loss": ("final train loss", "loss", False),
    "val_loss": ("final val loss", "loss", False),
    "steps": ("steps", "int", None),
    "steps_to_target": ("steps to target", "int", False),
    "tokens_per_s_per_device": ("tokens/s per device", "rate", True),
    "scaling_efficiency": ("scaling efficiency", "percent", True),
}


def fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "duration":
        return report.format_duration(value)
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "percent":
        return f"{value:.1%}"
    if kind == "bytes":
        return f"{value / 2**30:.2f} GiB" if value >= 2**28 else f"{value / 2**20:.1f} MiB"
    if kind == "loss":
        return f"{value:.4f}"
    return f"{value:,.0f}"


def fmt_stats(stats: dict | None, kind: str) -> str:
    if stats is None:
        return "n/a"
    text = fmt(stats["median"], kind)
    if stats["n"] > 1:
        text += f" [{fmt(stats['min'], kind)} – {fmt(stats['max'], kind)}]"
        if kind == "duration":
            text += f" ±{stats['stdev']:.3f} s"
        elif kind == "percent":
            text += f" ±{stats['stdev']:.2%}"
        elif kind == "bytes":
            text += f" ±{stats['stdev'] / 2**20:.1f} MiB"
        elif kind == "loss":
            text += f" ±{stats['stdev']:.4f}"
        else:
            text += f" ±{stats['stdev']:,.0f}"
    return text


def curve_of(jsonl_path) -> dict:
    """The per-step train losses of a run's results/<run>.jsonl: steps, losses, active seconds."""
    rows = [r for r in report.read_metrics(jsonl_path) if "loss" in r]
    return {"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows],
            "active_time_s": [r["active_time_s"] for r in rows]}


def max_loss_gap(a: dict, b: dict) -> dict | None:
    """Largest |loss_a - loss_b| over the steps both curves have (and the step where it is)."""
    by_step = dict(zip(b["step"], b["loss"]))
    gaps = [(abs(loss - by_step[s]), s) for s, loss in zip(a["step"], a["loss"]) if s in by_step]
    if not gaps:
        return None
    gap, step = max(gaps)
    return {"max_abs_diff": gap, "step": step, "steps_compared": len(gaps)}


def aggregate(summaries: list[dict], curves: list[dict] | None = None, *, baseline: dict | None = None,
              alpha: float = 0.05) -> dict:
    """The comparison's numbers from the per-run summaries (in the order they ran) and their loss curves.

    `baseline`: an earlier one-device comparison report (its JSON), for the scaling efficiency of a
    multi-device run: per-device tokens/s over that report's median tokens/s of the same framework.
    """
    curves = curves if curves is not None else [None] * len(summaries)
    forms = [f for f in FORMS if any(form_of(s) == f for s in summaries)]
    runs = {fw: [(s, c) for s, c in zip(summaries, curves) if form_of(s) == fw] for fw in forms}
    missing = [fw for fw in FRAMEWORKS if fw not in runs]
    if missing:
        raise CompareError(f"no {' or '.join(missing)} run to compare; a comparison needs both frameworks")
    n_devices = {fw: [int(s.get("n_devices") or 1) for s, _ in runs[fw]] for fw in forms}
    multi = any(n > 1 for ns in n_devices.values() for n in ns)
    frameworks = {}
    for fw in forms:
        ss = [s for s, _ in runs[fw]]
        loss_track = ss[0].get("reached_target") is not None
        metrics = {
            "active_time_s": spread(s["active_time_s"] for s in ss),
            "tokens_per_s": spread(s["tokens_per_s"] for s in ss),
            "mfu": spread(s.get("mfu") for s in ss),
            "setup_cold_s": spread([ss[0]["setup_time_s"]]),
            "setup_warm_s": spread(s["setup_time_s"] for s in ss[1:]),
            "peak_memory_bytes": spread(s.get("peak_memory_bytes") for s in ss),
            "train_loss": spread(s["train_loss"] for s in ss),
            "val_loss": spread(s["val_loss"] for s in ss),
            "steps": spread(s["steps"] for s in ss),
        }
        if loss_track:
            metrics["steps_to_target"] = spread(s["steps"] if s.get("reached_target") else None for s in ss)
        if multi:
            per_device = [s["tokens_per_s"] / n for s, n in zip(ss, n_devices[fw])]
            metrics["tokens_per_s_per_device"] = spread(per_device)
            base = None
            if baseline is not None:
                base = ((baseline.get("frameworks", {}).get(fw, {}).get("metrics", {}) or {})
                        .get("tokens_per_s") or {}).get("median")
            metrics["scaling_efficiency"] = spread([p / base for p in per_device]) if base else None
        frameworks[fw] = {
            "label": form_label(fw, ss), "compile": ss[0].get("compile"), "n_runs": len(ss),
            "n_devices": n_devices[fw], "versions": ss[0].get("versions"),
            "device": ss[0].get("device"), "reached_target": [s.get("reached_target") for s in ss] if loss_track
            else None, "compiles_during_run": [s.get("compiles_during_run") for s in ss],
            "metrics": metrics,
            "runs": [{k: s.get(k) for k in ("run", "active_time_s", "tokens_per_s", "mfu", "mfu_basis",
                                            "setup_time_s", "peak_memory_bytes", "train_loss", "val_loss", "steps",
                                            "tokens", "reached_target", "n_devices")} for s in ss],
        }
    ratios, ratios_eager = {}, {}
    for key in METRICS:
        if any(key in frameworks[fw]["metrics"] for fw in forms):
            j, t = (frameworks[fw]["metrics"].get(key) for fw in FRAMEWORKS)
            ratios[key] = ratio(j and j["median"], t and t["median"])
            if "torch-eager" in frameworks:
                e = frameworks["torch-eager"]["metrics"].get(key)
                ratios_eager[key] = ratio(j and j["median"], e and e["median"])
    welch = None
    if min(len(runs["jax"]), len(runs["torch"])) >= 3:
        test = welch_t_test(frameworks["jax"]["metrics"]["active_time_s"]["values"],
                            frameworks["torch"]["metrics"]["active_time_s"]["values"])
        if test is not None:
            welch = {**test, "alpha": alpha, "significant": test["p"] < alpha,
                     "statement": welch_statement(test, ratios["active_time_s"], alpha)}
    # Fairness check: per-step train losses of the k-th JAX run against the k-th PyTorch run.
    gaps = []
    for (_, cj), (_, ct) in zip(runs["jax"], runs["torch"]):
        if cj is not None and ct is not None:
            gap = max_loss_gap(cj, ct)
            if gap is not None:
                gaps.append(gap)
    agreement = max(gaps, key=lambda g: g["max_abs_diff"]) if gaps else None
    first = summaries[0]
    basis = {s.get("mfu_basis") for s in summaries if s.get("mfu") is not None}
    return {
        "track": first.get("track"), "device": first.get("device"), "commit": first.get("commit"),
        "date": first.get("date"), "order": [form_of(s) for s in summaries], "forms": forms,
        "versions": {fw: frameworks[fw]["versions"] for fw in FRAMEWORKS},
        "repeats": min(len(runs["jax"]), len(runs["torch"])),
        "frameworks": frameworks, "ratios": ratios, "ratios_eager": ratios_eager or None,
        "welch_active_time": welch, "loss_agreement": agreement,
        "mfu_basis": basis.pop() if len(basis) == 1 else None,
        "peak_flops": next((s.get("peak_flops") for s in summaries if s.get("mfu") is not None), None),
        "peak": next((s.get("peak") for s in summaries if s.get("mfu") is not None), None),
    }


def welch_statement(test: dict, time_ratio: float | None, alpha: float) -> str:
    if time_ratio is None:
        direction = "the two frameworks differ"
    elif time_ratio < 1:
        direction = f"JAX is faster (median Active Training Time {1 - time_ratio:.1%} lower than PyTorch's)"
    elif time_ratio > 1:
        direction = f"JAX is slower (median Active Training Time {time_ratio - 1:.1%} higher than PyTorch's)"
    else:
        direction = "the medians are equal"
    verdict = "significant" if test["p"] < alpha else "NOT significant"
    return f"{direction}; Welch's t-test p = {test['p']:.3g}: the difference is {verdict} at {alpha:g}."


def split_lines(split: dict | None, labels: dict) -> list[str]:
    """The table of one step split into forward+backward and optimizer (jax_nano/bench/worker.py, "split")."""
    if not split:
        return []
    lines = ["", "Where a step goes: forward+backward and the optimizer step timed apart (median of a few steps, "
             "each part synchronised; one process per form after the timed runs). GFLOP/s: the model's training "
             "FLOPs (the MFU formula's) over the forward+backward, Muon's orthogonalization FLOPs as upstream "
             "multiplies them out over the whole optimizer step, the same counts for every form.", "",
             "| form | whole step | forward+backward | optimizer | optimizer share | forward+backward GFLOP/s | "
             "optimizer GFLOP/s (Muon) |", "|---|---|---|---|---|---|---|"]
    for form, part in split.items():
        if "error" in part or "skipped" in part:
            why = f"failed: {part['error']}" if "error" in part else f"skipped: {part['skipped']}"
            lines.append(f"| {labels.get(form, form)} | {why} | | | | | |")
            continue
        total = part["fwd_bwd_s"] + part["optimizer_s"]
        flops = part.get("flops") or {}
        rates = [f"{flops[key] / part[half] / 1e9:,.1f}" if flops.get(key) and part[half] > 0 else "n/a"
                 for key, half in (("fwd_bwd", "fwd_bwd_s"), ("ortho", "optimizer_s"))]
        lines.append(f"| {labels.get(form, form)} | {part['step_s'] * 1e3:,.0f} ms | {part['fwd_bwd_s'] * 1e3:,.0f} ms"
                     f" | {part['optimizer_s'] * 1e3:,.0f} ms | {part['optimizer_s'] / total:.0%} | "
                     + " | ".join(rates) + " |")
    return lines


def mfu_note(result: dict) -> str | None:
    basis, peak = result.get("mfu_basis"), result.get("peak_flops")
    if basis == "measured":
        return measured_note(peak, result.get("peak"))
    if basis == "published":
        return "MFU is against the device's published dense bf16 peak (SPEC section 5)"
    return None


def render_markdown(result: dict) -> str:
    fws = result["frameworks"]
    forms = result.get("forms") or list(FRAMEWORKS)
    labels = {f: fws[f].get("label", LABEL[f]) for f in forms}
    track = result["track_config"] if "track_config" in result else {}
    lines = [f"# JAX vs PyTorch: track `{result['track']}` on {result['device']}", ""]
    lines.append(f"- device: **{result['device']}**; commit `{result['commit']}`; date {result.get('date')}")
    versions = "; ".join(f"{k} {v}" for fw in FRAMEWORKS for k, v in (result["versions"].get(fw) or {}).items())
    lines.append(f"- versions: {versions}")
    devices = {fw: fws[fw].get("device") for fw in FRAMEWORKS}
    if devices["jax"] != devices["torch"]:
        lines.append(f"- device as each framework names it: JAX {devices['jax']}; PyTorch {devices['torch']}")
    if track:
        stop = (f"train loss <= {track['target_loss']}" if track.get("target_loss") is not None
                else f"{track.get('target_tokens'):,} tokens")
        lines.append(f"- model `{track['model']}`, batch {track['batch_size']} x {track['seq_len']}, precision "
                     f"`{track['precision']}`, data `{track['data']}`, stop at {stop}"
                     + (f" (max_steps {track['max_steps']})" if track.get("max_steps") else ""))
    if result.get("throughput_only"):
        lines.append("- **throughput-only comparison**: a fixed step budget (`--steps`/`--tokens`) instead of the "
                     "track's stop rule (a loss track keeps its target check, with a target it cannot reach); "
                     "losses are not the track's result")
    order = ", ".join(labels[f] for f in result["order"])
    lines.append(f"- {result['repeats']} runs per form, interleaved: {order}; every run a fresh process, all "
                 "from the same initial weights")
    for form in forms:
        if fws[form].get("compile"):
            lines.append(f"- {labels[form]}: {fws[form]['compile']}")
    lines += [f"- {line}" for line in load_lines(result.get("load"))]
    if mfu_note(result):
        lines.append(f"- {mfu_note(result)}")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    eager = "torch-eager" in forms
    lines += ["", f"Median [min – max] ±stdev over the runs; ratio = JAX / {labels['torch']} of the medians "
              "(tokens/s ratio > 1 and time ratio < 1 favour JAX)" + (", and JAX / PyTorch eager" if eager else "")
              + ".", "",
              "| metric | " + " | ".join(labels[f] for f in forms) + f" | JAX / {labels['torch']} |"
              + (" JAX / PyTorch eager |" if eager else ""),
              "|---|" + "---|" * (len(forms) + 1 + eager)]
    for key, (label, kind, _) in METRICS.items():
        if not any(key in fws[f]["metrics"] for f in forms):
            continue
        r = result["ratios"].get(key)
        cells = [fmt_stats(fws[f]["metrics"].get(key), kind) for f in forms] + ["n/a" if r is None else f"{r:.3f}"]
        if eager:
            e = (result.get("ratios_eager") or {}).get(key)
            cells.append("n/a" if e is None else f"{e:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += split_lines(result.get("split"), labels)
    lines.append("")
    welch = result.get("welch_active_time")
    if welch is not None:
        df = "n/a" if welch["df"] is None else f"{welch['df']:.1f}"
        lines.append(f"**Significance (Active Training Time, JAX vs {labels['torch']}):** {welch['statement']} "
                     f"(t = {welch['t']:.3f}, Welch df = {df})")
    else:
        lines.append("**Significance:** not tested: Welch's t-test needs `--repeats` >= 3.")
    gap = result.get("loss_agreement")
    if gap is not None:
        lines.append(f"\n**Loss agreement:** the largest |JAX - PyTorch| per-step train loss over "
                     f"{gap['steps_compared']} steps of paired runs is {gap['max_abs_diff']:.2e} (step {gap['step']}); "
                     "same weights and batches, so only numerics separate them (float32: ~1e-5; bf16: larger).")
    lines += ["", "## Runs", "", "| # | form | Active Training Time | tokens/s | setup | train loss | "
              "val loss | steps |", "|---|---|---|---|---|---|---|---|"]
    counters = {fw: 0 for fw in forms}
    for i, fw in enumerate(result["order"]):
        run = fws[fw]["runs"][counters[fw]]
        counters[fw] += 1
        lines.append(f"| {i + 1} | {labels[fw]} | {fmt(run['active_time_s'], 'duration')} | "
                     f"{fmt(run['tokens_per_s'], 'rate')} | {fmt(run['setup_time_s'], 'duration')} | "
                     f"{fmt(run['train_loss'], 'loss')} | {fmt(run['val_loss'], 'loss')} | {run['steps']:,} |")
    if result.get("files", {}).get("png"):
        lines += ["", f"![loss vs Active Training Time]({Path(result['files']['png']).name})"]
    return "\n".join(lines) + "\n"


def write_report(result: dict, curves: list[dict], stem) -> dict:
    """`stem`.md, .json and .png; the loss curve of each framework's median run (by Active Training Time)."""
    # Not Path.with_suffix: a track name such as "4.5loss" has a dot of its own.
    files = {kind: f"{stem}.{kind}" for kind in ("md", "json", "png")}
    result["files"] = files
    series = {}
    for fw in result.get("forms") or FRAMEWORKS:
        idx = [i for i, f in enumerate(result["order"]) if f == fw]
        times = [result["frameworks"][fw]["runs"][k]["active_time_s"] for k in range(len(idx))]
        median_k = sorted(range(len(times)), key=lambda k: times[k])[(len(times) - 1) // 2]
        curve = curves[idx[median_k]]
        label = result["frameworks"][fw].get("label", LABEL[fw])
        series[f"{label} (median run {median_k + 1}/{len(times)})"] = (curve["active_time_s"], curve["loss"])
    target = (result.get("track_config") or {}).get("target_loss")
    report.plot_curves(series, files["png"], xlabel="Active Training Time (s)",
                       title=f"{result['track']}: JAX vs PyTorch on {result['device']}", hline=target)
    report.write_json_atomic(files["json"], result)
    report.write_text_atomic(files["md"], render_markdown(result))
    return files
