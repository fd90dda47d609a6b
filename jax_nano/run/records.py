"""Records with repeats: the run names of a track run N times, and a record claim's p-value against the fastest
row already on the leaderboard for the same device (`scripts/speedrun.py --record --repeats N`)."""

from jax_nano.core import leaderboard
from jax_nano.core.report import format_duration
from jax_nano.core.significance import describe, p_smaller


def repeat_names(base: str, n: int) -> list[str]:
    """One run keeps its name; N > 1 runs are BASE-1ofN .. BASE-NofN."""
    return [base] if n == 1 else [f"{base}-{i + 1}of{n}" for i in range(n)]


def spread_line(summaries: list) -> str:
    """'3 runs: Active Training Time 1m 2s 3ms ± 0s 120ms, train loss 4.5012 ± 0.0010, val loss ...'."""
    time = describe([s["active_time_s"] for s in summaries])
    parts = [f"{len(summaries)} runs: Active Training Time {format_duration(time['mean'])}"
             + (f" ± {format_duration(time['stdev'])}" if time["stdev"] is not None else "")]
    for key, name in (("train_loss", "train loss"), ("val_loss", "val loss")):
        d = describe([s[key] for s in summaries])
        parts.append(f"{name} {d['mean']:.4f}" + (f" ± {d['stdev']:.4f}" if d["stdev"] is not None else ""))
    return ", ".join(parts)


def claim(board, track: str, summaries: list) -> str:
    """How these runs compare with the fastest row of `track` on their device: the one-sided Welch p-value that
    their mean Active Training Time is lower (one line); or that there is no such row."""
    device = str(summaries[0]["device"]).strip()
    rows = [r for r in leaderboard.read_rows(board).get(track, []) if r["device"] == device]
    if not rows:
        return f"record claim: no {track} row on {device} yet to compare with"
    best = min(rows, key=lambda r: leaderboard.row_time(r)[0])
    mean, sd, n = leaderboard.row_time(best)
    times = [float(s["active_time_s"]) for s in summaries]
    ours = describe(times)["mean"]
    where = f"the fastest {track} row on {device} ({best['date']}, {best['framework']}, {best['commit']}, {n} run(s))"
    verdict = f"{'faster' if ours < mean else 'not faster'} by {format_duration(abs(mean - ours))}"
    p = p_smaller(times, mean, sd, n)
    if p is None:
        return (f"record claim: {format_duration(ours)} against {format_duration(mean)} of {where}: {verdict}; "
                "no p-value: a t-test needs 2 or more runs on both sides (--repeats 2+)")
    return (f"record claim: {format_duration(ours)} against {format_duration(mean)} of {where}: {verdict}; "
            f"p = {p:.3g} that it is faster (one-sided Welch's t-test)")
