"""The server's counters in Prometheus' text format (``GET /metrics``): requests by endpoint and
status, rows by adapter, batch sizes and request latency as histograms, and the queue's depth."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from typing import Callable, Dict, Sequence, Tuple

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def label(value: str) -> str:
    """``value`` as a Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets, self.counts, self.sum, self.count = tuple(buckets), [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        return out + [f"{name}_sum {self.sum}", f"{name}_count {self.count}"]


class ServerMetrics:
    """What ``GET /metrics`` reports; every method may be called from any thread."""

    def __init__(self, queue_rows: Callable[[], int]):
        self._lock = threading.Lock()
        self._queue_rows = queue_rows
        self.requests: Counter = Counter()  # (endpoint, status code)
        self.rows: Counter = Counter()  # adapter
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency.observe(seconds)

    def batch(self, adapters: Sequence[str]) -> None:
        with self._lock:
            self.batch_rows.observe(len(adapters))
            self.rows.update(adapters)

    def render(self) -> str:
        with self._lock:
            requests: Dict[Tuple[str, int], int] = dict(self.requests)
            rows = dict(self.rows)
            lines = ["# HELP ept_fast_requests_total HTTP requests answered, by endpoint and status code.",
                     "# TYPE ept_fast_requests_total counter"]
            lines += [f'ept_fast_requests_total{{endpoint="{label(endpoint)}",code="{code}"}} {count}'
                      for (endpoint, code), count in sorted(requests.items())]
            lines += ["# HELP ept_fast_rows_total Input rows predicted, by adapter.",
                      "# TYPE ept_fast_rows_total counter"]
            lines += [f'ept_fast_rows_total{{adapter="{label(name)}"}} {count}' for name, count in sorted(rows.items())]
            lines += ["# HELP ept_fast_batch_rows Rows per batch run through the backbone.",
                      "# TYPE ept_fast_batch_rows histogram", *self.batch_rows.lines("ept_fast_batch_rows")]
            lines += ["# HELP ept_fast_request_seconds Time from a request's arrival to its answer.",
                      "# TYPE ept_fast_request_seconds histogram", *self.latency.lines("ept_fast_request_seconds")]
        lines += ["# HELP ept_fast_queue_rows Rows waiting for a batch.", "# TYPE ept_fast_queue_rows gauge",
                  f"ept_fast_queue_rows {self._queue_rows()}"]
        return "\n".join(lines) + "\n"
