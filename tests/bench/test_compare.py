"""The JAX vs PyTorch comparison: its statistics, and a real head to head of the tiny model on CPU."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from configs.tracks import get_track
from jax_nano.bench import compare, compare_report, stats
from jax_nano.bench import load as load_module

ROOT = Path(__file__).resolve().parents[2]


# -- statistics ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t, df, p", [
    (2.0, 10, 0.073388034),       # the textbook case
    (1.0, 1, 0.5),                # Cauchy: P(|T| >= 1) = 1/2 exactly
    (2.228138852, 10, 0.05),      # the 97.5% quantile of t(10)
    (12.70620474, 1, 0.05),       # the 97.5% quantile of t(1)
    (1.959963985, 1e7, 0.05),     # large df: the normal distribution
    (0.0, 5, 1.0),
    (-2.0, 10, 0.073388034),      # two-sided: symmetric
    (3.5, 4.5, 0.020541690),      # non-integer df (Welch); checked by Simpson integration of the pdf
])
def test_student_t_two_sided_p_matches_known_values(t, df, p):
    assert stats.student_t_sf2(t, df) == pytest.approx(p, rel=1e-4, abs=1e-9)


def test_betainc_matches_closed_forms():
    # I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1-x)^b; I_0.5(a, a) = 0.5.
    for x in (0.01, 0.3, 0.5, 0.9, 0.999):
        assert stats.betainc(1, 1, x) == pytest.approx(x, rel=1e-12)
        assert stats.betainc(3.5, 1, x) == pytest.approx(x ** 3.5, rel=1e-10)
        assert stats.betainc(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-10)
    assert stats.betainc(7.3, 7.3, 0.5) == pytest.approx(0.5, rel=1e-12)
    assert stats.betainc(2, 3, 0.0) == 0.0 and stats.betainc(2, 3, 1.0) == 1.0


def test_welch_t_test_matches_a_worked_example():
    # By hand: means 18.95 and 20.4; s^2/n = 0.15/4 = 0.0375 and 0.475/5 = 0.095, so
    # t = -1.45 / sqrt(0.1325) = -3.983456, df = 0.1325^2 / (0.0375^2/3 + 0.095^2/4) = 6.442661,
    # and p = 0.0062760 (Simpson integration of the t pdf).
    a = [19.1, 18.5, 19.4, 18.8]
    b = [20.2, 19.6, 21.3, 20.0, 20.9]
    res = stats.welch_t_test(a, b)
    assert res["t"] == pytest.approx(-3.983456, rel=1e-6)
    assert res["df"] == pytest.approx(6.442661, rel=1e-6)
    assert res["p"] == pytest.approx(0.0062760, rel=1e-4)
    assert stats.welch_t_test([1.0], [2.0, 3.0]) is None
    assert stats.welch_t_test([1.0, 1.0], [1.0, 1.0])["p"] == 1.0
    assert stats.welch_t_test([1.0, 1.0], [2.0, 2.0])["p"] == 0.0


def summary(framework, k, active, setup, *, tokens=10_240, loss=3.0, reached=None):
    return {"run": f"r-{framework}-{k}", "framework": framework, "track": "t", "device": "CPU", "commit": "abc",
            "date": "2025-01-01", "versions": {framework: "1"}, "active_time_s": active, "setup_time_s": setup,
            "tokens_per_s": tokens / active, "mfu": None, "peak_memory_bytes": None, "train_loss": loss,
            "val_loss": loss + 0.1, "steps": 20, "tokens": tokens, "reached_target": reached,
            "compiles_during_run": 0}


def test_three_repeats_give_a_welch_p_value_and_a_verdict(tmp_path):
    jax_times, torch_times = [10.0, 10.2, 9.9], [12.0, 12.3, 11.8]
    runs = []
    for k in range(3):
        runs += [summary("jax", k, jax_times[k], 5.0 if k == 0 else 1.0, reached=True),
                 summary("torch", k, torch_times[k], 2.0, reached=k != 1)]
    curve = {"step": [0, 1], "loss": [5.0, 4.0], "active_time_s": [0.1, 0.2]}
    result = compare_report.aggregate(runs, [curve] * 6)
    welch = result["welch_active_time"]
    expected = stats.welch_t_test(jax_times, torch_times)
    assert welch["p"] == pytest.approx(expected["p"]) and welch["p"] < 0.05 and welch["significant"]
    assert "JAX is faster" in welch["statement"] and "significant at 0.05" in welch["statement"]
    jax_m = result["frameworks"]["jax"]["metrics"]
    assert jax_m["setup_cold_s"]["median"] == 5.0 and jax_m["setup_warm_s"]["median"] == 1.0
    assert jax_m["active_time_s"]["min"] == 9.9 and jax_m["active_time_s"]["max"] == 10.2
    assert jax_m["active_time_s"]["stdev"] == pytest.approx(0.152752523)
    assert result["ratios"]["active_time_s"] == pytest.approx(10.0 / 12.0)
    assert result["frameworks"]["torch"]["metrics"]["steps_to_target"]["n"] == 2  # one run missed the target
    assert result["ratios"]["mfu"] is None
    assert result["loss_agreement"]["max_abs_diff"] == 0.0
    # Two repeats: no test, and the report says why.
    two = compare_report.aggregate(runs[:4])
    assert two["welch_active_time"] is None
    two["track_config"] = {}
    assert "needs `--repeats` >= 3" in compare_report.render_markdown(two)
    # Several devices: per-device throughput, and scaling efficiency against a one-device baseline.
    multi = [{**s, "n_devices": 2} if s["framework"] == "jax" else s for s in runs]
    baseline = {"frameworks": {"jax": {"metrics": {"tokens_per_s": {"median": 1024.0}}},
                               "torch": {"metrics": {"tokens_per_s": {"median": 853.333}}}}}
    res = compare_report.aggregate(multi, baseline=baseline)
    per_device = res["frameworks"]["jax"]["metrics"]["tokens_per_s_per_device"]["median"]
    assert per_device == pytest.approx(10_240 / 10.0 / 2)
    assert res["frameworks"]["jax"]["metrics"]["scaling_efficiency"]["median"] == pytest.approx(per_device / 1024)


def test_throughput_mode_times_the_tracks_own_program(toy_track):
    # A loss track stays a loss track: the target check stays on, with a target no loss reaches, for the steps asked.
    real = get_track("4.5loss")
    quick = compare.stop_rule(real, steps=7)
    assert quick.is_loss_track and quick.target_loss == -math.inf and quick.total_steps == 7
    assert quick.target_tokens is None and quick.max_tokens is None
    assert (quick.model, quick.batch_size, quick.seq_len, quick.precision) == (
        real.model, real.batch_size, real.seq_len, real.precision)
    by_tokens = compare.stop_rule(real, tokens=3 * real.tokens_per_step - 1)
    assert by_tokens.is_loss_track and by_tokens.total_steps == 3
    # A token track gets the budget as its token target.
    tokens = toy_track()
    assert compare.stop_rule(tokens, steps=7).total_steps == 7 and not compare.stop_rule(tokens, steps=7).is_loss_track
    assert compare.stop_rule(tokens, tokens=8 * 64 * 3).total_steps == 3
    assert compare.stop_rule(real) is real
    with pytest.raises(compare.CompareError, match="conflict"):
        compare.stop_rule(real, steps=1, tokens=1)
    with pytest.raises(compare.CompareError, match="must be >= 1"):
        compare.stop_rule(real, tokens=0)


# -- the real thing, on CPU ------------------------------------------------------------------------------------------


@pytest.mark.long
def test_head_to_head_runs_both_frameworks_from_the_same_weights(toy_track, tmp_path):
    track = toy_track(target_tokens=8 * 64 * 10, eval_batches=1)
    lines = []
    result = compare.compare(track, repeats=2, results_dir=tmp_path / "results", show_bar=False, log=lines.append)
    assert [line.split(":")[0] for line in lines if "run " in line and "/4" in line] == [
        "[compare] run 1/4", "[compare] run 2/4", "[compare] run 3/4", "[compare] run 4/4"]
    files = result["files"]
    assert Path(files["md"]).name == f"compare-{compare_report.device_slug(result['device'])}-{track.name}.md"
    for kind in ("md", "json", "png"):
        assert Path(files[kind]).stat().st_size > 0, kind
    report = json.loads(Path(files["json"]).read_text())
    assert report["order"] == ["jax", "torch", "jax", "torch"] and report["repeats"] == 2
    assert report["device"] and report["commit"] and set(report["versions"]) == {"jax", "torch"}
    assert "jax" in report["versions"]["jax"] and "torch" in report["versions"]["torch"]
    for fw in ("jax", "torch"):
        m = report["frameworks"][fw]["metrics"]
        for key in ("active_time_s", "tokens_per_s", "setup_cold_s", "setup_warm_s", "train_loss", "val_loss",
                    "steps"):
            assert m[key] is not None and all(k in m[key] for k in ("median", "min", "max", "stdev")), (fw, key)
        assert "mfu" in m and "peak_memory_bytes" in m
        assert m["steps"]["min"] == 10 and m["active_time_s"]["min"] > 0
        assert all(math.isfinite(r["train_loss"]) for r in report["frameworks"][fw]["runs"])
        assert report["frameworks"][fw]["compiles_during_run"] == [0, 0] or fw == "torch"
    for key, r in report["ratios"].items():
        j, t = (report["frameworks"][fw]["metrics"][key] for fw in ("jax", "torch"))
        if r is not None:
            assert r == pytest.approx(j["median"] / t["median"], rel=1e-12), key
    assert report["ratios"]["tokens_per_s"] is not None and report["ratios"]["active_time_s"] is not None
    # Fair: same weights, same batches, float32 -> the same losses at every step (per-run jsonl files too).
    assert report["loss_agreement"]["steps_compared"] == 10
    assert report["loss_agreement"]["max_abs_diff"] <= 1e-4, report["loss_agreement"]
    run_dir = Path(report["run_results_dir"])
    curves = {fw: compare_report.curve_of(run_dir / f"compare-{track.name}-{fw}-1.jsonl") for fw in ("jax", "torch")}
    assert len(curves["jax"]["loss"]) == len(curves["torch"]["loss"]) == 10
    assert max(abs(a - b) for a, b in zip(curves["jax"]["loss"], curves["torch"]["loss"])) <= 1e-4
    md = Path(files["md"]).read_text()
    torch_label = report["frameworks"]["torch"].get("label", compare_report.LABEL["torch"])
    ratio_column = f"| JAX / {torch_label} |"
    assert "| Active Training Time |" in md and ratio_column in md and "needs `--repeats` >= 3" in md
    assert Path(files["png"]).name in md
    # A dotted track name keeps its whole name in the report's file names.
    dotted = compare_report.write_report(dict(report, track="4.5loss"), [curves["jax"], curves["torch"]] * 2,
                                  tmp_path / "compare-cpu-4.5loss")
    assert all(Path(f).is_file() and Path(f).name.startswith("compare-cpu-4.5loss.") for f in dotted.values())


def cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--no-bar", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_input_is_a_one_line_error(toy_store, tmp_path):
    cases = {
        ("--repeats", "0"): "--repeats 0: must be >= 1",
        ("--track", "nope"): "unknown track 'nope'",
        ("--steps", "5", "--tokens", "100"): "--steps and --tokens conflict",
        ("--steps", "5", "--target-loss", "3"): "conflict",
        ("--steps", "0", "--data", toy_store, "--model", "tiny", "--seq-len", "64"): "--steps 0: must be >= 1",
        ("--data", str(tmp_path / "missing")): "does not exist",
    }
    for extra, message in cases.items():
        out = cli(*extra, cwd=tmp_path)
        assert out.returncode == 2, (extra, out.stderr[-500:])
        assert message in out.stderr and "Traceback" not in out.stderr, (extra, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_race_reports_compiled_and_eager_pytorch_the_split_and_the_load(tmp_path):
    runs = []
    for k in range(2):
        runs += [summary("jax", k, 10.0 + k, 5.0), {**summary("torch", k, 12.0, 9.0), "compile": "torch.compile (x)"},
                 {**summary("torch", k, 20.0, 2.0), "form": "torch-eager", "compile": "eager (--torch-compile off)"}]
    for s in runs:
        s.update(mfu=0.2, mfu_basis="measured", peak_flops=150e9)
    result = compare_report.aggregate(runs)
    assert result["forms"] == ["jax", "torch", "torch-eager"]
    assert result["frameworks"]["torch"]["label"] == "PyTorch (compiled)"
    jax_rate = (1 / 10.0 + 1 / 11.0) / 2  # the median of two runs' tokens/s, per token
    assert result["ratios"]["tokens_per_s"] == pytest.approx(jax_rate * 12.0)
    assert result["ratios_eager"]["tokens_per_s"] == pytest.approx(jax_rate * 20.0)
    samples = iter([(1.0,), (3.5,), (2.5,)])
    with load_module.LoadMonitor(every_s=3600, getloadavg=lambda: next(samples), cores=2) as load:
        pass
    # A quiet race keeps the 2 cores busy by itself: a load of 2 during it is no warning.
    quiet = iter([(0.8,), (2.1,)])
    with load_module.LoadMonitor(every_s=3600, getloadavg=lambda: next(quiet), cores=2) as alone:
        pass
    assert not alone.summary()["above_cores"]
    result["load"] = load.summary()
    assert result["load"] == {"cores": 2, "before": 1.0, "during_mean": 3.5, "during_max": 3.5, "samples": 1,
                              "above_cores": True}
    result["split"] = {"jax": {"fwd_bwd_s": 0.3, "optimizer_s": 0.1, "step_s": 0.4,
                               "flops": {"fwd_bwd": 6e10, "ortho": 3e10}},
                       "torch": {"error": "boom"}, "torch-eager": {"fwd_bwd_s": 0.5, "optimizer_s": 0.5, "step_s": 1}}
    result["track_config"] = {}
    md = compare_report.render_markdown(result)
    assert ("| metric | JAX | PyTorch (compiled) | PyTorch eager | JAX / PyTorch (compiled) | JAX / PyTorch eager |"
            in md)
    row = md.split("| tokens/s |")[1].split("\n")[0]
    assert row.endswith(f"| {jax_rate * 12:.3f} | {jax_rate * 20:.3f} |")
    assert "WARNING: other work shared the 2 cores" in md and "1.00 before the runs" in md
    assert "| JAX | 400 ms | 300 ms | 100 ms | 25% | 200.0 | 300.0 |" in md
    assert "| PyTorch (compiled) | failed: boom |" in md and "| 1,000 ms | 500 ms | 500 ms | 50% | n/a | n/a |" in md
    assert "**measured** matmul peak of this device (150 GFLOP/s" in md
    assert "| 2 | PyTorch (compiled) |" in md and "| 3 | PyTorch eager |" in md
    assert compare.forms_for(get_track("smoke")) == ("jax", "torch", "torch-eager")
    assert compare.forms_for(get_track("smoke").replace(torch_compile="off")) == ("jax", "torch")
    assert compare.form_track(get_track("smoke"), "torch-eager").torch_compile == "off"
