"""Interleaved timing for the benchmarks: ratios that hold on a noisy machine.

Two runs timed one after the other (all of a, then all of b) see different load from the rest of the
machine, so their ratio drifts by more than the differences we look for. Here every run is warmed up
once, then timed round by round (a b a b ...), and a ratio is taken per round from times measured
seconds apart; its min / median / max over the rounds says how far it can be trusted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MIN_ROUNDS = 5  # fewer only for runs over a minute each


def seconds_of(call: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    call()
    sync()
    return time.perf_counter() - start


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    rounds: int = MIN_ROUNDS,
    sync: Callable[[], None] = lambda: None,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Each call once untimed (allocation, kernel choice, compilation), then `rounds` rounds over all
    calls in order; returns every call's times, one per round."""
    if warmup:
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(seconds_of(call, sync))
    return times


@dataclass(frozen=True)
class Spread:
    """min / median / max of a quantity over timed rounds."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(min(values), statistics.median(values), max(values))

    def __str__(self) -> str:
        return f"{self.median:.3g} [{self.low:.3g}, {self.high:.3g}]"


def ratio_spread(numerator: list[float], denominator: list[float]) -> Spread:
    """Per-round ratios numerator[i] / denominator[i] (measured in the same round), summarised."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("ratios need the same, non-zero number of rounds on both sides")
    return Spread.of([n / d for n, d in zip(numerator, denominator)])


def check_line(label: str, spread: Spread, op: str, bound: float) -> str:
    """PASS/MISS on the median, with the spread printed beside it so a reader sees a borderline call."""
    ok = spread.median <= bound if op == "<=" else spread.median >= bound
    return f"{'PASS' if ok else 'MISS'}  {label} = {spread} (median [min, max]; want {op} {bound:.2f})"
