"""Ablations (scripts/ablate.py, jax_nano/run/ablate.py): the plan's order, a failing run reported while the others
go on, a resume that redoes nothing finished, the report's figures; and bad input of both command lines."""

import json
from pathlib import Path

import pytest

from configs import variants
from jax_nano.core import report
from jax_nano.core.cli import run_main
from jax_nano.run import ablate, ablate_report
from tests.script_modules import load_script


def test_rounds_rotate_the_arms():
    arms = [ablate.Arm(label, (), None) for label in ("baseline", "a", "b")]
    got = [(arm.label, seed) for arm, seed in ablate.order(arms, [1, 2, 3])]
    assert got == [("baseline", 1), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("baseline", 2),
                   ("b", 3), ("baseline", 3), ("a", 3)]


@pytest.mark.parametrize("tool,argv,needle", [
    ("ablate", ["--variant", "unet-skips", "--seeds", "1", "--t-test"], "--t-test needs at least 2 seeds per arm"),
    ("ablate", ["--variant", "unet-skipz"], "unknown variant 'unet-skipz'; choose one of unet-skips, muon-drop"),
    ("ablate", ["--variant", "--muon-drop 1.5"], "muon_drop=1.5 is outside [0, 1)"),
    ("ablate", ["--variant=--resume"], "--resume is not a track flag"),
    ("speedrun", ["--repeats", "0"], "--repeats 0: must be >= 1"),
    ("speedrun", ["--muon-drop", "1"], "muon_drop=1.0 is outside [0, 1)"),
    ("speedrun", ["--variant", "dropout"], "unknown variant 'dropout'"),
])
def test_bad_input_is_one_line_and_exit_2(tool, argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(load_script(tool).main, argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


@pytest.mark.long  # four toy trainings
def test_an_ablation_reports_failures_resumes_and_compares(toy_track, tmp_path, monkeypatch):
    base = toy_track(max_steps=3)
    arms = [ablate.Arm("baseline", (), base),
            ablate.Arm("unet-skips", ("--unet-skips",), variants.apply(base, {variants.VARIANTS["unet-skips"]: True})),
            ablate.Arm("--data missing", ("--data", "missing"), base.replace(data=str(tmp_path / "missing")))]
    kw = dict(reach=6.0, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs", show_bar=False)
    result = ablate.run("abl", arms, [0, 1], **kw)
    assert sorted(result["runs"]) == ["baseline-seed0", "baseline-seed1", "unet-skips-seed0", "unet-skips-seed1"]
    assert sorted(result["failed"]) == ["data-missing-seed0", "data-missing-seed1"]
    assert "does not exist" in result["failed"]["data-missing-seed0"]
    # Seeds differ, so the runs do.
    assert result["runs"]["baseline-seed0"]["train_loss"] != result["runs"]["baseline-seed1"]["train_loss"]

    with pytest.raises(ablate.AblationError, match="already exists"):
        ablate.run("abl", arms, [0, 1], **kw)
    with pytest.raises(ablate.AblationError, match="planned with other arms"):
        ablate.run("abl", arms[:2], [0, 1], resume=True, **kw)
    trained = []
    monkeypatch.setattr(ablate, "speedrun", lambda track, run_name, **_: trained.append(run_name) or 1 / 0)
    again = ablate.run("abl", arms, [0, 1], resume=True, **kw)
    assert sorted(trained) == ["data-missing-seed0", "data-missing-seed1"]  # only what had not finished
    assert again["runs"].keys() == result["runs"].keys()

    a = ablate_report.write(again, tmp_path / "results", "abl")
    assert a["arms"]["baseline"]["stats"]["train_loss"]["n"] == 2 and a["arms"]["--data missing"]["runs"] == {}
    w = a["comparisons"]["unet-skips"]["train_loss"]
    losses = {k: again["runs"][k]["train_loss"] for k in again["runs"]}
    diff = (losses["unet-skips-seed0"] + losses["unet-skips-seed1"] - losses["baseline-seed0"]
            - losses["baseline-seed1"]) / 2
    assert w["difference"] == pytest.approx(diff) and w["low"] <= diff <= w["high"] and 0 <= w["p"] <= 1
    assert a["comparisons"]["--data missing"]["train_loss"] is None
    md = Path(a["files"]["md"]).read_text()
    assert "| unet-skips | final train loss |" in md and "## Failed runs" in md and "steps to reach 6" in md
    assert Path(a["files"]["png"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(a["files"]["json"]).read_text())["baseline"] == "baseline"


def fake_speedrun(track, run_name, results_dir, **_):
    """A run that trains nothing: its losses depend on the seed and on unet-skips; an arm without data fails."""
    if track.data == "missing":
        raise RuntimeError("no data")
    loss = 5.0 - 0.01 * track.seed + (0.5 if variants.active(track) else 0.0)
    with report.MetricsLog(Path(results_dir) / f"{run_name}.jsonl") as log:
        for step in range(3):
            log.write({"step": step, "loss": loss + 1 - step / 2, "tokens": 512 * (step + 1),
                       "active_time_s": step + 1.0})
    summary = {"run": run_name, "finished": True, "track": track.name, "device": "CPU", "date": "2026-12-03",
               "commit": "abc", "train_loss": loss, "val_loss": loss + 0.1, "tokens_per_s": 512.0,
               "active_time_s": 3.0}
    report.write_json_atomic(Path(results_dir) / f"{run_name}.json", summary)
    return summary


def test_an_ablation_without_training_reports_failures_resumes_and_compares(toy_track, tmp_path, monkeypatch):
    monkeypatch.setattr(ablate, "speedrun", fake_speedrun)
    base = toy_track()
    arms = [ablate.Arm("baseline", (), base),
            ablate.Arm("unet-skips", ("--unet-skips",), variants.apply(base, {variants.VARIANTS["unet-skips"]: True})),
            ablate.Arm("--data missing", ("--data", "missing"), base.replace(data="missing"))]
    kw = dict(reach=5.5, results_dir=tmp_path / "results", runs_dir=tmp_path / "runs", show_bar=False)
    result = ablate.run("abl", arms, [0, 1, 2], **kw)
    assert len(result["runs"]) == 6 and sorted(result["failed"]) == [f"data-missing-seed{s}" for s in range(3)]
    assert result["failed"]["data-missing-seed0"] == "RuntimeError: no data"
    calls = []
    monkeypatch.setattr(ablate, "speedrun", lambda track, run_name, **kw: calls.append(run_name) or 1 / 0)
    again = ablate.run("abl", arms, [0, 1, 2], resume=True, **kw)
    assert sorted(calls) == sorted(result["failed"]) and again["runs"] == result["runs"]
    a = ablate_report.write(again, tmp_path / "results", "abl")
    w = a["comparisons"]["unet-skips"]["train_loss"]
    assert w["difference"] == pytest.approx(0.5) and w["p"] < 1e-6 and w["low"] <= 0.5 <= w["high"]
    assert a["arms"]["baseline"]["stats"]["steps_to_reach"]["median"] == 2  # loss + 1 - step/2 <= 5.5 at step 1
    assert a["arms"]["unet-skips"]["reached"] == 3 and a["comparisons"]["--data missing"]["val_loss"] is None
    md = Path(a["files"]["md"]).read_text()
    assert "| unet-skips | final train loss | +0.5 |" in md
    assert "- data-missing-seed2: ZeroDivisionError: division by zero" in md  # the retry's failure
    assert Path(a["files"]["png"]).read_bytes()[:4] == b"\x89PNG"
