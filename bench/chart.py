"""The revocation-lag chart (bench/results/revocation_lag.png): the distribution of every
variant's lags (empirical CDF, log scale) and each grant's lag against when it ended."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # after choosing the backend

TARGET_MS = 1000.0


def write_revocation_chart(results: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    series = [r for r in results if r.get("lags")]
    if not series:
        return
    figure, (cdf, scatter) = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True)
    for result in series:
        lags = sorted(max(lag, 0.01) for _, lag in result["lags"])
        n = len(lags)
        stats = result["lag_ms"]
        label = f"{result['variant']} (p99 {stats['p99']:.0f} ms)"
        (line,) = cdf.step(lags, [(i + 1) / n for i in range(n)], where="post", label=label)
        scatter.scatter(
            [offset for offset, _ in result["lags"]],
            [max(lag, 0.01) for _, lag in result["lags"]],
            s=4,
            alpha=0.5,
            color=line.get_color(),
            label=result["variant"],
        )
    for axis in (cdf, scatter):
        axis.grid(True, which="both", alpha=0.3)
    cdf.axvline(TARGET_MS, color="red", linestyle="--", linewidth=1, label="target p99 1 s")
    cdf.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    cdf.set_xscale("log")
    cdf.set_xlabel("lag = ended_at - ends_at (ms, log scale)")
    cdf.set_ylabel("fraction of grants ended within")
    cdf.set_title("Revocation lag, cumulative")
    cdf.legend(fontsize=7, loc="lower right")
    scatter.axhline(TARGET_MS, color="red", linestyle="--", linewidth=1)
    scatter.set_yscale("log")
    scatter.set_xlabel("grant's end, seconds after the first end of its variant")
    scatter.set_ylabel("lag (ms, log scale)")
    scatter.set_title("Lag of each grant over the window")
    figure.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
