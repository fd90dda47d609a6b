"""LEADERBOARD.md: one `## <track>` section per track, each with one Markdown table; rows are only ever appended.

`--record` turns a run summary into a row (row_from_summary) and appends it (append_row). The file is
validated before and written atomically after, so a malformed row, an unknown track, a file that no longer
parses or a crash mid-write all leave LEADERBOARD.md exactly as it was; a lock on the file lets runs that finish
together each land their row.

Run summary keys consumed here (the trainers write them to results/<run>.json; other keys are ignored):
    date          ISO 8601 date or timestamp of the run, "2025-06-01" or "2025-06-01T14:03:22+00:00" (row: the day)
    framework     "jax" or "torch"
    device        the device's name as the framework reports it, e.g. "NVIDIA GeForce RTX 4090"
    active_time_s Active Training Time in seconds (float): the clock, excluding setup, compilation and evaluation
    steps         optimizer steps taken (int); on a loss track, the first step whose train loss reached the target
    tokens        training tokens consumed (int), steps * batch_size * seq_len
    train_loss    train loss of the last step (float)
    val_loss      validation loss at the end (float); on the 1B track, the best one
    setup_time_s  Setup & Compilation Time in seconds (float)
    params        total parameter count (int)
    commit        git commit of the code that ran, short hash, "-dirty" appended for uncommitted changes
    tokens_per_s  tokens / active_time_s (float)
    mfu           model FLOPs utilisation as a fraction (float), or None where the device's peak is unknown
    mfu_basis     optional: "published" (SPEC's peak) or "measured" (jax_nano/core/peak.py); a measured one is
                  labelled in the row, "21.3% (measured peak)"
"""

import contextlib
import datetime
import fcntl
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from configs.errors import UserError
from jax_nano.core.report import format_duration, parse_duration, write_text_atomic
from jax_nano.core.safe_paths import refuse_symlink

COLUMNS = (
    "date", "framework", "device", "active training time", "runs", "steps", "tokens", "tokens/s", "MFU",
    "train loss", "val loss", "setup & compile", "params", "commit",
)
# The columns before rows said how many runs they average: such a table still parses (its rows are single runs),
# and the first row appended to it adds the column, with 1 in every older row.
LEGACY_COLUMNS = tuple(c for c in COLUMNS if c != "runs")
SPREAD = " ± "  # "mean ± sample standard deviation" in a row of several runs

SUMMARY_KEYS = (
    "date", "framework", "device", "active_time_s", "steps", "tokens", "train_loss", "val_loss",
    "setup_time_s", "params", "commit", "tokens_per_s", "mfu",
)

_INT_RE = re.compile(r"\d{1,3}(?:,\d{3})*")
_LOSS_RE = re.compile(r"\d+\.\d{4}")
_MFU_RE = re.compile(r"\d+\.\d%(?: \(measured peak\))?")
_SEPARATOR_CELL_RE = re.compile(r":?-{3,}:?")


class LeaderboardError(UserError):
    """A row or a leaderboard file that cannot be recorded; a UserError so `--record` prints one line, no traceback."""


def _check_int(cell: str) -> None:
    if not _INT_RE.fullmatch(cell):
        raise ValueError("not an integer like 6,086,656")


def _check_loss(cell: str) -> None:
    if not _LOSS_RE.fullmatch(cell):
        raise ValueError("not a loss like 4.7409")


def _check_date(cell: str) -> None:
    if len(cell) != 10:
        raise ValueError("not a date like 2025-06-01")
    datetime.date.fromisoformat(cell)


def _check_runs(cell: str) -> None:
    if not (cell.isdigit() and int(cell) >= 1 and cell == str(int(cell))):
        raise ValueError("not a number of runs like 3")


def _spread(check):
    """A cell of `check`'s form, or two of them as 'mean ± standard deviation'."""

    def checked(cell: str) -> None:
        for part in cell.split(SPREAD, 1):
            check(part)

    return checked


def _check_mfu(cell: str) -> None:
    if cell != "n/a" and not _MFU_RE.fullmatch(cell):
        raise ValueError("not a percentage like 41.3%, 21.0% (measured peak) or n/a")


# How each column's cell must parse; the text columns only need to be non-empty.
_CHECKS = {
    "date": _check_date,
    "active training time": _spread(parse_duration),
    "runs": _check_runs,
    "steps": _check_int,
    "tokens": _check_int,
    "tokens/s": _check_int,
    "MFU": _check_mfu,
    "train loss": _spread(_check_loss),
    "val loss": _spread(_check_loss),
    "setup & compile": parse_duration,
    "params": _check_int,
}


