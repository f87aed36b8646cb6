"""Async batching engine: concurrent requests share forward passes.

Why it looks like this:

* The model's forward is not thread-safe and a GPU/CPU is fastest fed by one big batch, so a
  single worker task owns the model and runs exactly one forward at a time, on one dedicated
  thread (the event loop never blocks on it).
* Preprocessing (image decoding, PDF rendering, OCR, tokenising) runs on a separate thread pool
  while the forward thread is busy, so CPU work overlaps the model (the Infinity pattern:
  pre -> forward -> post).
* Scheduling is continuous (per forward pass, not per round): every queued row waits in one
  pool; before each forward the worker plans batches by token budget over up to
  ``collect_tokens`` of queued rows and runs the planned batch holding the first row of the
  job whose turn it is (jobs take turns, round robin). A request is answered as soon as its
  last row is computed, and rows that arrive meanwhile join the next plan. Why: with rounds,
  a small request queued behind a large one waited for all of it (a one-text request behind a
  256-text one: ~2.7 s, ~0.25 s with turns; benchmarks/RESULTS.md). Throughput measured the
  same either way; p95 on uniform loads is a little higher, as completions spread out.
* An idle worker waits at most ``max_wait_ms`` after the first job for company, so requests
  arriving together share their first batch.
* Memory stays bounded: every request reserves what it will hold against global budgets
  (``admission.py``: items, decoded pixels, queued tokens and bytes, response values) before
  the step that allocates it; over a budget the caller answers 503 + Retry-After. A cancelled
  job's rows (client gone) are dropped before they reach the model. Retry-After is the time
  the pending items and tokens need at the measured drain rate (of the last passes), 1..60 s.
* URL inputs are fetched on their own bounded pool (``fetch_workers``) before preparation,
  with one deadline per request, so waiting on the network never holds a preparation thread.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..batching import plan_batches
from ..embedder import Embedder
from ..inputs import InputLimits, fetch_url_inputs, has_url_inputs
from ..models.base import Prepared, PrepareOptions
from ..tasks import TaskSpec
from .admission import Admission, Overloaded
from .metrics import Metrics

__all__ = ["Engine", "Job", "JobResult", "Overloaded"]


@dataclass
class JobResult:
    """Raw (un-normalised, full-dimension) outputs of one job, in the job's item order."""

    dense: np.ndarray | None
    multivector: list[np.ndarray] | None


@dataclass(eq=False)      # compared and hashed by identity: jobs key the engine's turn order
class Job:
    """One request's items (or one exclusive callable) waiting for the forward thread."""

    prepared: list[Prepared]
    multivector: bool
    future: asyncio.Future
    custom: Callable[[], Any] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    result: JobResult | None = None
    remaining: int = 0

    @property
    def gone(self) -> bool:
        """Answered already (an error) or abandoned by its client: its rows need no forward."""
        return self.future.done() or self.cancelled.is_set()


@dataclass
class _Row:
    """One queued item: row ``index`` of ``job``."""

    job: Job
    index: int

    @property
    def prepared(self) -> Prepared:
        return self.job.prepared[self.index]


