"""Async batching engine: concurrent requests share forward passes.

Why it looks like this:

* The model's forward is not thread-safe and a GPU/CPU is fastest fed by one big batch, so a
  single worker task owns the model and runs exactly one forward at a time, on one dedicated
  thread (the event loop never blocks on it).
* Preprocessing (image decoding, PDF rendering, OCR, tokenising) runs on a separate thread pool
  while the forward thread is busy, so CPU work overlaps the model (the Infinity pattern:
  pre -> forward -> post).
* The worker waits at most ``max_wait_ms`` after the first queued job for more jobs (or until a
  token budget is collected), then plans batches by token budget, longest first, across all
  collected requests, and routes each row back to its request's future.
* Memory stays flat: admission is refused (the caller answers 503 + Retry-After) when the
  pending items would exceed ``max_pending_items``; a cancelled job (client gone) is skipped.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..batching import plan_batches
from ..embedder import Embedder
from ..inputs import InputLimits
from ..models.base import Prepared, PrepareOptions
from ..tasks import TaskSpec
from .metrics import Metrics


class Overloaded(Exception):
    """Admission refused: too much work pending. ``retry_after`` is in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One request's items (or one exclusive callable) waiting for the forward thread."""

    prepared: list[Prepared]
    multivector: bool
    future: asyncio.Future
    custom: Callable[[], Any] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def tokens(self) -> int:
        return sum(p.cost for p in self.prepared) if self.prepared else 1


@dataclass
class JobResult:
    """Raw (un-normalised, full-dimension) outputs of one job, in the job's item order."""

    dense: np.ndarray | None
    multivector: list[np.ndarray] | None