def row_from_summary(summary: dict) -> dict:
    """Leaderboard cells from a run summary (keys in the module docstring)."""
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise LeaderboardError(f"run summary lacks {', '.join(missing)}; it cannot become a leaderboard row")
    s = summary
    try:
        return {
            "date": datetime.datetime.fromisoformat(s["date"]).date().isoformat(),
            "framework": str(s["framework"]).strip(),
            "device": str(s["device"]).strip(),
            "active training time": format_duration(float(s["active_time_s"])),
            "runs": "1",
            "steps": f"{int(s['steps']):,}",
            "tokens": f"{int(s['tokens']):,}",
            "tokens/s": f"{round(float(s['tokens_per_s'])):,}",
            "MFU": "n/a" if s["mfu"] is None else f"{100 * float(s['mfu']):.1f}%"
                   + (" (measured peak)" if s.get("mfu_basis") == "measured" else ""),
            "train loss": f"{float(s['train_loss']):.4f}",
            "val loss": f"{float(s['val_loss']):.4f}",
            "setup & compile": format_duration(float(s["setup_time_s"])),
            "params": f"{int(s['params']):,}",
            "commit": str(s["commit"]).strip(),
        }
    except (TypeError, ValueError, OverflowError) as e:
        raise LeaderboardError(f"run summary has a value that cannot become a leaderboard cell: {e}") from None


def row_from_summaries(summaries: list) -> dict:
    """One row for repeated runs of a track on one device: Active Training Time and the losses as mean ± sample
    standard deviation, steps, tokens and setup as means, tokens/s and MFU of the mean time; `runs` says how many."""
    if len(summaries) == 1:
        return row_from_summary(summaries[0])
    devices = {str(s.get("device")).strip() for s in summaries}
    if len(devices) != 1:
        raise LeaderboardError(f"repeated runs on different devices ({', '.join(sorted(devices))}) make no one row")
    rows = [row_from_summary(s) for s in summaries]
    row = dict(rows[0], runs=str(len(rows)))

    def mean_sd(key):
        values = [float(s[key]) for s in summaries]
        return statistics.fmean(values), statistics.stdev(values)

    time, time_sd = mean_sd("active_time_s")
    row["active training time"] = f"{format_duration(time)}{SPREAD}{format_duration(time_sd)}"
    for key, column in (("train_loss", "train loss"), ("val_loss", "val loss")):
        mean, sd = mean_sd(key)
        row[column] = f"{mean:.4f}{SPREAD}{sd:.4f}"
    steps, tokens = (statistics.fmean(int(s[k]) for s in summaries) for k in ("steps", "tokens"))
    row["steps"], row["tokens"] = f"{round(steps):,}", f"{round(tokens):,}"
    row["tokens/s"] = f"{round(tokens / time):,}" if time > 0 else "0"
    mfus = [s["mfu"] for s in summaries]
    row["MFU"] = "n/a" if None in mfus else f"{100 * statistics.fmean(mfus):.1f}%"
    row["setup & compile"] = format_duration(statistics.fmean(float(s["setup_time_s"]) for s in summaries))
    return row


def row_time(row: dict) -> tuple[float, float | None, int]:
    """(mean Active Training Time in s, its sample standard deviation or None, runs) of a row, old or new."""
    mean, _, sd = row["active training time"].partition(SPREAD)
    return parse_duration(mean), parse_duration(sd) if sd else None, int(row.get("runs", "1"))


def validate_row(row: dict) -> None:
    """Every column present (and nothing else), every cell one line of table-safe text that parses as its column."""
    if set(row) != set(COLUMNS):
        missing = [c for c in COLUMNS if c not in row]
        extra = [c for c in row if c not in COLUMNS]
        raise LeaderboardError(f"row columns do not match the leaderboard: missing {missing}, unexpected {extra}")
    for column in COLUMNS:
        cell = row[column]
        if not isinstance(cell, str) or not cell or cell != cell.strip():
            raise LeaderboardError(f"column {column!r}: {cell!r} must be non-empty text without surrounding spaces")
        # A '|' would split the cell and a line break would end the table: either corrupts the file.
        if "|" in cell or "\n" in cell or "\r" in cell:
            raise LeaderboardError(f"column {column!r}: {cell!r} contains '|' or a line break")
        check = _CHECKS.get(column)
        if check is not None:
            try:
                check(cell)
            except ValueError as e:
                raise LeaderboardError(f"column {column!r}: {cell!r} does not parse ({e})") from None


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    last_line: int  # index of the table's last line, where an appended row goes after


def _split_row(line: str, lineno: int) -> list[str]:
    text = line.strip()
    if len(text) < 2 or not text.endswith("|"):
        raise LeaderboardError(f"line {lineno}: table row does not end with '|'")
    return [cell.strip() for cell in text[1:-1].split("|")]