class Engine:
    """Owns the model: admission, preprocessing pool, one forward worker."""

    def __init__(self, embedder: Embedder, *, max_wait_ms: float = 5.0, max_pending_items: int = 8192,
                 budgets: dict[str, int] | None = None, collect_tokens: int | None = None,
                 prepare_workers: int = 2, fetch_workers: int = 4, metrics: Metrics | None = None) -> None:
        self.embedder = embedder
        self.model = embedder.model
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        # Each plan covers a few batches' worth of the oldest rows: enough choice to fill batches
        # across requests, little enough that planning before every forward stays cheap.
        self.collect_tokens = collect_tokens or 4 * embedder.batch_tokens
        self.metrics = metrics or Metrics()
        self.admission = Admission({"items": max_pending_items, **(budgets or {})}, self.retry_after,
                                   on_refused=lambda _resource: self.metrics.rejected.inc())
        self._passes: deque[tuple[int, int, float]] = deque(maxlen=32)   # (rows, tokens, seconds) of recent forwards
        self._queue: asyncio.Queue[Job] | None = None
        self._pool: list[_Row] = []         # dequeued rows waiting for a forward, oldest first
        self._turns: list[Job] = []         # jobs with rows in the pool, in round-robin order
        self._held: Job | None = None       # an exclusive job waiting for the pool to empty
        self._worker: asyncio.Task | None = None
        self._prepare_pool = ThreadPoolExecutor(max_workers=prepare_workers, thread_name_prefix="omnivec-pre")
        self._fetch_pool = ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="omnivec-fetch")
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
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)
        self._forward_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ admission
    def drain_rate(self) -> tuple[float, float] | None:
        """(rows, tokens) per second of forward over the recent passes; None before any pass."""
        seconds = sum(s for _, _, s in self._passes)
        if seconds <= 0:
            return None
        return sum(n for n, _, _ in self._passes) / seconds, sum(t for _, t, _ in self._passes) / seconds

    def retry_after(self) -> int:
        """Seconds until the pending items and tokens drain at the measured rate, clamped to 1..60."""
        rate = self.drain_rate()
        if not rate or not rate[0]:
            return 1
        pending = self.admission.in_use
        wait = max(pending["items"] / rate[0], pending["tokens"] / rate[1] if rate[1] else 0.0)
        return min(60, max(1, math.ceil(wait)))

    # ------------------------------------------------------------------ preprocessing
    async def prepare(self, inputs: Sequence[Any], tasks: list[TaskSpec], options: PrepareOptions,
                      limits: InputLimits, *, deadline: float | None = None,
                      on_planned: Callable[[int], None] | None = None,
                      on_prepared: Callable[[Prepared], None] | None = None) -> tuple[list[Prepared], list[int]]:
        """Fetch URL inputs (own pool, by ``deadline``), then parse and prepare off the event loop.

        ``on_planned(pixels)`` runs after the inputs are sized and before any is decoded,
        ``on_prepared(item)`` after each item is prepared (see ``Embedder.prepare_inputs``).
        """
        loop = asyncio.get_running_loop()
        inputs = list(inputs)
        if has_url_inputs(inputs):
            inputs = await loop.run_in_executor(self._fetch_pool, fetch_url_inputs, inputs, limits, deadline)
        return await loop.run_in_executor(
            self._prepare_pool, lambda: self.embedder.prepare_inputs(inputs, tasks, options, limits,
                                                                     on_planned=on_planned, on_prepared=on_prepared))

    async def run_in_prepare_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """CPU work that is not a forward (late-chunking plans) also stays off the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, fn, *args)

    # ------------------------------------------------------------------ submission
    async def submit(self, prepared: list[Prepared], multivector: bool) -> JobResult:
        """Queue prepared items; resolves when their rows are computed. Cancel-safe."""
        return await self._enqueue(Job(prepared, multivector, asyncio.get_running_loop().create_future()))

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the forward thread between batches (late chunking: windows + own spans)."""
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
    def _take(self, job: Job) -> None:
        """Move a dequeued job into the row pool (an exclusive job is held until the pool empties)."""
        if job.custom is not None:
            self._held = job
            return
        n = len(job.prepared)
        job.result = JobResult(np.zeros((n, self.model.dim), np.float32) if not job.multivector else None,
                               [None] * n if job.multivector else None)
        job.remaining = n
        if n == 0:
            if not job.future.done():
                job.future.set_result(job.result)
            return
        self._pool.extend(_Row(job, i) for i in range(n))
        self._turns.append(job)

    def _drain(self) -> None:
        """Take every job already queued, without waiting (none while an exclusive job is held)."""
        assert self._queue is not None
        while self._held is None:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._take(job)

    async def _gather(self) -> None:
        """After idling: wait up to ``max_wait`` for more jobs, so that they share a batch."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        assert self._queue is not None
        tokens = sum(r.prepared.cost for r in self._pool)
        while self._held is None and tokens < self.collect_tokens:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                job = await asyncio.wait_for(self._queue.get(), remaining)
            except asyncio.TimeoutError:
                return
            self._take(job)
            tokens += sum(p.cost for p in job.prepared)

    def _pick(self) -> list[_Row]:
        """Remove and return the next batch: the planned batch holding the turn job's first row.

        Jobs take turns (round robin, in arrival order), so a small request arriving behind a
        large one is served within a pass or two instead of after all of it. The plan covers
        the turn job's rows and then the other jobs' (same output kind, arrival order), each
        job at most an equal share of ``collect_tokens``; rows of abandoned jobs are dropped.
        """
        live = []
        for row in self._pool:
            if row.job.gone:
                self.metrics.queue_depth.dec()
                if row.job.cancelled.is_set():
                    self.metrics.dropped.inc()
            else:
                live.append(row)
        self._pool = live
        rows_of: dict[Job, list[int]] = {}
        for k, row in enumerate(live):
            rows_of.setdefault(row.job, []).append(k)
        self._turns = [j for j in self._turns if j in rows_of]
        if not live:
            return []
        turn = self._turns[0]
        jobs = [turn] + [j for j in self._turns[1:] if j.multivector == turn.multivector]
        share = max(self.embedder.batch_tokens, self.collect_tokens // len(jobs))
        window: list[int] = []
        total = 0
        for job in jobs:
            tokens = 0
            for k in rows_of[job]:
                if tokens >= share or total >= self.collect_tokens:
                    break
                window.append(k)
                cost = live[k].prepared.cost
                tokens += cost
                total += cost
        costs = [live[k].prepared.cost for k in window]
        plans = plan_batches(costs, max_tokens=self.embedder.batch_tokens,
                             max_rows=self.embedder.max_batch_rows, padded=self.model.padded,
                             overhead_tokens=self.model.batch_overhead_tokens)
        chosen = next(b for b in plans if 0 in b)
        taken = {window[i] for i in chosen}
        batch = [live[window[i]] for i in sorted(chosen)]
        self._pool = [row for k, row in enumerate(live) if k not in taken]
        self.metrics.queue_depth.dec(len(batch))
        # the turn job goes to the back of the line; it drops out once its rows are all taken
        self._turns = self._turns[1:] + [turn]
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._pool:
                self._drain()
            elif self._held is not None:      # exclusive work runs once the pool is empty
                job, self._held = self._held, None
                await self._run_exclusive(job)
                continue
            else:
                assert self._queue is not None
                self._take(await self._queue.get())
                await self._gather()
            batch = self._pick()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._forward_pool, self._forward, batch)
                self._passes.append((len(batch), sum(r.prepared.cost for r in batch),
                                     time.perf_counter() - started))
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - fails only the jobs in this batch
                for row in batch:
                    if not row.job.future.done():
                        row.job.future.set_exception(e)
                continue
            for row, out in zip(batch, outputs):
                job = row.job
                if job.future.done():
                    continue
                assert job.result is not None
                if job.multivector:
                    job.result.multivector[row.index] = out
                else:
                    job.result.dense[row.index] = out
                job.remaining -= 1
                if job.remaining == 0:
                    job.future.set_result(job.result)

    async def _run_exclusive(self, job: Job) -> None:
        assert job.custom is not None
        self.metrics.queue_depth.dec(len(job.prepared))
        if job.gone:
            return
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._forward_pool, job.custom)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - routed to the waiting request
            if not job.future.done():
                job.future.set_exception(e)
            return
        if not job.future.done():
            job.future.set_result(result)

    def _forward(self, batch: list[_Row]) -> list[np.ndarray]:
        """Forward thread: one pass over ``batch`` (rows of one kind); one array per row."""
        multivector = batch[0].job.multivector
        out = self.embedder.run_batch([row.prepared for row in batch], dense=not multivector,
                                      multivector=multivector).wait()
        self.metrics.batch_size.observe(len(batch))
        self.metrics.tokens.inc(sum(row.prepared.cost for row in batch))
        if multivector:
            return [_np(t) for t in out.multivector]
        return list(_np(out.dense))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy()
