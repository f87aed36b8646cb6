"""Embedder: the one pipeline every consumer (library, server, index, eval) goes through.

parse inputs -> processor.prepare on the CPU (prompt, tokenise, resize) -> plan batches by token
budget, longest first -> :meth:`Embedder.run_batch` (backbone token states with per-row task
adapters, then the shared heads) -> Matryoshka cut, normalise, precision -> results in input
order. ``late_chunking=True`` runs the texts through :mod:`omnivec.late_chunking` instead.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from . import heads, late_chunking, outputs
from .batching import plan_batches
from .execution import run_batch
from .inputs import PDF, Image, InputError, InputLimits, parse_inputs
from .models.base import EmbeddingModel, ForwardOutput, Prepared, PrepareOptions
from .scoring import score as _score
from .tasks import TaskSpec, resolve_tasks

T = TypeVar("T")

# Calls with more items than this show a progress bar unless told otherwise.
PROGRESS_THRESHOLD = 256
# Inputs are parsed and prepared in chunks of this many, one chunk ahead of the model.
PREPARE_CHUNK = 1024


@dataclass
class EmbedResult:
    """Everything one call produced, item by item (a PDF contributes one item per page)."""

    dense: np.ndarray | None              # (n, d) float32, truncated and normalised as asked
    multivector: list[np.ndarray] | None  # n arrays (tokens, mv_dim), float32, per-token unit norm
    origins: list[int]                    # input index each item came from
    tokens: list[int]                     # tokens processed per item (image tokens included)
    kinds: list[str]                      # "text" or "image" per item
    truncated: list[bool]


class Embedder:
    """Encodes texts, images and PDF pages with one model.

    >>> m = omnivec.load()
    >>> v = m.encode(["How do I reset my password?"], task="retrieval.query")
    >>> v.shape
    (1, 384)
    """

    def __init__(self, model: EmbeddingModel, *, batch_tokens: int | None = None,
                 max_batch_rows: int | None = None, limits: InputLimits | None = None) -> None:
        self.model = model
        self.batch_tokens = batch_tokens or model.batch_tokens
        self.max_batch_rows = max_batch_rows or model.max_batch_rows
        self.limits = limits or InputLimits()

    # ----------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def multivector_dim(self) -> int:
        return self.model.multivector_dim

    def info(self) -> dict[str, Any]:
        info = self.model.info()
        info["batch_tokens"] = self.batch_tokens
        return info

    # ----------------------------------------------------------------- main entry
    def embed(self, inputs: Any, task: str | TaskSpec | Sequence[str | TaskSpec] = "text-matching", *,
              prompt_name: str | None = None, dimensions: int | None = None, normalize: bool = True,
              dense: bool = True, multivector: bool = False, max_tokens: int | None = None,
              truncate: bool = True, max_pixels: int | None = None, batch_size: int | None = None,
              progress: bool | None = None, limits: InputLimits | None = None,
              late_chunking: bool = False) -> EmbedResult:
        """Dense and/or multi-vector embeddings from one forward pass per batch.

        ``task`` is one task for all inputs or a list with one per input. ``dimensions`` applies
        to dense vectors only (Matryoshka: slice, then re-normalise). ``late_chunking=True``
        (texts, dense, one task): the inputs are embedded in each other's context, see
        :mod:`omnivec.late_chunking`; ``tokens`` then counts each input's share of the window.
        """
        outputs.check_dimensions(dimensions, self.model.dim, self.model.matryoshka_dims)
        if not dense and not multivector:
            raise ValueError("nothing to compute: ask for dense and/or multivector")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(inputs, (str, Image, PDF)) or _is_pil(inputs):
            inputs = [inputs]
        n_inputs = _length(inputs)
        tasks = resolve_tasks(task, n_inputs, prompt_name)
        if late_chunking:
            return self._late_chunked(list(inputs), tasks, multivector=multivector, dimensions=dimensions,
                                      normalize=normalize, truncate=truncate, max_tokens=max_tokens)
        options = PrepareOptions(max_tokens=max_tokens, truncate=truncate, max_pixels=max_pixels)
        limits = limits or self.limits
        prepared: list[Prepared] = []
        origins: list[int] = []
        dense_rows: list[torch.Tensor] = []
        multi_rows: list[torch.Tensor] = []
        pending: list[ForwardOutput] = []
        with _progress(n_inputs, progress) as bar:
            # Chunk k+1 is parsed and prepared on CPU threads while chunk k runs on the model.
            for chunk_prepared, chunk_origins in _pipelined(
                    self._prepare_chunk(inputs, tasks, start, options, limits)
                    for start in range(0, n_inputs, PREPARE_CHUNK)):
                bar.grow(len(chunk_prepared) - len(set(chunk_origins)))
                offset = len(prepared)
                prepared.extend(chunk_prepared)
                origins.extend(chunk_origins)
                dense_rows.extend([None] * len(chunk_prepared))
                multi_rows.extend([None] * len(chunk_prepared))
                batches = plan_batches([p.cost for p in chunk_prepared], max_tokens=self.batch_tokens,
                                       max_rows=batch_size or self.max_batch_rows, padded=self.model.padded,
                                       overhead_tokens=self.model.batch_overhead_tokens)
                for batch in batches:
                    out = self.run_batch([chunk_prepared[i] for i in batch], dense=dense,
                                         multivector=multivector)
                    pending.append(out)
                    for row, i in enumerate(batch):
                        if dense:
                            dense_rows[offset + i] = out.dense[row]
                        if multivector:
                            multi_rows[offset + i] = out.multivector[row]
                    bar.advance(len(batch))
                for out in pending:      # host copies of this chunk's results have landed
                    out.wait()
                pending.clear()
        dense_out = None
        if dense:
            stacked = (torch.stack(dense_rows).float().numpy() if prepared
                       else np.zeros((0, self.model.dim), np.float32))
            dense_out = heads.matryoshka(stacked, dimensions, normalize)
        multi_out = [m.float().numpy() for m in multi_rows] if multivector else None
        return EmbedResult(dense=dense_out, multivector=multi_out, origins=origins,
                           tokens=[p.cost for p in prepared], kinds=[p.kind for p in prepared],
                           truncated=[p.truncated for p in prepared])

    def embed_skipping(self, inputs: Sequence[Any], task: str | TaskSpec | Sequence[str | TaskSpec]
                       = "text-matching", **kwargs: Any) -> tuple[EmbedResult, dict[int, str]]:
        """:meth:`embed`, leaving out the inputs it rejects: ``(result, {input index: reason})``.

        Why: a corpus job (an index build, a Ray dataset) must not fail because one image is
        corrupt. An :class:`InputError` naming an input drops that input and the call is run
        again on the rest; the result's ``origins`` index ``inputs`` as given. An error that
        names no input (a whole-call budget such as the decoded pixels of many images) splits
        the call in halves; a single input that still exceeds it is reported as failed.
        """
        tasks = resolve_tasks(task, _length(inputs), kwargs.pop("prompt_name", None))
        failed: dict[int, str] = {}
        result = self._embed_kept(inputs, tasks, list(range(len(tasks))), failed, kwargs)
        return result, failed

    def _embed_kept(self, inputs: Sequence[Any], tasks: list[TaskSpec], keep: list[int],
                    failed: dict[int, str], kwargs: dict[str, Any]) -> EmbedResult:
        """embed_skipping's loop; a call over a whole-call budget (the decoded pixels of many
        images: an error naming no input) is split in halves, since each half may fit."""
        while True:
            try:
                result = self.embed([inputs[i] for i in keep], [tasks[i] for i in keep], **kwargs)
            except InputError as e:
                if e.index is None and len(keep) > 1:
                    half = len(keep) // 2
                    parts = [self._embed_kept(inputs, tasks, keep[:half], failed, kwargs),
                             self._embed_kept(inputs, tasks, keep[half:], failed, kwargs)]
                    return _concat_results(parts)
                if e.index is None:
                    failed[keep[0]] = e.reason
                    keep = []
                    continue
                if not 0 <= e.index < len(keep):
                    raise
                failed[keep.pop(e.index)] = e.reason
                continue
            result.origins = [keep[o] for o in result.origins]
            return result

    def run_batch(self, batch: Sequence[Prepared], *, dense: bool = True,
                  multivector: bool = False) -> ForwardOutput:
        """One planned batch through backbone + heads (the server engine's forward, too)."""
        return run_batch(self.model, batch, dense=dense, multivector=multivector)

    def late_chunk(self, texts: Sequence[str], task: TaskSpec, *, truncate: bool = True,
                   max_tokens: int | None = None) -> tuple[np.ndarray, list[int]]:
        """Raw late-chunked vectors (n, dim) and tokens per input (see :mod:`omnivec.late_chunking`)."""
        if not self.model.capabilities.late_chunking:
            raise ValueError(f"late_chunking is not supported by the {self.model.family} family")
        layout = late_chunking.plan(self.model.processor, texts, task, truncate=truncate, max_tokens=max_tokens)
        return late_chunking.embed(self.model, layout, batch_tokens=self.batch_tokens), layout.tokens

    def _late_chunked(self, inputs: list[Any], tasks: list[TaskSpec], *, multivector: bool,
                      dimensions: int | None, normalize: bool, truncate: bool,
                      max_tokens: int | None) -> EmbedResult:
        if multivector:
            raise ValueError("late_chunking gives dense vectors only (multivector=False)")
        if len(set(tasks)) > 1:
            raise ValueError("late_chunking embeds its inputs in one context: give one task for all")
        bad = next((i for i, x in enumerate(inputs) if not isinstance(x, str)), None)
        if bad is not None:
            raise InputError(bad, "late_chunking works on text inputs only")
        if not inputs:
            return EmbedResult(np.zeros((0, self.model.dim), np.float32), None, [], [], [], [])
        dense, tokens = self.late_chunk(inputs, tasks[0], truncate=truncate, max_tokens=max_tokens)
        n = len(inputs)
        return EmbedResult(dense=heads.matryoshka(dense, dimensions, normalize), multivector=None,
                           origins=list(range(n)), tokens=tokens, kinds=["text"] * n, truncated=[False] * n)

    def encode(self, inputs: Any, task: str | TaskSpec | Sequence[str | TaskSpec] = "text-matching", *,
               prompt_name: str | None = None, dimensions: int | None = None, normalize: bool = True,
               precision: str = "float32", multivector: bool = False, max_tokens: int | None = None,
               truncate: bool = True, max_pixels: int | None = None, batch_size: int | None = None,
               progress: bool | None = None) -> np.ndarray | list[np.ndarray]:
        """Embed inputs; an (n, d) array, or with ``multivector`` a list of (tokens, d_mv) arrays.

        Inputs: ``str``, :class:`omnivec.Image`, :class:`omnivec.PDF` (one row per page), PIL
        images, or a list mixing them. ``precision``: float32 | float16 | int8 | uint8 | binary
        | ubinary (packed bits).
        """
        if precision not in outputs.PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {list(outputs.PRECISIONS)}")
        if multivector and dimensions is not None:
            raise ValueError("dimensions applies to dense vectors only; multi-vectors keep their "
                             f"{self.model.multivector_dim} dimensions")
        result = self.embed(inputs, task, prompt_name=prompt_name, dimensions=dimensions,
                            normalize=normalize, dense=not multivector, multivector=multivector,
                            max_tokens=max_tokens, truncate=truncate, max_pixels=max_pixels,
                            batch_size=batch_size, progress=progress)
        if multivector:
            return [outputs.quantize(m, precision) for m in result.multivector]
        return outputs.quantize(result.dense, precision)

    # ----------------------------------------------------------------- reference signatures
    def encode_text(self, texts: str | Sequence[str], task: str = "retrieval", max_length: int = 32768,
                    batch_size: int | None = None, return_multivector: bool = False,
                    return_numpy: bool = False, truncate_dim: int | None = None,
                    prompt_name: str | None = None) -> Any:
        """The reference model's ``encode_text``: ``task`` is the adapter, ``prompt_name`` query|passage.

        Returns a list of float32 tensors (or numpy arrays with ``return_numpy``), one per text.
        """
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in items):
            raise ValueError("encode_text takes strings; use encode_image or encode for images")
        out = self.encode(items, task, prompt_name=prompt_name, multivector=return_multivector,
                          dimensions=None if return_multivector else truncate_dim,
                          max_tokens=min(max_length, self.model.max_tokens), batch_size=batch_size)
        return _reference_return(out, return_numpy, return_multivector)

    def encode_image(self, images: Any, task: str = "retrieval", batch_size: int | None = None,
                     return_multivector: bool = False, return_numpy: bool = False,
                     truncate_dim: int | None = None, max_pixels: int | None = None) -> Any:
        """The reference model's ``encode_image``: PIL images, paths, URLs or :class:`Image` objects."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        wrapped = [x if isinstance(x, (Image, PDF)) else Image(x) for x in items]
        out = self.encode(wrapped, task, multivector=return_multivector,
                          dimensions=None if return_multivector else truncate_dim,
                          max_pixels=max_pixels, batch_size=batch_size)
        return _reference_return(out, return_numpy, return_multivector)

    # ----------------------------------------------------------------- scoring
    def score(self, a: Any, b: Any) -> np.ndarray:
        """Dense dot products of 2-D arrays, or MaxSim of multi-vector lists: (len(a), len(b))."""
        return _score(a, b)

    def prepare_inputs(self, inputs: Sequence[Any], tasks: Sequence[TaskSpec], options: PrepareOptions,
                       limits: InputLimits | None = None, start: int = 0,
                       on_planned: Callable[[int], None] | None = None,
                       on_prepared: Callable[[Prepared], None] | None = None) -> tuple[list[Prepared], list[int]]:
        """Parse and prepare ``inputs`` (``tasks[i]`` for input ``start + i``) on the CPU.

        Returns the prepared items (a PDF gives one per page) and, per item, the index of the
        input it came from (offset by ``start``). Errors name that index. ``on_planned`` is
        :func:`~omnivec.inputs.parse_inputs`'s hook (decoded pixels, before decoding);
        ``on_prepared(item)`` sees each prepared item in order and may raise to stop the rest
        (the server refuses an over-budget answer after the first items, not after all).
        Thread-safe: the server's engine calls it from a worker pool.
        """
        try:
            # a model that reads text only takes a PDF page's text layer where it has one
            items, local = parse_inputs(list(inputs), limits or self.limits, on_planned,
                                        text_pages=not self.model.capabilities.native_images)
        except InputError as e:
            raise InputError(None if e.index is None else start + e.index, e.reason) from e
        origins = [start + i for i in local]
        jobs = [(item, tasks[o - start], options, o) for item, o in zip(items, origins)]
        threads = self.model.prepare_threads
        if threads > 1 and len(jobs) > 1:
            # Image resizing/patchifying and tokenisers release the GIL: spread them over cores.
            pool = ThreadPoolExecutor(max_workers=min(threads, len(jobs)), thread_name_prefix="omnivec-prepare-item")
            try:
                results: Iterable[Prepared] = pool.map(lambda job: self._prepare(*job), jobs)
                return _observed(results, on_prepared), origins
            finally:
                pool.shutdown(wait=True, cancel_futures=True)   # after a raise: skip the rest
        return _observed((self._prepare(*job) for job in jobs), on_prepared), origins

    def _prepare_chunk(self, inputs: Sequence[Any], tasks: list[TaskSpec], start: int,
                       options: PrepareOptions, limits: InputLimits) -> Callable[[], tuple[list[Prepared], list[int]]]:
        """A deferred job: prepare inputs[start:start+PREPARE_CHUNK] (origins are global)."""
        end = start + PREPARE_CHUNK
        return lambda: self.prepare_inputs(inputs[start:end], tasks[start:end], options, limits, start)

    def _prepare(self, item: Any, task: TaskSpec, options: PrepareOptions, origin: int) -> Prepared:
        try:
            return self.model.prepare(item, task, options)
        except InputError as e:
            raise InputError(origin, e.reason) from e
        except ValueError as e:
            raise InputError(origin, str(e)) from e


def _concat_results(parts: Sequence[EmbedResult]) -> EmbedResult:
    """Results of consecutive calls as one (their origins already index the same inputs)."""
    dense = [p.dense for p in parts if p.dense is not None]
    multi = [p.multivector for p in parts if p.multivector is not None]
    return EmbedResult(dense=np.concatenate(dense) if dense else None,
                       multivector=[m for ms in multi for m in ms] if multi else None,
                       origins=[o for p in parts for o in p.origins], tokens=[t for p in parts for t in p.tokens],
                       kinds=[k for p in parts for k in p.kinds], truncated=[t for p in parts for t in p.truncated])


def _observed(items: Iterable[Prepared], on_prepared: Callable[[Prepared], None] | None) -> list[Prepared]:
    out = []
    for item in items:
        if on_prepared is not None:
            on_prepared(item)
        out.append(item)
    return out


def _is_pil(x: Any) -> bool:
    from PIL import Image as PILImage
    return isinstance(x, PILImage.Image)


def _length(inputs: Any) -> int:
    try:
        return len(inputs)
    except TypeError:
        raise ValueError(f"inputs must be a string, an Image, a PDF or a list of them, got "
                         f"{type(inputs).__name__}") from None


def _reference_return(out: Any, return_numpy: bool, multivector: bool) -> Any:
    if return_numpy:
        return out
    if multivector:
        return [torch.from_numpy(m) for m in out]
    return [torch.from_numpy(row) for row in out]


def _pipelined(jobs: Iterable[Callable[[], T]]) -> Iterator[T]:
    """Run each job one step ahead in a background thread; yields results in order.

    The first job runs inline (small calls pay no thread start-up); later jobs overlap with
    whatever the caller does with the previous result (the model's forward passes).
    """
    jobs = iter(jobs)
    first = next(jobs, None)
    if first is None:
        return
    current = first()
    nxt = next(jobs, None)
    if nxt is None:
        yield current
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnivec-prepare") as pool:
        future = pool.submit(nxt)
        while True:
            yield current
            current = future.result()
            nxt = next(jobs, None)
            if nxt is None:
                break
            future = pool.submit(nxt)
        yield current


class _progress:
    """A rich progress bar for long calls; a no-op for small ones."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        self.enabled = total > PROGRESS_THRESHOLD and sys.stderr.isatty() if enabled is None else enabled
        self.total = total
        self._bar = None
        self._task = None

    def __enter__(self) -> "_progress":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("embed", total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def grow(self, n: int) -> None:
        """More items than inputs (PDF pages): extend the total."""
        if self._bar is not None and n:
            self.total += n
            self._bar.update(self._task, total=self.total)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