class Engine:
    """Owns the model: admission, preprocessing pool, one forward worker."""

    def __init__(self, embedder: Embedder, *, max_wait_ms: float = 5.0, max_pending_items: int = 8192,
                 collect_tokens: int | None = None, prepare_workers: int = 2,
                 metrics: Metrics | None = None) -> None:
        self.embedder = embedder
        self.model = embedder.model
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_pending_items = max_pending_items
        # Collect up to a few batches' worth per round: enough to fill batches across requests.
        self.collect_tokens = collect_tokens or 4 * embedder.batch_tokens
        self.metrics = metrics or Metrics()
        self.pending_items = 0
        self._queue: asyncio.Queue[Job] | None = None
        self._held: Job | None = None
        self._worker: asyncio.Task | None = None
        self._prepare_pool = ThreadPoolExecutor(max_workers=prepare_workers, thread_name_prefix="omnivec-pre")
        self._forward_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnivec-forward")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="omnivec-engine")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._forward_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ admission
    def admit(self, n_items: int) -> None:
        """Reserve room for ``n_items``; raise :class:`Overloaded` when over budget.

        A request larger than the whole budget is still admitted when nothing else is pending
        (it could never run otherwise; its size is capped by the protocol's input limit).
        """
        if self.pending_items and self.pending_items + n_items > self.max_pending_items:
            self.metrics.rejected.inc()
            raise Overloaded(retry_after=1)
        self.pending_items += n_items

    def release(self, n_items: int) -> None:
        self.pending_items = max(0, self.pending_items - n_items)

    # ------------------------------------------------------------------ preprocessing
    async def prepare(self, inputs: Sequence[Any], tasks: list[TaskSpec], options: PrepareOptions,
                      limits: InputLimits) -> tuple[list[Prepared], list[int]]:
        """Parse (decode images, render PDFs) and prepare (tokenise, OCR) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare_pool, self._prepare_sync, list(inputs), tasks,
                                          options, limits)

    def _prepare_sync(self, inputs: list[Any], tasks: list[TaskSpec], options: PrepareOptions,
                      limits: InputLimits) -> tuple[list[Prepared], list[int]]:
        return self.embedder.prepare_inputs(inputs, tasks, options, limits)

    async def run_in_prepare_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """CPU work that is not a forward (response encoding) also stays off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, fn, *args)

    # ------------------------------------------------------------------ submission
    async def submit(self, prepared: list[Prepared], multivector: bool) -> JobResult:
        """Queue prepared items; resolves when their rows are computed. Cancel-safe."""
        return await self._enqueue(Job(prepared, multivector, asyncio.get_running_loop().create_future()))

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the forward thread between batches (e.g. late chunking's own forward)."""
        return await self._enqueue(Job([], False, asyncio.get_running_loop().create_future(), custom=fn))

    async def _enqueue(self, job: Job) -> Any:
        assert self._queue is not None, "engine not started"
        self._queue.put_nowait(job)
        self.metrics.queue_depth.inc(len(job.prepared))
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled.set()  # the worker skips it, even between batches already planned
            raise

    # ------------------------------------------------------------------ worker
    async def _next(self) -> Job:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        assert self._queue is not None
        return await self._queue.get()

    async def _collect(self) -> list[Job]:
        """First job, then more until the token budget or ``max_wait`` passes."""
        loop = asyncio.get_running_loop()
        first = await self._next()
        jobs = [first]
        if first.custom is not None:
            return jobs
        tokens = first.tokens
        deadline = loop.time() + self.max_wait
        assert self._queue is not None
        while tokens < self.collect_tokens:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if job.custom is not None:
                self._held = job  # exclusive jobs run alone, next round
                break
            jobs.append(job)
            tokens += job.tokens
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            self.metrics.queue_depth.dec(sum(len(j.prepared) for j in jobs))
            live = []
            for j in jobs:
                if j.future.done() or j.cancelled.is_set():
                    self.metrics.dropped.inc(len(j.prepared))
                else:
                    live.append(j)
            if not live:
                continue
            try:
                if live[0].custom is not None:
                    result = await loop.run_in_executor(self._forward_pool, live[0].custom)
                    results: list[Any] = [result]
                else:
                    results = await loop.run_in_executor(self._forward_pool, self._forward, live)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - routed to every waiting request
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            for j, r in zip(live, results):
                if j.future.done():
                    continue
                if isinstance(r, BaseException):
                    j.future.set_exception(r)
                else:
                    j.future.set_result(r)

    def _forward(self, jobs: list[Job]) -> list[JobResult | BaseException]:
        """Forward thread: one plan per output kind over all jobs' rows; scatter rows back."""
        results: list[JobResult | BaseException] = [
            JobResult(np.zeros((len(j.prepared), self.model.dim), np.float32) if not j.multivector else None,
                      [None] * len(j.prepared) if j.multivector else None) for j in jobs]
        for multivector in (False, True):
            rows = [(ji, ri) for ji, j in enumerate(jobs) if j.multivector == multivector
                    for ri in range(len(j.prepared))]
            if not rows:
                continue
            costs = [jobs[ji].prepared[ri].cost for ji, ri in rows]
            batches = plan_batches(costs, max_tokens=self.embedder.batch_tokens,
                                   max_rows=self.embedder.max_batch_rows, padded=self.model.padded,
                                   overhead_tokens=self.model.batch_overhead_tokens)
            for batch in batches:
                batch = [k for k in batch if not jobs[rows[k][0]].cancelled.is_set()]
                if not batch:
                    continue
                try:
                    out = self.model.forward([jobs[rows[k][0]].prepared[rows[k][1]] for k in batch],
                                             dense=not multivector, multivector=multivector).wait()
                except Exception as e:  # noqa: BLE001 - fail only the jobs in this batch
                    for k in batch:
                        results[rows[k][0]] = e
                    continue
                self.metrics.batch_size.observe(len(batch))
                self.metrics.tokens.inc(sum(costs[k] for k in batch))
                for pos, k in enumerate(batch):
                    ji, ri = rows[k]
                    res = results[ji]
                    if isinstance(res, BaseException):
                        continue
                    if multivector:
                        res.multivector[ri] = _np(out.multivector[pos])
                    else:
                        res.dense[ri] = _np(out.dense[pos])
        return results


def _np(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy()
