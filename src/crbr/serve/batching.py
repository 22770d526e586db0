"""Micro-batching: concurrent requests are answered by one batched model call.

Requests are accepted into a bounded queue (full: `Overloaded`, answered 503 + Retry-After); a
collector task on the event loop takes the first waiting request, gathers more while requests
are still arriving (at most `max_wait_s` after the first, at most `max_batch` in all), and runs
the batch on one worker thread, so the event loop never blocks on the model. Requests that share
a snapshot and settings go into one model call (`Prepared.group_key`).

The wait is adaptive: the collector waits only while HTTP requests are in flight that have not
reached the queue yet (`arriving`), so a lone client never pays the wait window.

Every accepted request is answered: with its result, its error, or (past its deadline, when the
HTTP handler gave up on it) skipped if its model call has not started.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .metrics import Metrics
from .model_host import Answer, Prepared, RequestError, Timing

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("the request queue is full")
        self.retry_after = retry_after


@dataclass(eq=False)
class Job:
    work: Prepared
    future: asyncio.Future
    accepted: float = field(default_factory=time.perf_counter)
    abandoned: bool = False  # the handler timed out; skip if not started


class MicroBatcher:
    def __init__(self, max_batch: int = 32, max_wait_s: float = 0.002, queue_size: int = 256,
                 metrics: Metrics | None = None, retry_after_s: float = 1.0) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch and queue_size must be >= 1, max_wait_s >= 0")
        self.max_batch, self.max_wait_s, self.queue_size = max_batch, max_wait_s, queue_size
        self.metrics = metrics or Metrics()
        self.retry_after_s = retry_after_s
        self.http_inflight = 0  # retrieve requests inside the HTTP layer (kept by the app)
        self._items: collections.deque[Job] = collections.deque()
        self._added: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running = 0  # jobs in the model call now
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._added = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crbr-model")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="crbr-batcher")

    async def stop(self) -> None:
        """Answer what was accepted, then stop the worker."""
        self._stopping = True
        if self._added is not None:
            self._added.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=60)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        """Requests accepted and not yet answered (waiting or in the model call)."""
        return len(self._items) + self._running

    # ------------------------------------------------------------------ admission
    def submit(self, works: list[Prepared]) -> list[Job]:
        """Accept all of `works` or none (Overloaded when the queue cannot take them all)."""
        if self._stopping or len(self._items) + len(works) > self.queue_size:
            self.metrics.rejected.labels("queue_full").inc(len(works))
            raise Overloaded(self.retry_after_s)
        loop = asyncio.get_running_loop()
        jobs = [Job(w, loop.create_future()) for w in works]
        self._items.extend(jobs)
        self.metrics.accepted.inc(len(jobs))
        self.metrics.queue_depth.set(len(self._items))
        self._added.set()
        return jobs

    # ------------------------------------------------------------------ the collector
    def _arriving(self, taken: int) -> bool:
        return self.http_inflight > taken + len(self._items)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._items:
                if self._stopping:
                    return
                self._added.clear()
                await self._added.wait()
            jobs = [self._items.popleft()]
            if self.max_batch > 1:
                deadline = loop.time() + self.max_wait_s
                while len(jobs) < self.max_batch:
                    if self._items:
                        jobs.append(self._items.popleft())
                        continue
                    left = deadline - loop.time()
                    if left <= 0 or self._stopping or not self._arriving(len(jobs)):
                        break
                    self._added.clear()
                    try:
                        await asyncio.wait_for(self._added.wait(), left)
                    except asyncio.TimeoutError:
                        break
            self.metrics.queue_depth.set(len(self._items))
            try:
                await self._run(loop, jobs)
            except Exception as e:  # noqa: BLE001  (the collector must outlive any failure)
                log.exception("micro-batch failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)

    async def _run(self, loop, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.abandoned and not j.future.done()]
        self.metrics.answered.labels("timeout").inc(len(jobs) - len(live))
        if not live:
            return
        self._running = len(live)
        now = time.perf_counter()
        for j in live:
            self.metrics.queue_wait.observe(now - j.accepted)
        self.metrics.batch_size.observe(len(live))
        try:
            results, timing = await loop.run_in_executor(self._executor, run_jobs, [j.work for j in live])
        except Exception as e:  # noqa: BLE001  (run_jobs catches per group; this is a last resort)
            log.exception("batched model call failed")
            results, timing = [e] * len(live), Timing()
        finally:
            self._running = 0
        self.metrics.model_seconds.observe(timing.model_s)
        if timing.index_s:
            self.metrics.index_seconds.observe(timing.index_s)
        outcomes = collections.Counter("ok" if isinstance(r, Answer) else ("invalid" if isinstance(r, RequestError)
                                                                           else "error") for r in results)
        for outcome, n in outcomes.items():
            self.metrics.answered.labels(outcome).inc(n)
        for j, r in zip(live, results):
            if j.future.done():  # the handler gave up meanwhile
                continue
            if isinstance(r, BaseException):
                j.future.set_exception(r)
            else:
                j.future.set_result(r)


def run_jobs(works: list[Prepared]) -> tuple[list[Any], Timing]:
    """On the worker thread: answer `works`, one model call per group of equal keys; an error
    answers only its own group."""
    timing = Timing()
    groups: dict[tuple, list[int]] = {}
    for i, w in enumerate(works):
        groups.setdefault(w.group_key(), []).append(i)
    out: list[Any] = [None] * len(works)
    for rows in groups.values():
        group = [works[i] for i in rows]
        try:
            answers = group[0].snapshot.run(group, timing)
        except RequestError as e:
            answers = [RequestError(f"{w.prefix}{e.field.removeprefix(group[0].prefix)}", e.message, e.status, e.kind)
                       for w in group]
        except Exception as e:  # noqa: BLE001  (a server-side failure of this group only)
            log.exception("model call failed for %d request(s)", len(group))
            answers = [e] * len(group)
        for i, a in zip(rows, answers):
            out[i] = a
    return out, timing
