"""Run reporting and LEADERBOARD.md writing: formats, FLOP counts, atomicity, rejection of malformed rows."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from configs.model import get_model_config
from jax_nano.core import leaderboard, report
from jax_nano.core.leaderboard import COLUMNS, LeaderboardError, append_row, read_rows, row_from_summary
from jax_nano.core.report import (
    MetricsLog,
    flops_per_token,
    format_duration,
    mfu,
    n_matmul_params,
    parse_duration,
    peak_flops,
    plot_curves,
    read_metrics,
    write_json_atomic,
    write_text_atomic,
)

REPO_LEADERBOARD = Path(__file__).resolve().parents[2] / "LEADERBOARD.md"


@pytest.mark.parametrize(
    "seconds, text",
    [
        (86.178, "1m 26s 178ms"),
        (182.0, "3m 2s 0ms"),
        (2 * 3600 + 37 * 60 + 5.012, "2h 37m 5s 12ms"),
        (0.512, "0s 512ms"),
        (0.0, "0s 0ms"),
        (3600.0, "1h 0m 0s 0ms"),
        (60.0, "1m 0s 0ms"),
        (59.9996, "1m 0s 0ms"),  # rounding to the millisecond carries into the minutes
        (0.0004, "0s 0ms"),
        (977.221, "16m 17s 221ms"),
        (100 * 3600 + 1.5, "100h 0m 1s 500ms"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(round(seconds * 1000) / 1000)


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf")])
def test_format_duration_rejects_impossible(bad):
    with pytest.raises(ValueError):
        format_duration(bad)


@pytest.mark.parametrize("bad", ["0m 5s 0ms", "1m 90s 0ms", "5s", "1m 26s 1780ms", "1m 26.1s 0ms", "", "0h 1m 0s 0ms"])
def test_parse_duration_rejects_non_canonical(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_n_matmul_params_matches_spec():
    assert n_matmul_params(get_model_config("blueberry-151m")) == 150_994_944
    assert n_matmul_params(get_model_config("blueberry-88m")) == 88_604_672
    fused = get_model_config("blueberry-151m", fused_qkvo=True)
    assert n_matmul_params(fused) == 150_994_944


def test_ortho_flops_by_hand():
    """Each Polar Express iteration on an m x n matrix, m <= n: 4 m^2 n + 2 m^3 FLOPs (two products with the matrix,
    the Gram matrix's square)."""
    tiny = get_model_config("tiny").replace(d_model=4, n_heads=2, n_kv_heads=1, d_ff=8, n_layers=1, mlp="relu2")
    # q and o 4 x 4: 384 each; k and v 4 x 2: 80 each; up 4 x 8 and down 8 x 4: 640 each.
    assert report.ortho_flops_per_step(tiny, 5) == 5 * (2 * 384 + 2 * 80 + 2 * 640)
    # fused: one 4 x 12 matrix, 4 * 16 * 12 + 2 * 64 = 896, in place of the four projections.
    assert report.ortho_flops_per_step(tiny.replace(fused_qkvo=True), 1) == 896 + 2 * 640
    assert report.ortho_flops_per_step(tiny.replace(mlp="swiglu"), 1) == 2208 + 640
    assert report.ortho_flops_per_step(get_model_config("blueberry-88m"), 5) == 745_579_479_040


def test_flops_and_mfu_arithmetic():
    cfg = get_model_config("blueberry-88m")
    per_token = 6 * 88_604_672 + 6 * 22 * 2048 * 512
    assert flops_per_token(cfg, 2048) == per_token
    # 8M record: 8,011,776 tokens in 86.178 s on an RTX 4090.
    tps = 489 * 8 * 2048 / 86.178
    assert mfu(tps, cfg, 2048, "NVIDIA GeForce RTX 4090") == pytest.approx(tps * per_token / 165e12)
    assert mfu(tps, cfg, 2048, "cpu") is None


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", None),  # "L4" must not match another part
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", None),
        ("cpu", None),
        ("TFRT_CPU_0", None),
    ],
)
def test_peak_flops(name, peak):
    assert peak_flops(name) == peak


def test_write_atomic(tmp_path):
    target = tmp_path / "deep" / "dir" / "summary.json"
    write_json_atomic(target, {"loss": 4.5, "steps": 3})
    assert json.loads(target.read_text()) == {"loss": 4.5, "steps": 3}
    write_text_atomic(target, "replaced\n")
    assert target.read_text() == "replaced\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]  # no temp file left


