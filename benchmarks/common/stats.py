"""Percentiles, bucket histograms and trends, the same way in every benchmark's report."""

from __future__ import annotations

import math


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (``statistics.quantiles``' inclusive method); nan if empty."""
    values = sorted(values)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max; empty if there are no values."""
    if not values:
        return {}
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values)}


class Hist:
    """Counts in fixed-width buckets, then one overflow bucket: cheap for tens of thousands of adds a second."""

    __slots__ = ("counts", "max", "n", "nbuckets", "width")

    def __init__(self, width: float, buckets: int) -> None:
        self.width = width
        self.nbuckets = buckets
        self.counts = [0] * (buckets + 1)
        self.n = 0
        self.max: float = 0

    def add(self, value: float, count: int = 1) -> None:
        i = int(value / self.width)
        self.counts[i if i < self.nbuckets else self.nbuckets] += count
        self.n += count
        if value > self.max:
            self.max = value

    def pct(self, q: float, *, at_most_max: bool = False) -> float:
        """Upper edge of the bucket holding the q-th percentile (nan if empty).

        With ``at_most_max``, never more than the largest value, which also stands for the
        overflow bucket.
        """
        if not self.n:
            return float("nan")
        rank = math.ceil(q / 100 * self.n)
        running = 0
        for i, count in enumerate(self.counts):
            running += count
            if running >= rank:
                if not at_most_max:
                    return (i + 1) * self.width
                return min((i + 1) * self.width, self.max) if i < self.nbuckets else self.max
        return self.max


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs, +Inf last."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # in the overflow bucket: the best we can say is "above this"
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return buckets[-2][0]


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return float("nan")
    return sum((t - mx) * (v - my) for t, v in points) / var * 3600
