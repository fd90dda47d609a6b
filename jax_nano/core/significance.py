"""The statistics of repeated runs: median and spread, and Welch's unequal-variance t-test (scipy.stats) with the
95% interval of a difference of means, from samples or from a row's mean, spread and count."""

import math
import statistics


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe(values) -> dict | None:
    """Median, min, max, mean, sample standard deviation (None for one value) and n of the finite values."""
    vals = _finite(values)
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "mean": statistics.fmean(vals),
            "stdev": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def welch(a, b, confidence: float = 0.95) -> dict | None:
    """mean(a) - mean(b) with its `confidence` interval, Welch's t, its degrees of freedom and the two-sided p.
    None when either sample has fewer than 2 values. Two constant samples give an exact difference: p is 1 when
    the means are equal and 0 otherwise."""
    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return {"difference": diff, "low": diff, "high": diff, "t": None, "df": None, "p": float(diff == 0)}
    from scipy import stats  # imported when used: scipy probes for torch and JAX arrays as it loads

    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence)
    return {"difference": diff, "low": float(interval.low), "high": float(interval.high),
            "t": float(result.statistic), "df": float(result.df), "p": float(result.pvalue)}


def p_smaller(new, old_mean: float, old_stdev: float, old_n: int) -> float | None:
    """One-sided Welch p-value that the mean of the samples `new` is below a mean known by (mean, sample standard
    deviation, count), e.g. a leaderboard row's. None when either side has fewer than 2 runs."""
    new = _finite(new)
    if len(new) < 2 or old_n < 2 or old_stdev is None:
        return None
    mean, sd = statistics.fmean(new), statistics.stdev(new)
    if sd == 0 and old_stdev == 0:
        return float(mean >= old_mean)
    from scipy import stats

    result = stats.ttest_ind_from_stats(mean, sd, len(new), old_mean, old_stdev, old_n, equal_var=False,
                                        alternative="less")
    return float(result.pvalue)