def test_write_json_converts_numpy(tmp_path):
    write_json_atomic(tmp_path / "s.json", {"loss": np.float32(2.5), "curve": np.arange(3), "n": np.int64(7)})
    assert json.loads((tmp_path / "s.json").read_text()) == {"loss": 2.5, "curve": [0, 1, 2], "n": 7}


def test_write_atomic_crash_keeps_original(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    target.write_text("original\n")

    def crash(*args):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "original\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_metrics_log(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.write({"step": 1, "loss": 5.0})
        log.write({"step": 2, "loss": 4.0})
        # Flushed per record: readable while the run is still going.
        assert [r["step"] for r in read_metrics(path)] == [1, 2]
    with MetricsLog(path, append=True) as log:
        log.write({"step": 3, "loss": 3.5})
    assert read_metrics(path) == [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 3, "loss": 3.5}]
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # a crash mid-line
    assert len(read_metrics(path)) == 3
    with MetricsLog(path) as log:  # a fresh run starts a fresh log
        log.write({"step": 1})
    assert read_metrics(path) == [{"step": 1}]


def test_plot_curves_writes_png(tmp_path):
    path = tmp_path / "plots" / "loss.png"
    steps = list(range(10))
    plot_curves({"jax": (steps, [5 - 0.1 * s for s in steps]), "torch": (steps, [5 - 0.11 * s for s in steps])},
                path, xlabel="step", title="smoke", hline=4.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]
    with pytest.raises(ValueError):
        plot_curves({"jax": ([1, 2], [1.0])}, tmp_path / "bad.png", xlabel="step")


# --- LEADERBOARD.md ----------------------------------------------------------------------------------------


def _summary(**changes):
    summary = {
        "date": "2025-06-01T14:03:22+00:00", "framework": "jax", "device": "NVIDIA GeForce RTX 4090",
        "active_time_s": 86.178, "steps": 489, "tokens": 8_011_776, "train_loss": 4.74091, "val_loss": 4.84028,
        "setup_time_s": 41.0, "params": 88_630_528, "commit": "abc1234", "tokens_per_s": 92_967.3, "mfu": 0.3618,
        "peak_memory_bytes": 123,  # keys the leaderboard does not use are ignored
    }
    summary.update(changes)
    return summary


@pytest.fixture
def board(tmp_path):
    path = tmp_path / "LEADERBOARD.md"
    shutil.copy(REPO_LEADERBOARD, path)
    return path


def _sections(text: str) -> dict[str, str]:
    """The file split at '## ' headings, each chunk verbatim, to compare untouched sections byte for byte."""
    chunks = text.split("\n## ")
    return {chunk.split("\n", 1)[0]: chunk for chunk in chunks}


def test_row_from_summary():
    row = row_from_summary(_summary())
    assert row == {
        "date": "2025-06-01", "framework": "jax", "device": "NVIDIA GeForce RTX 4090",
        "active training time": "1m 26s 178ms", "runs": "1", "steps": "489", "tokens": "8,011,776",
        "tokens/s": "92,967",
        "MFU": "36.2%", "train loss": "4.7409", "val loss": "4.8403", "setup & compile": "41s 0ms",
        "params": "88,630,528", "commit": "abc1234",
    }
    assert row_from_summary(_summary(mfu=None))["MFU"] == "n/a"
    assert row_from_summary(_summary(date="2025-06-01"))["date"] == "2025-06-01"
    with pytest.raises(LeaderboardError, match="val_loss"):
        row_from_summary({k: v for k, v in _summary().items() if k != "val_loss"})
    with pytest.raises(LeaderboardError):
        row_from_summary(_summary(active_time_s=float("nan")))


def test_repo_leaderboard_parses_with_current_columns():
    tables = leaderboard._parse(REPO_LEADERBOARD.read_text().splitlines(keepends=True))
    assert set(tables) == {"4.5loss", "3.5loss", "8M", "20M", "100M", "1B"}
    assert all(tuple(t.header) == COLUMNS for t in tables.values())


def test_append_keeps_other_sections_identical(board):
    before = board.read_text()
    first = row_from_summary(_summary())
    second = row_from_summary(_summary(framework="torch", active_time_s=88.5))
    append_row(board, "8M", first)
    append_row(board, "8M", second)
    after = board.read_text()
    rows = read_rows(board)
    assert rows["8M"] == [first, second]  # appended last, in order
    assert all(rows[t] == [] for t in rows if t != "8M")
    old, new = _sections(before), _sections(after)
    assert old.keys() == new.keys()
    assert all(old[k] == new[k] for k in old if k != "8M")
    assert new["8M"].startswith(old["8M"].rstrip("\n"))
    assert after.startswith(before.split("\n## 8M")[0])


