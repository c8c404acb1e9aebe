"""Throughput and latency figures, as dc_test and the benchmarks print them."""

from __future__ import annotations

import math
from typing import Dict, Sequence


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(latencies: Sequence[float]) -> Dict[str, float]:
    """p50, p90, p99 and max of latencies given in seconds, in milliseconds."""
    ordered = sorted(latencies)
    return {
        "p50": percentile(ordered, 0.50) * 1000.0,
        "p90": percentile(ordered, 0.90) * 1000.0,
        "p99": percentile(ordered, 0.99) * 1000.0,
        "max": (ordered[-1] if ordered else 0.0) * 1000.0,
    }


def latency_line(latencies: Sequence[float]) -> str:
    summary = latency_summary(latencies)
    return "  ".join(f"{name} {value:.3f}" for name, value in summary.items())


def rate(operations: int, seconds: float) -> float:
    return operations / seconds if seconds > 0 else 0.0
