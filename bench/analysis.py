"""Pure arithmetic on the samples the benchmark takes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Samples = Sequence[tuple[float, int]]  # (monotonic seconds, value)


def consumed(samples: Samples, total: int) -> list[tuple[float, int]]:
    """Queue-depth samples as messages taken from the queue: (time, total - depth)."""
    return [(t, total - d) for t, d in samples]


def crossing(series: Sequence[tuple[float, float]], level: float) -> float | None:
    """The first time a rising series reaches `level`, interpolated between samples."""
    previous: tuple[float, float] | None = None
    for t, v in series:
        if v >= level:
            if previous is None or v == previous[1]:
                return t
            t0, v0 = previous
            return t0 + (t - t0) * (level - v0) / (v - v0)
        previous = (t, v)
    return None


def steady_span(
    samples: Samples, total: int, low: float = 0.1, high: float = 0.9
) -> tuple[float, float] | None:
    """(when `low` of the queue was drained, when `high` was): the steady part of a
    drain, without the start and the tail."""
    series = [(t, float(v)) for t, v in consumed(samples, total)]
    t_low = crossing(series, low * total)
    t_high = crossing(series, high * total)
    if t_low is None or t_high is None or t_high <= t_low:
        return None
    return t_low, t_high


def sustained_rate(
    samples: Samples, total: int, low: float = 0.1, high: float = 0.9
) -> float | None:
    """Messages per second between `low` and `high` of the queue drained: the slope of
    the steady part."""
    span = steady_span(samples, total, low, high)
    if span is None:
        return None
    return (high - low) * total / (span[1] - span[0])


# (monotonic seconds, the consumer's CPU seconds, the machine's busy and total CPU seconds)
CpuSamples = Sequence[tuple[float, float, float, float]]


def cpu_use(samples: CpuSamples, span: tuple[float, float] | None) -> dict[str, float] | None:
    """Between the first and the last sample inside `span`: the consumer's CPU time per
    second, in cores, and the share of the machine's CPU time (all its cores, whoever
    used it) that was busy. None when fewer than two samples fall inside."""
    if span is None:
        return None
    inside = [s for s in samples if span[0] <= s[0] <= span[1]]
    if len(inside) < 2:
        return None
    (t0, own0, busy0, all0), (t1, own1, busy1, all1) = inside[0], inside[-1]
    if t1 <= t0 or all1 <= all0:
        return None
    return {"cores": (own1 - own0) / (t1 - t0), "machine_busy": (busy1 - busy0) / (all1 - all0)}


def drain_span(samples: Samples, total: int) -> tuple[float, float] | None:
    """(first time the depth fell below `total`, first time it reached 0)."""
    start = next((t for t, d in samples if d < total), None)
    end = next((t for t, d in samples if d == 0), None)
    if start is None or end is None:
        return None
    return start, end


def rate_series(samples: Samples, total: int, window: float = 1.0) -> list[tuple[float, float]]:
    """(seconds since the drain started, messages/s over the last `window` seconds)."""
    span = drain_span(samples, total)
    if span is None:
        return []
    start, end = span
    series = [(t, total - d) for t, d in samples if start - window <= t <= end]
    out: list[tuple[float, float]] = []
    j = 0
    for i, (t, v) in enumerate(series):
        while j < i and series[j][0] < t - window:
            j += 1
        t0, v0 = series[j]
        if t > t0 and t >= start:
            out.append((t - start, (v - v0) / (t - t0)))
    return out


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def flatness(samples: Samples) -> dict[str, float]:
    """Median of the first and of the last tenth of a series (and their ratio)."""
    values = [v for _t, v in samples]
    if len(values) < 10:
        return {"first_tenth_median": math.nan, "last_tenth_median": math.nan, "growth": math.nan}
    tenth = max(1, len(values) // 10)
    first = statistics.median(values[:tenth])
    last = statistics.median(values[-tenth:])
    return {"first_tenth_median": first, "last_tenth_median": last, "growth": last / first}