def _reject(board, track, row, match):
    before = board.read_bytes()
    with pytest.raises(LeaderboardError, match=match):
        append_row(board, track, row)
    assert board.read_bytes() == before
    assert [p.name for p in board.parent.iterdir()] == ["LEADERBOARD.md"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"device": "RTX | 4090"}, "'[|]'"),
        ({"commit": "abc\n| x |"}, "line break"),
        ({"steps": "four hundred"}, "steps"),
        ({"tokens": "8011776.5"}, "tokens"),
        ({"train loss": "nan"}, "train loss"),
        ({"active training time": "86.178"}, "active training time"),
        ({"MFU": "0.36"}, "MFU"),
        ({"date": "yesterday"}, "date"),
        ({"framework": ""}, "framework"),
        ({"params": 88_630_528}, "params"),
        ({"extra": "x"}, "unexpected"),
    ],
)
def test_malformed_row_rejected_file_unchanged(board, change, match):
    _reject(board, "8M", {**row_from_summary(_summary()), **change}, match)


def test_missing_column_rejected(board):
    row = row_from_summary(_summary())
    del row["val loss"]
    _reject(board, "8M", row, "missing")


def test_unknown_track_rejected(board):
    _reject(board, "smoke", row_from_summary(_summary()), "no table for track 'smoke'")


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda t: t + "| stray | row |\n",  # a 2-cell row at the end of the 1B table
        lambda t: t.replace("\n## 4.5loss", "\n| a | b |\n|---|---|\n\n## 4.5loss", 1),  # a table outside a section
        lambda t: t.replace("|---|---|---|", "|---|---|", 1),  # separator cell count differs from the header
        lambda t: t + "\n## 8M\n",  # a duplicated section
        lambda t: t.replace("\n\n## 100M", "\n| 2025-01-01 | jax |\n\n## 100M", 1),  # a short row in 20M
    ],
)
def test_unparseable_file_refused_not_repaired(board, corrupt):
    board.write_text(corrupt(board.read_text()))
    _reject(board, "8M", row_from_summary(_summary()), "does not parse")


def test_wrong_header_refused(board):
    board.write_text(board.read_text().replace("| tokens/s | MFU ", "", 1))  # 4.5loss table with old columns
    board.write_text(board.read_text().replace("|---|---|---|---|---|---|---|---|---|---|---|---|---|",
                                               "|---|---|---|---|---|---|---|---|---|---|---|", 1))
    _reject(board, "4.5loss", row_from_summary(_summary()), "expected")


def test_missing_file(tmp_path):
    with pytest.raises(LeaderboardError, match="no leaderboard"):
        append_row(tmp_path / "LEADERBOARD.md", "8M", row_from_summary(_summary()))


def test_append_crash_leaves_original(board, monkeypatch):
    before = board.read_bytes()

    def crash(*args):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(report.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        append_row(board, "8M", row_from_summary(_summary()))
    assert board.read_bytes() == before
    assert [p.name for p in board.parent.iterdir()] == ["LEADERBOARD.md"]
    monkeypatch.undo()
    append_row(board, "8M", row_from_summary(_summary()))
    assert len(read_rows(board)["8M"]) == 1


def test_append_to_table_ending_the_file_without_newline(board):
    text = board.read_text().rstrip("\n")
    board.write_text(text)
    append_row(board, "1B", row_from_summary(_summary()))
    after = board.read_text()
    assert after.startswith(text + "\n| 2025-06-01 |")
    assert after.endswith(" |\n")
    assert len(read_rows(board)["1B"]) == 1


def test_append_preserves_crlf_and_mode(board):
    board.write_bytes(board.read_bytes().replace(b"\n", b"\r\n"))
    os.chmod(board, 0o644)
    before = board.read_bytes()
    append_row(board, "20M", row_from_summary(_summary()))
    after = board.read_bytes()
    assert b"\n" not in after.replace(b"\r\n", b"")
    assert len(after) > len(before)
    assert board.stat().st_mode & 0o777 == 0o644
    assert len(read_rows(board)["20M"]) == 1
