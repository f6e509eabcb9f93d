"""Images per second of the training loop, smoothed for progress reports and ETAs."""

from __future__ import annotations

import time


class Throughput:
    """Images per second over the last few steps (an exponential moving average)."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self.last = time.perf_counter()
        self.rate: float | None = None

    def tick(self, images: int) -> float:
        now = time.perf_counter()
        rate = images / max(now - self.last, 1e-9)
        self.last = now
        self.rate = (
            rate if self.rate is None else self.smoothing * self.rate + (1 - self.smoothing) * rate
        )
        return self.rate