def _parse(lines: list[str]) -> dict[str, _Table]:
    """Strict: anything that is not the expected shape is an error, never silently skipped or repaired."""
    tables: dict[str, _Table] = {}
    sections: set[str] = set()
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
            if section in sections:
                raise LeaderboardError(f"line {i + 1}: section '## {section}' appears twice")
            sections.add(section)
        elif line.startswith("|"):
            if section is None:
                raise LeaderboardError(f"line {i + 1}: table outside any '## <track>' section")
            if section in tables:
                raise LeaderboardError(f"line {i + 1}: section '## {section}' holds a second table")
            header = _split_row(line, i + 1)
            if len(set(header)) != len(header):
                raise LeaderboardError(f"line {i + 1}: table of '## {section}' repeats a column name")
            if i + 1 >= len(lines) or not lines[i + 1].startswith("|"):
                raise LeaderboardError(f"line {i + 2}: table of '## {section}' lacks its |---| separator line")
            separator = _split_row(lines[i + 1], i + 2)
            if len(separator) != len(header) or not all(_SEPARATOR_CELL_RE.fullmatch(c) for c in separator):
                raise LeaderboardError(f"line {i + 2}: malformed separator line in the table of '## {section}'")
            i += 2
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = _split_row(lines[i], i + 1)
                if len(cells) != len(header):
                    raise LeaderboardError(
                        f"line {i + 1}: row of '## {section}' has {len(cells)} cells, its header {len(header)}"
                    )
                rows.append(cells)
                i += 1
            tables[section] = _Table(header, rows, i - 1)
            continue
        i += 1
    return tables


def _read_lines(path) -> list[str]:
    try:
        return Path(path).read_bytes().decode("utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        raise LeaderboardError(f"no leaderboard at {path}") from None
    except UnicodeDecodeError as e:
        raise LeaderboardError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise LeaderboardError(f"{path} cannot be read ({e.strerror})") from None


def read_rows(path) -> dict[str, list[dict]]:
    """Each track's rows as {column: cell} dicts, in file order; LeaderboardError if the file does not parse."""
    tables = _parse(_read_lines(path))
    return {track: [dict(zip(t.header, cells)) for cells in t.rows] for track, t in tables.items()}


def _table(path, track: str, lines: list[str]) -> _Table:
    try:
        tables = _parse(lines)
    except LeaderboardError as e:
        raise LeaderboardError(f"{path} does not parse, not writing to it: {e}") from None
    if track not in tables:
        raise LeaderboardError(f"{path} has no table for track {track!r}; tracks there: {', '.join(tables) or 'none'}")
    table = tables[track]
    if tuple(table.header) not in (COLUMNS, LEGACY_COLUMNS):
        raise LeaderboardError(f"the {track!r} table of {path} has columns {table.header}, expected {list(COLUMNS)}")
    return table


def check_writable(path, track: str) -> None:
    """Raise now, before a run, what append_row would raise after it about the file itself."""
    refuse_symlink(path, "leaderboard")  # its rows are written by a rename, never through a link
    _table(path, track, _read_lines(path))


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on the leaderboard file across processes.

    The lock is on the file itself, and each write replaces the file by a rename: a writer that waited on the
    old file finds another file under the name once it holds the lock, and locks again.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise LeaderboardError(f"no leaderboard at {path}") from None
        except OSError as e:
            raise LeaderboardError(f"{path} cannot be opened ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)  # closing releases the lock


def _add_runs_column(lines: list[str], table: _Table) -> None:
    """Give a table of LEGACY_COLUMNS the `runs` column: 1 in each of its rows, every other cell as it was."""
    at, header = COLUMNS.index("runs"), table.last_line - len(table.rows) - 1
    for offset in range(len(table.rows) + 2):
        i = header + offset
        body = lines[i].rstrip("\r\n")
        cells = [c.strip() for c in body.strip()[1:-1].split("|")]
        cells.insert(at, "runs" if offset == 0 else "---" if offset == 1 else "1")
        text = "|" + "|".join(cells) + "|" if offset == 1 else "| " + " | ".join(cells) + " |"
        lines[i] = text + lines[i][len(body):]


def append_row(path, track: str, row: dict) -> None:
    """Append row as the last row of track's table. Atomic: on any error the file is left byte-for-byte as it was.

    Runs that finish together each append their row: the read, the change and the rename happen under a lock.
    A row of LEGACY_COLUMNS is a single run's."""
    if set(row) == set(LEGACY_COLUMNS):
        row = {**row, "runs": "1"}
    validate_row(row)
    with _locked(path):
        lines = _read_lines(path)
        table = _table(path, track, lines)
        if tuple(table.header) == LEGACY_COLUMNS:
            _add_runs_column(lines, table)
        last = lines[table.last_line]
        body = last.rstrip("\r\n")
        eol = last[len(body):] or "\n"
        lines[table.last_line] = body + eol  # a table ending the file without a newline gets one before the new row
        lines.insert(table.last_line + 1, "| " + " | ".join(row[c] for c in COLUMNS) + " |" + eol)
        write_text_atomic(path, "".join(lines))
