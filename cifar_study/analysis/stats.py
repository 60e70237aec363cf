"""The statistics of run-to-run noise, in one place: mean and sd of replicas, t-based intervals, Welch's test.

Pure Python (no SciPy): Student's t quantile by bisection on its CDF, the density integrated by
Simpson's rule, for any real degrees of freedom (Welch's are not whole numbers).
"""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass

from cifar_study.core.history import EpochRecord

CONFIDENCE = 0.95


@functools.lru_cache(maxsize=None)  # a spread asks it once per epoch for the same few (p, df): thousands of epochs
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile at probability `p` (> 0.5) for `df` degrees of freedom."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, steps: int = 4000) -> float:
        h = x / steps
        f = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the sd of a single value is 0."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def replica_spread(metrics: dict[str, list[float]]) -> dict[str, float]:
    """`<name>_mean` and `<name>_sd` of each metric over the replicas, rounded as metrics files are."""
    out = {}
    for name, values in metrics.items():
        mean, sd = mean_sd(values)
        out.update({f"{name}_mean": round(mean, 6), f"{name}_sd": round(sd, 6)})
    return out


BAND_COLUMNS = ("epoch", *(f"heldout_{m}_{s}" for m in ("acc", "loss") for s in ("mean", "low", "high")))


def replica_band(histories: list[list[EpochRecord]]) -> list[dict[str, float]]:
    """Per epoch, the replicas' held-out accuracy and loss: mean, mean - sd and mean + sd (plots/data/replicas.csv)."""
    rows = []
    for records in zip(*histories, strict=True):
        row: dict[str, float] = {"epoch": records[0].epoch}
        for metric in ("acc", "loss"):
            mean, sd = mean_sd([getattr(r, f"heldout_{metric}") for r in records])
            row.update({f"heldout_{metric}_mean": round(mean, 6), f"heldout_{metric}_low": round(mean - sd, 6),
                        f"heldout_{metric}_high": round(mean + sd, 6)})
        rows.append(row)
    return rows


def interval(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, the 95% confidence interval of the mean and the 95%
    prediction interval of one more run (where a single run such as the original study's should fall)."""
    mean, sd = mean_sd(values)
    return {"n": len(values), "mean": mean, "sd": sd, "min": min(values), "max": max(values),
            **bounds(mean, sd, len(values))}


def bounds(mean: float, sd: float, n: int) -> dict[str, float]:
    """`interval`'s t and bounds from a sample's mean, sd and size."""
    t = t_quantile(0.5 + CONFIDENCE / 2, n - 1)
    half_ci, half_pi = t * sd / math.sqrt(n), t * sd * math.sqrt(1 + 1 / n)
    return {"t": t, "ci_low": mean - half_ci, "ci_high": mean + half_ci, "pi_low": mean - half_pi, "pi_high": mean + half_pi}


@dataclass(frozen=True)
class Sample:
    """A metric over n replicas: its mean and sample sd."""
    mean: float
    sd: float
    n: int


@dataclass(frozen=True)
class Difference:
    """B minus A, with its 95% Welch interval."""
    diff: float
    low: float
    high: float
    df: float

    @property
    def beyond_noise(self) -> bool:
        return self.low > 0 or self.high < 0


def welch(a: Sample, b: Sample) -> Difference:
    """The difference of means b - a and its 95% interval by Welch's t (unequal variances); n >= 2 each."""
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    se = math.sqrt(va + vb)
    diff = b.mean - a.mean
    if va ** 2 + vb ** 2 == 0:  # identical replicas on both sides (or sds too small to square): the point
        return Difference(diff, diff, diff, float("inf"))
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * se
    return Difference(diff, diff - half, diff + half, df)


def replicas_needed(diff: float, sd: float, limit: int = 1000) -> int | None:
    """Replicas per side for a difference `diff` between two settings, each with run-to-run sd `sd`,
    to be resolved: the smallest n whose 95% interval (t with 2n - 2 df) excludes zero. None past `limit`."""
    # t > z, so the normal approximation's n is a lower bound: a few steps up from it find n. Tested before it is
    # computed: for a difference of 1e-200 the square overflows.
    if diff == 0 or 1.959964 * sd > abs(diff) * math.sqrt(limit / 2):
        return None
    n = max(2, math.ceil(2 * (1.959964 * sd / abs(diff)) ** 2))
    while n <= limit:
        if t_quantile(0.5 + CONFIDENCE / 2, 2 * n - 2) * sd * math.sqrt(2 / n) < abs(diff):
            return n
        n += 1
    return None
