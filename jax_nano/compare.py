"""JAX vs PyTorch head to head (SPEC section 5: one run, one machine, interleaved, several times).

`compare(track, repeats=N)` trains the same track in both frameworks, alternating JAX, PyTorch, JAX, ... from
the same initial weights (the JAX initialisation, exported once as a PyTorch state_dict and given to every run
as `init_from`), and writes one report: Markdown, JSON and a PNG of the loss-vs-Active-Training-Time curves.

Every run is its own process with the comparison's own fresh compilation caches (jax_nano/worker.py), so peak
device memory is per run and each framework's first run is cold, its later runs warm.

The statistics (median, spread, Welch's t-test) are in jax_nano/stats.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

from configs.errors import UserError
from configs.tracks import FRAMEWORKS, Track
from jax_nano.stats import ratio, spread, welch_t_test
from jax_nano.worker import launch, worker_env

LABEL = {"jax": "JAX", "torch": "PyTorch"}


class CompareError(UserError):
    """A comparison that cannot run as asked; one line with the fix."""


def device_slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"


# -- the report ------------------------------------------------------------------------------------------------

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
        from jax_nano.report import format_duration

        return format_duration(value)
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
    from jax_nano.report import read_metrics

    rows = [r for r in read_metrics(jsonl_path) if "loss" in r]
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
    runs = {fw: [(s, c) for s, c in zip(summaries, curves) if s["framework"] == fw] for fw in FRAMEWORKS}
    missing = [fw for fw in FRAMEWORKS if not runs[fw]]
    if missing:
        raise CompareError(f"no {' or '.join(missing)} run to compare; a comparison needs both frameworks")
    n_devices = {fw: [int(s.get("n_devices") or 1) for s, _ in runs[fw]] for fw in FRAMEWORKS}
    multi = any(n > 1 for ns in n_devices.values() for n in ns)
    frameworks = {}
    for fw in FRAMEWORKS:
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
            "label": LABEL[fw], "n_runs": len(ss), "n_devices": n_devices[fw], "versions": ss[0].get("versions"),
            "device": ss[0].get("device"), "reached_target": [s.get("reached_target") for s in ss] if loss_track
            else None, "compiles_during_run": [s.get("compiles_during_run") for s in ss],
            "metrics": metrics,
            "runs": [{k: s.get(k) for k in ("run", "active_time_s", "tokens_per_s", "mfu", "setup_time_s",
                                            "peak_memory_bytes", "train_loss", "val_loss", "steps", "tokens",
                                            "reached_target", "n_devices")} for s in ss],
        }
    ratios = {}
    for key in METRICS:
        if any(key in frameworks[fw]["metrics"] for fw in FRAMEWORKS):
            j, t = (frameworks[fw]["metrics"].get(key) for fw in FRAMEWORKS)
            ratios[key] = ratio(j and j["median"], t and t["median"])
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
    return {
        "track": first.get("track"), "device": first.get("device"), "commit": first.get("commit"),
        "date": first.get("date"), "order": [s["framework"] for s in summaries],
        "versions": {fw: frameworks[fw]["versions"] for fw in FRAMEWORKS},
        "repeats": min(len(runs["jax"]), len(runs["torch"])),
        "frameworks": frameworks, "ratios": ratios, "welch_active_time": welch,
        "loss_agreement": agreement,
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


def render_markdown(result: dict) -> str:
    fws = result["frameworks"]
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
    order = ", ".join(LABEL[f] for f in result["order"])
    lines.append(f"- {result['repeats']} runs per framework, interleaved: {order}; every run a fresh process, both "
                 "frameworks from the same initial weights")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", "Median [min – max] ±stdev over the runs; ratio = JAX / PyTorch of the medians "
              "(tokens/s ratio > 1 and time ratio < 1 favour JAX).", "",
              "| metric | JAX | PyTorch | JAX / PyTorch |", "|---|---|---|---|"]
    for key, (label, kind, _) in METRICS.items():
        j, t = fws["jax"]["metrics"].get(key), fws["torch"]["metrics"].get(key)
        if key not in fws["jax"]["metrics"] and key not in fws["torch"]["metrics"]:
            continue
        r = result["ratios"].get(key)
        lines.append(f"| {label} | {fmt_stats(j, kind)} | {fmt_stats(t, kind)} | "
                     f"{'n/a' if r is None else f'{r:.3f}'} |")
    lines.append("")
    welch = result.get("welch_active_time")
    if welch is not None:
        df = "n/a" if welch["df"] is None else f"{welch['df']:.1f}"
        lines.append(f"**Significance (Active Training Time):** {welch['statement']} "
                     f"(t = {welch['t']:.3f}, Welch df = {df})")
    else:
        lines.append("**Significance:** not tested: Welch's t-test needs `--repeats` >= 3.")
    gap = result.get("loss_agreement")
    if gap is not None:
        lines.append(f"\n**Loss agreement:** the largest |JAX - PyTorch| per-step train loss over "
                     f"{gap['steps_compared']} steps of paired runs is {gap['max_abs_diff']:.2e} (step {gap['step']}); "
                     "same weights and batches, so only numerics separate them (float32: ~1e-5; bf16: larger).")
    lines += ["", "## Runs", "", "| # | framework | Active Training Time | tokens/s | setup | train loss | "
              "val loss | steps |", "|---|---|---|---|---|---|---|---|"]
    counters = {fw: 0 for fw in FRAMEWORKS}
    for i, fw in enumerate(result["order"]):
        run = fws[fw]["runs"][counters[fw]]
        counters[fw] += 1
        lines.append(f"| {i + 1} | {LABEL[fw]} | {fmt(run['active_time_s'], 'duration')} | "
                     f"{fmt(run['tokens_per_s'], 'rate')} | {fmt(run['setup_time_s'], 'duration')} | "
                     f"{fmt(run['train_loss'], 'loss')} | {fmt(run['val_loss'], 'loss')} | {run['steps']:,} |")
    if result.get("files", {}).get("png"):
        lines += ["", f"![loss vs Active Training Time]({Path(result['files']['png']).name})"]
    return "\n".join(lines) + "\n"


def write_report(result: dict, curves: list[dict], stem) -> dict:
    """`stem`.md, .json and .png; the loss curve of each framework's median run (by Active Training Time)."""
    from jax_nano import report

    # Not Path.with_suffix: a track name such as "4.5loss" has a dot of its own.
    files = {kind: f"{stem}.{kind}" for kind in ("md", "json", "png")}
    result["files"] = files
    series = {}
    for fw in FRAMEWORKS:
        idx = [i for i, f in enumerate(result["order"]) if f == fw]
        times = [result["frameworks"][fw]["runs"][k]["active_time_s"] for k in range(len(idx))]
        median_k = sorted(range(len(times)), key=lambda k: times[k])[(len(times) - 1) // 2]
        curve = curves[idx[median_k]]
        series[f"{LABEL[fw]} (median run {median_k + 1}/{len(times)})"] = (curve["active_time_s"], curve["loss"])
    target = (result.get("track_config") or {}).get("target_loss")
    report.plot_curves(series, files["png"], xlabel="Active Training Time (s)",
                       title=f"{result['track']}: JAX vs PyTorch on {result['device']}", hline=target)
    report.write_json_atomic(files["json"], result)
    report.write_text_atomic(files["md"], render_markdown(result))
    return files


# -- running ---------------------------------------------------------------------------------------------------


def stop_rule(track: Track, *, steps: int | None = None, tokens: int | None = None) -> Track:
    """Throughput mode: the track stops after `steps` steps (or the steps that hold `tokens` tokens).

    The program timed stays the track's own: a loss track keeps its per-step target check, with a target no
    run can reach (a cross-entropy is never below -inf) and the budget as its step cap; a token track gets
    the budget as its token target."""
    if steps is not None and tokens is not None:
        raise CompareError("--steps and --tokens conflict: pass only one budget")
    if steps is not None and steps < 1:
        raise CompareError(f"--steps {steps}: must be >= 1")
    if tokens is not None and tokens < 1:
        raise CompareError(f"--tokens {tokens}: must be >= 1")
    if steps is None and tokens is None:
        return track
    if track.is_loss_track:
        steps = steps if steps is not None else -(-tokens // track.tokens_per_step)
        return track.replace(target_loss=-math.inf, max_tokens=None, max_steps=steps)
    tokens = tokens if tokens is not None else steps * track.tokens_per_step
    return track.replace(target_tokens=tokens, max_tokens=None)


def _check_data(track: Track) -> None:
    """The data errors of a speedrun, before anything is started."""
    from configs.model import get_model_config
    from jax_nano import data

    cfg = get_model_config(track.model)
    store = data.open_store(track.data, vocab_size=cfg.vocab_size, seq_len=track.seq_len, verify=False)
    needed = track.total_steps * track.tokens_per_step if not track.is_loss_track else track.tokens_per_step
    data.require_tokens(store, needed, track.name)


def compare(track: Track, *, repeats: int = 3, results_dir="results", output=None, show_bar: bool = True,
            profile_dir=None, baseline=None, throughput_only: bool = False, keep_work: bool = False,
            mesh: str | None = None, log=print) -> dict:
    """Run the head to head and write the report; returns the report dict (with "files").

    `mesh`: the JAX runs' device mesh ("data=N,fsdp=M", speedrun's `mesh`); PyTorch always uses one device, so
    a multi-device report adds tokens/s per device (and scaling efficiency against `baseline`)."""
    if repeats < 1:
        raise CompareError(f"--repeats {repeats}: must be >= 1 (3 or more for a significance test)")
    track = track.replace(framework="jax")
    _check_data(track)
    baseline_report = None
    if baseline is not None:
        try:
            baseline_report = json.loads(Path(baseline).read_text())
        except (OSError, ValueError) as e:
            raise CompareError(f"--baseline {baseline}: not a readable comparison JSON ({e})") from None
    results_dir = Path(results_dir)
    run_results = results_dir / f"compare-{track.name}-runs"
    work = Path(tempfile.mkdtemp(prefix="jax-nano-compare-"))
    try:
        log(f"[compare] {track.name}: the JAX initial weights (seed {track.seed}) are exported by the first run "
            "and every run of both frameworks starts from them")
        summaries, curves = [], []
        total = 2 * repeats
        for k in range(repeats):
            for fw in FRAMEWORKS:
                i = len(summaries) + 1
                cache = "cold cache" if k == 0 else "warm cache"
                log(f"[compare] run {i}/{total}: {LABEL[fw]} (repeat {k + 1}/{repeats}, {cache})")
                run_name = f"compare-{track.name}-{fw}-{k + 1}"
                summary = launch({"mode": "run", "track": track.replace(framework=fw), "run_name": run_name,
                                   "results_dir": str(run_results), "runs_dir": str(work / "runs"),
                                   "init_from": str(work / "init.pt"), "show_bar": show_bar,
                                   "export_init": not summaries, "mesh": mesh if fw == "jax" else None},
                                  work, f"run {i}/{total} ({LABEL[fw]})", env=worker_env(work, fw))
                summaries.append(summary)
                curves.append(curve_of(run_results / f"{run_name}.jsonl"))
                log(f"[compare]   {LABEL[fw]}: {summary['active_time']} active, {summary['tokens_per_s']:,.0f} "
                    f"tokens/s, setup {summary['setup_time_s']:.2f} s, train loss {summary['train_loss']:.4f}")
        result = aggregate(summaries, curves, baseline=baseline_report)
        result["track_config"] = {**dataclasses.asdict(track), "framework": "both"}
        result["throughput_only"] = throughput_only
        result["run_results_dir"] = str(run_results)
        result["notes"] = notes_for(summaries)
        stem = Path(output) if output else results_dir / f"compare-{device_slug(result['device'])}-{track.name}"
        write_report(result, curves, stem)
        if profile_dir is not None:
            log(f"[compare] profiling 5 JAX steps into {profile_dir} (not timed, not in the report)")
            launch({"mode": "trace", "track": track.replace(max_steps=5, eval_batches=1, eval_every=0),
                     "profile_dir": str(profile_dir), "runs_dir": str(work / "runs"),
                     "results_dir": str(work / "profile-results"), "init_from": str(work / "init.pt"),
                     "show_bar": show_bar, "mesh": mesh}, work, "the profiled JAX run")
            result["profile_dir"] = str(profile_dir)
            write_report(result, curves, stem)
        return result
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)


def notes_for(summaries: list[dict]) -> list[str]:
    notes = []
    torch_versions = next((s.get("versions") or {} for s in summaries if s["framework"] == "torch"), {})
    on_cuda = "+cpu" not in str(torch_versions.get("torch", "")) and any(
        s.get("peak_memory_bytes") for s in summaries if s["framework"] == "torch")
    notes.append("Setup & Compilation Time: JAX's persistent compilation cache and TorchInductor's/Triton's caches "
                 "start empty, so each framework's first run is cold and the later ones warm.")
    if not on_cuda:
        notes.append("PyTorch ran without a CUDA device: torch.compile is used only on CUDA, so its setup includes "
                     "no compilation and its cold and warm figures both measure eager setup.")
    if any(s.get("mfu") is None for s in summaries):
        notes.append("MFU is n/a where the device has no peak bf16 figure (CPUs; SPEC section 5).")
    if any(s.get("peak_memory_bytes") is None for s in summaries):
        notes.append("Peak device memory is n/a where the framework does not report it (PyTorch on CPU).")
    if any(s.get("compiles_during_run") for s in summaries):
        notes.append("WARNING: a run compiled during its timed loop (compiles_during_run > 0).")
    return notes
