"""Dynamic batching: requests wait in one queue at most ``max_wait_s``, and are run together in
batches of at most ``max_batch_size`` rows, whatever their adapters, by one worker thread that
owns the model. Changes to the model (loading or unloading an adapter) go through the same
queue, so the requests queued before one are answered first, with the model they asked for."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Callable, Deque, List, Optional

Done = Callable[[Optional[Any], Optional[BaseException]], None]  # (result, error): exactly one is None


@dataclasses.dataclass
class _Job:
    rows: Optional[list]  # None: a change to the model (``change``)
    done: Done
    change: Optional[Callable[[], Any]] = None
    arrived: float = dataclasses.field(default_factory=time.monotonic)


class DynamicBatcher:
    """``run(rows) -> answers`` (one per row, in order) on batches gathered from ``submit``ted
    requests; ``change(fn)`` runs ``fn`` between batches, after every request queued before it."""

    def __init__(self, run: Callable[[list], list], max_batch_size: int, max_wait_s: float):
        self._run, self.max_batch_size, self.max_wait_s = run, max_batch_size, max_wait_s
        self._queue: Deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="ept-fast-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: list, done: Done) -> None:
        self._put(_Job(list(rows), done))

    def change(self, fn: Callable[[], Any], done: Done) -> None:
        self._put(_Job(None, done, change=fn))

    def _put(self, job: _Job) -> None:
        with self._ready:
            if self._closing:
                raise RuntimeError("the server is shutting down")
            self._queue.append(job)
            self._ready.notify()

    @property
    def working(self) -> bool:
        """Whether the worker thread still answers the queue."""
        return self._thread.is_alive()

    @property
    def queued_rows(self) -> int:
        with self._ready:
            return sum(len(job.rows) for job in self._queue if job.rows is not None)

    def close(self) -> None:
        """Answer everything queued, then stop the worker."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()

    def _next(self) -> Optional[List[_Job]]:
        """The next batch (requests whose rows fit, oldest first; one larger request alone) or
        one change; None once closing and empty."""
        with self._ready:
            while not self._queue:
                if self._closing:
                    return None
                self._ready.wait()
            if self._queue[0].rows is None:
                return [self._queue.popleft()]
            deadline = self._queue[0].arrived + self.max_wait_s
            while not self._closing and self._gathered_rows() < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            batch, rows = [], 0
            while self._queue and self._queue[0].rows is not None:
                size = len(self._queue[0].rows)
                if batch and rows + size > self.max_batch_size:
                    break
                batch.append(self._queue.popleft())
                rows += size
            return batch

    def _gathered_rows(self) -> int:
        """Rows of the requests at the head of the queue, up to the first change."""
        rows = 0
        for job in self._queue:
            if job.rows is None:
                break
            rows += len(job.rows)
        return rows

    def _work(self) -> None:
        while (jobs := self._next()) is not None:
            if jobs[0].rows is None:
                _settle(jobs[0].done, jobs[0].change)
                continue
            rows = [row for job in jobs for row in job.rows]
            try:
                answers = self._run(rows)
            except Exception as error:  # the batch's requests fail; the server keeps serving
                for job in jobs:
                    job.done(None, error)
                continue
            start = 0
            for job in jobs:
                job.done(answers[start:start + len(job.rows)], None)
                start += len(job.rows)


def _settle(done: Done, fn: Callable[[], Any]) -> None:
    try:
        result = fn()
    except Exception as error:
        done(None, error)
    else:
        done(result, None)
