"""The one embedding path both dialects share: spec -> compute -> post-process -> serialise.

A dialect (``dialects/``) only parses its request body into an :class:`EmbedSpec` and lays out
its response body; everything between is here, once: the checks every request gets, the
computation through the engine (batched, or late chunking as an exclusive job), and the
post-processing (Matryoshka slice + normalise via :func:`heads.matryoshka`, then the wire
encodings of :mod:`omnivec.outputs`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from pydantic import BaseModel, ValidationError

from .. import heads, late_chunking, outputs
from ..embedder import Embedder
from ..inputs import InputError, InputLimits
from ..models.base import Prepared, PrepareOptions, UnknownTaskAdapter
from ..tasks import resolve_task
from . import errors
from .admission import Ticket
from .engine import Engine, JobResult
from .jsonstream import Deferred, iter_json


@dataclass
class EmbedSpec:
    """A validated request turned into library inputs and output options (dialect-free)."""

    inputs: list[Any]
    paths: list[str]          # the request's field path of each input, for error messages
    task: str
    dimensions: int | None
    normalize: bool
    multivector: bool
    truncate: bool
    late_chunking: bool
    tokenized: bool
    encodings: list[str]
    encoding_list: bool       # answer ``{encoding: value}`` per item instead of one value
    token_strings: list[list[str] | None] | None = None


@dataclass(frozen=True)
class Dialect:
    """One wire dialect: how its body becomes an :class:`EmbedSpec`, and how its response looks.

    ``validate(body)`` -> the strict request model (422 on failure); ``to_spec(req, emb)`` ->
    the spec (dialect-specific 422s); ``response_body(spec, payloads, tokens, origins, model)``
    -> the JSON-ready response, ``payloads`` being the post-processed, encoded vectors.
    """

    name: str
    validate: Callable[[Any], Any]
    to_spec: Callable[[Any, Embedder], EmbedSpec]
    response_body: Callable[[EmbedSpec, list[Any], list[int], list[int], str], dict]


def validate_model(cls: type[BaseModel], body: Any) -> Any:
    """Strict pydantic validation; 422 listing every offending field path."""
    if not isinstance(body, dict):
        raise errors.not_an_object()
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        raise errors.validation_error(e) from None


def build_spec(dialect: Dialect, req: Any, emb: Embedder, max_inputs: int) -> EmbedSpec:
    """The dialect's spec, then the checks every request gets (inputs present, count, dimensions)."""
    spec = dialect.to_spec(req, emb)
    if not spec.inputs:
        raise errors.bad("input is empty: send at least one item", "input")
    if len(spec.inputs) > max_inputs:
        raise errors.bad(f"too many inputs: {len(spec.inputs)} > {max_inputs}", "input")
    try:
        outputs.check_dimensions(spec.dimensions, emb.dim)
    except ValueError as e:
        raise errors.bad(str(e), "dimensions") from None
    return spec


# What one value costs in the response, relative to a JSON float (~20 bytes): base64 packs a
# float32 in 5.3 characters, binary/ubinary 8 values in one small integer.
ENCODING_COST = {"float": 1.0, "base64": 0.25, "binary": 0.125, "ubinary": 0.125}


def output_values(spec: EmbedSpec, tokens: list[int], emb: Embedder) -> int:
    """Float-equivalent numbers the response will carry (multi-vector: a vector a token).

    ``tokens`` are the prepared rows' token counts: a multi-vector row has (at most) one vector
    of ``multivector_dim`` per token, a dense row one vector of ``dimensions``.
    """
    per_value = sum(ENCODING_COST[e] for e in spec.encodings)
    if spec.multivector:
        return int(sum(tokens) * emb.multivector_dim * per_value)
    return int(len(tokens) * (spec.dimensions or emb.dim) * per_value)


def check_output_budget(spec: EmbedSpec, tokens: list[int], emb: Embedder, max_values: int | None) -> int:
    """The response's :func:`output_values`; 422 before the forward when over ``max_values``."""
    values = output_values(spec, tokens, emb)
    if max_values is not None and values > max_values:
        raise errors.output_too_large(values, max_values, spec.multivector)
    return values


