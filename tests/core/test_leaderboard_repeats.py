"""Leaderboard rows of repeated runs (mean ± spread, `runs`), tables written before the `runs` column, the Welch
statistics behind them, and a record claim's p-value against the fastest row on the same device."""

import statistics
from pathlib import Path

import pytest
from scipy import stats

from jax_nano.bench.stats import welch_t_test
from jax_nano.core import leaderboard
from jax_nano.core.leaderboard import LEGACY_COLUMNS, LeaderboardError, append_row, read_rows, row_from_summaries
from jax_nano.core.significance import describe, p_smaller, welch
from jax_nano.run import records

ROOT = Path(__file__).resolve().parents[2]


def summary(time: float, train: float = 4.74, val: float = 4.84, **changes) -> dict:
    s = {"date": "2026-12-03", "framework": "jax", "device": "CPU", "active_time_s": time, "steps": 489,
         "tokens": 8_011_776, "train_loss": train, "val_loss": val, "setup_time_s": 41.0, "params": 88_630_528,
         "commit": "abc1234", "tokens_per_s": 8_011_776 / time, "mfu": None}
    s.update(changes)
    return s


def test_a_row_of_repeats_holds_mean_and_spread_and_says_how_many():
    runs = [summary(86.0, 4.70, 4.80), summary(88.0, 4.72, 4.82), summary(90.0, 4.74, 4.87)]
    row = row_from_summaries(runs)
    leaderboard.validate_row(row)
    assert row["runs"] == "3"
    assert row["active training time"] == "1m 28s 0ms ± 2s 0ms"
    assert row["train loss"] == "4.7200 ± 0.0200" and row["val loss"] == "4.8300 ± 0.0361"
    assert row["tokens/s"] == f"{round(8_011_776 / 88.0):,}"
    assert leaderboard.row_time(row) == (88.0, 2.0, 3)
    single = row_from_summaries(runs[:1])
    assert single["runs"] == "1" and "±" not in single["active training time"]
    assert leaderboard.row_time(single) == (86.0, None, 1)
    with pytest.raises(LeaderboardError, match="different devices"):
        row_from_summaries([summary(86.0), summary(87.0, device="GPU")])


@pytest.mark.parametrize("column,cell", [("runs", "0"), ("runs", "03"), ("active training time", "1m 2s 0ms ± x"),
                                         ("train loss", "4.7 ± 0.1"), ("val loss", "4.7000 +- 0.1000")])
def test_malformed_repeat_cells_are_refused(column, cell):
    row = dict(row_from_summaries([summary(86.0), summary(88.0)]), **{column: cell})
    with pytest.raises(LeaderboardError, match=column):
        leaderboard.validate_row(row)


LEGACY = ("# board\n\n## 8M\n\n| " + " | ".join(LEGACY_COLUMNS) + " |\n|" + "---|" * len(LEGACY_COLUMNS) + "\n"
          "| 2025-06-01 | torch | CPU | 1m 30s 0ms | 489 | 8,011,776 | 89,020 | n/a | 4.7409 | 4.8403 | 41s 0ms | "
          "88,630,528 | old1234 |\n\n## 20M\n\n| " + " | ".join(LEGACY_COLUMNS) + " |\n|" + "---|" * len(LEGACY_COLUMNS)
          + "\n")


def test_a_table_from_before_the_runs_column_parses_and_gains_it_on_append(tmp_path):
    board = tmp_path / "LEADERBOARD.md"
    board.write_text(LEGACY)
    old = read_rows(board)["8M"][0]
    assert "runs" not in old and leaderboard.row_time(old) == (90.0, None, 1)
    leaderboard.check_writable(board, "8M")
    new = row_from_summaries([summary(86.0), summary(88.0)])
    append_row(board, "8M", new)
    rows = read_rows(board)
    assert rows["8M"] == [{**old, "runs": "1"}, new]
    assert rows["20M"] == [] and board.read_text().split("## 20M")[1] == LEGACY.split("## 20M")[1]


def test_welch_agrees_with_the_projects_own_t_test_and_its_interval_with_the_t_quantile():
    a, b = [88.17, 88.66, 88.3, 88.41, 88.52], [86.9, 87.4, 87.1]
    ours, own = welch(a, b), welch_t_test(a, b)
    assert ours["t"] == pytest.approx(own["t"], rel=1e-12) and ours["df"] == pytest.approx(own["df"], rel=1e-12)
    assert ours["p"] == pytest.approx(own["p"], rel=1e-9)
    se = (statistics.variance(a) / 5 + statistics.variance(b) / 3) ** 0.5
    half = stats.t.ppf(0.975, own["df"]) * se
    assert (ours["low"], ours["high"]) == pytest.approx((ours["difference"] - half, ours["difference"] + half))
    assert welch(a, [1.0]) is None and welch([2.0, 2.0], [2.0, 2.0])["p"] == 1.0
    assert describe([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "mean": 2.0, "stdev": 1.0, "n": 3}


def test_p_smaller_from_a_rows_statistics_is_the_one_sided_test_of_the_samples():
    new, old = [85.1, 85.6, 85.3], [86.2, 86.9, 86.4, 86.0]
    direct = stats.ttest_ind(new, old, equal_var=False, alternative="less").pvalue
    assert p_smaller(new, statistics.fmean(old), statistics.stdev(old), len(old)) == pytest.approx(direct, rel=1e-9)
    assert p_smaller(new, 86.0, None, 1) is None and p_smaller([85.0], 86.0, 0.5, 3) is None


def test_a_record_claim_prints_the_p_value_against_the_fastest_row_on_its_device(tmp_path):
    board = tmp_path / "LEADERBOARD.md"
    board.write_text((ROOT / "LEADERBOARD.md").read_text())
    assert records.claim(board, "8M", [summary(86.0)]) == "record claim: no 8M row on CPU yet to compare with"
    append_row(board, "8M", row_from_summaries([summary(90.0), summary(91.0), summary(89.5)]))
    append_row(board, "8M", row_from_summaries([summary(80.0, device="GPU"), summary(80.5, device="GPU")]))
    append_row(board, "8M", row_from_summaries([summary(95.0)]))
    faster = records.claim(board, "8M", [summary(86.0), summary(86.4), summary(85.9)])
    assert "faster by 4s 67ms" in faster and "(2026-12-03, jax, abc1234, 3 run(s))" in faster
    p = float(faster.split("p = ")[1].split()[0])
    assert p == pytest.approx(p_smaller([86.0, 86.4, 85.9], 90.1667, statistics.stdev([90.0, 91.0, 89.5]), 3),
                              rel=1e-3) and p < 0.01
    slower = records.claim(board, "8M", [summary(92.0), summary(93.0)])
    assert "not faster" in slower and float(slower.split("p = ")[1].split()[0]) > 0.9
    assert "no p-value" in records.claim(board, "8M", [summary(86.0)])
    assert records.repeat_names("8M-jax", 1) == ["8M-jax"]
    assert records.repeat_names("8M-jax", 2) == ["8M-jax-1of2", "8M-jax-2of2"]
