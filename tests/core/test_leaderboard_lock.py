"""`--record` from runs that finish together: every row lands, the file always parses; a file that is not a
leaderboard is refused in one line, before a run, and left as it was."""

import multiprocessing
from pathlib import Path

import pytest

from jax_nano.core import leaderboard
from jax_nano.core.leaderboard import LeaderboardError

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 20


def row(steps: int) -> dict:
    return {"date": "2025-06-01", "framework": "jax", "device": "CPU", "active training time": "1m 26s 178ms",
            "steps": f"{steps:,}", "tokens": "6,086,656", "tokens/s": "70,000", "MFU": "n/a",
            "train loss": "4.7409", "val loss": "4.8000", "setup & compile": "0s 512ms", "params": "6,086,656",
            "commit": "abc1234"}


def writer(path: str, first: int, barrier) -> None:
    """Append ROUNDS rows; in each round both writers start together."""
    for k in range(ROUNDS):
        barrier.wait()
        leaderboard.append_row(path, "8M", row(first + k))


def test_two_writers_at_once_both_land_every_time(tmp_path):
    board = tmp_path / "LEADERBOARD.md"
    board.write_text((ROOT / "LEADERBOARD.md").read_text())
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=writer, args=(str(board), first, barrier)) for first in (1000, 2000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    steps = sorted(int(r["steps"].replace(",", "")) for r in leaderboard.read_rows(board)["8M"])
    assert steps == sorted([*range(1000, 1000 + ROUNDS), *range(2000, 2000 + ROUNDS)])


@pytest.mark.parametrize("content,message", [
    (b"", "has no table for track '8M'; tracks there: none"),
    (b"# notes\n\nsome text\n", "has no table for track '8M'"),
    (b"\xff\xfe\x00junk", "is not UTF-8 text"),
    (b"## 8M\n| date | framework |\n|---|---|\n| 2025-06-01 | jax\n", "does not parse"),
    (b"## 8M\n| a | b |\n|---|---|\n", "has columns"),
])
def test_a_file_that_is_not_our_leaderboard_is_refused_unchanged(tmp_path, content, message):
    board = tmp_path / "LEADERBOARD.md"
    board.write_bytes(content)
    for attempt in (lambda: leaderboard.check_writable(board, "8M"),
                    lambda: leaderboard.append_row(board, "8M", row(1))):
        with pytest.raises(LeaderboardError, match=message) as info:
            attempt()
        assert "\n" not in str(info.value)
    assert board.read_bytes() == content


def test_a_directory_or_a_missing_file_is_refused(tmp_path):
    with pytest.raises(LeaderboardError, match="cannot be read"):
        leaderboard.check_writable(tmp_path, "8M")
    with pytest.raises(LeaderboardError, match="no leaderboard at"):
        leaderboard.append_row(tmp_path / "missing.md", "8M", row(1))