async def compute(spec: EmbedSpec, emb: Embedder, engine: Engine, limits: InputLimits, ticket: Ticket,
                  max_values: int | None = None) -> tuple[JobResult, list[int], list[int]]:
    """Raw outputs, tokens per prepared item, and each prepared item's input index.

    Each step first reserves on ``ticket`` what it will hold (``admission.py``): decoded
    pixels before decoding, queued tokens/bytes and the response's values before the forward
    (``max_values`` is also the per-request output cap, :func:`check_output_budget`). Tokens,
    bytes and pixels are given back here; the values once the response is sent (the caller).
    """
    task = resolve_task(spec.task)
    try:
        emb.model.processor.tasks.adapter_for(task)
    except UnknownTaskAdapter as e:
        raise errors.bad(str(e), "task") from None
    if spec.late_chunking:
        if not emb.model.capabilities.late_chunking:
            raise errors.ApiError(422, f"late_chunking is not supported by the {emb.model.family} family",
                                  "INPUT_VALIDATION_ERROR", param="late_chunking")
        try:
            layout = await engine.run_in_prepare_pool(
                lambda: late_chunking.plan(emb.model.processor, spec.inputs, task, truncate=spec.truncate))
        except InputError as e:
            raise errors.input_error(e, spec.paths) from None
        ticket.reserve("values", check_output_budget(spec, layout.tokens, emb, max_values))
        ticket.reserve("tokens", sum(layout.tokens))
        dense = await engine.run_exclusive(
            lambda: late_chunking.embed(emb.model, layout, batch_tokens=emb.batch_tokens))
        ticket.release("tokens")
        return JobResult(dense, None), layout.tokens, list(range(len(spec.inputs)))
    options = PrepareOptions(truncate=spec.truncate)
    deadline = time.monotonic() + limits.url_request_timeout_s
    seen: list[int] = []

    def over_budget_early(item: Prepared) -> None:   # refuse after the first items, not after all
        seen.append(item.cost)
        if len(seen) % 16 == 0:
            check_output_budget(spec, seen, emb, max_values)

    try:
        prepared, origins = await engine.prepare(spec.inputs, [task] * len(spec.inputs), options, limits,
                                                 deadline=deadline,
                                                 on_planned=lambda pixels: ticket.reserve("pixels", pixels),
                                                 on_prepared=over_budget_early)
    except InputError as e:
        raise errors.input_error(e, spec.paths) from None
    finally:
        ticket.release("pixels")
    tokens = [p.cost for p in prepared]
    ticket.reserve("values", check_output_budget(spec, tokens, emb, max_values))
    ticket.reserve("tokens", sum(tokens))
    ticket.reserve("bytes", sum(p.held_bytes for p in prepared))
    result = await engine.submit(prepared, spec.multivector)
    ticket.release("tokens", "bytes")
    if spec.tokenized:
        spec.token_strings = [emb.model.processor.token_strings(p.input_ids) for p in prepared]
    return result, tokens, origins


def encode(vectors: np.ndarray, encoding: str) -> Any:
    """One vector (1-D) or a token matrix (2-D) in one of the wire encodings."""
    if encoding == "float":
        return vectors.tolist()
    if encoding == "base64":
        if vectors.ndim == 1:
            return outputs.to_base64(vectors.astype(np.float32))
        return [outputs.to_base64(v.astype(np.float32)) for v in vectors]
    packed = outputs.quantize(np.atleast_2d(vectors), encoding)
    return packed[0].tolist() if vectors.ndim == 1 else packed.tolist()


def postprocess(spec: EmbedSpec, result: JobResult) -> list[Deferred]:
    """Each prepared item's vector(s), Matryoshka-sliced and normalised, in the requested
    encoding(s): deferred, so that each is encoded only when the response stream reaches it."""
    if spec.multivector:
        vectors: list[np.ndarray] = result.multivector or []
    else:
        vectors = list(heads.matryoshka(result.dense, spec.dimensions, spec.normalize))

    def payload(vec: np.ndarray) -> Any:
        values = {e: encode(vec, e) for e in spec.encodings}
        return values if spec.encoding_list else values[spec.encodings[0]]

    return [Deferred(lambda vec=vec: payload(vec)) for vec in vectors]


def render(dialect: Dialect, spec: EmbedSpec, result: JobResult, tokens: list[int], origins: list[int],
           model_name: str) -> Iterator[bytes]:
    """The response in the dialect's shape as JSON chunks, each vector encoded when reached
    (:mod:`.jsonstream`); iterate it off the event loop."""
    body = dialect.response_body(spec, postprocess(spec, result), tokens, origins, model_name)
    return iter_json(body)
